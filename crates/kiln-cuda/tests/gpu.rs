//! The CUDA backend against the CPU reference (kiln-cpu on the unoptimized network), on fresh
//! random inputs. Where no GPU can be used (CI), every test says why and passes without
//! running; on a GPU machine they run (scripts/gpu-check.sh runs this binary there).

use kiln_cuda::CudaBackend;
use kiln_engine::{Builder, BuilderConfig, Engine, ShapeRange};
use kiln_ir::{Attributes, DType, Dim, Network, Tensor, TensorId, Value, ValueType};
use std::collections::HashMap;
use std::sync::Arc;

/// The GPU backend, or `None` with the reason printed (the test then has nothing to check).
fn gpu() -> Option<Arc<CudaBackend>> {
    match CudaBackend::new(0) {
        Ok(b) => Some(Arc::new(b)),
        Err(why) => {
            eprintln!("skipping: no usable CUDA GPU ({why})");
            None
        }
    }
}

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

fn dyn_input(net: &mut Network, name: &str, dims: &[usize]) -> TensorId {
    let mut shape: Vec<Dim> = vec![Dim::Symbol("batch".into())];
    shape.extend(dims.iter().map(|&d| Dim::from(d)));
    net.add_input(name, ValueType::tensor(DType::F32, shape)).unwrap()
}

fn layer(net: &mut Network, name: &str, op: &str, attrs: Attributes, inputs: &[Option<TensorId>]) -> TensorId {
    net.add_layer(name, op, attrs, inputs, &[&format!("{name}_out")]).unwrap()[0].unwrap()
}

fn constant(net: &mut Network, name: &str, shape: &[usize], seed: u64) -> TensorId {
    net.add_constant(name, random(shape, seed)).unwrap()
}

/// Build for the GPU with a batch range, run at each batch, compare every output with the CPU
/// reference; returns the largest relative error.
fn check(
    backend: Arc<CudaBackend>,
    net: &Network,
    inputs: &[(&str, Vec<usize>)],
    fp16: bool,
    batches: &[usize],
) -> f64 {
    let mut config = BuilderConfig { allow_fp16: fp16, ..BuilderConfig::default() };
    let max_b = *batches.iter().max().unwrap();
    let min_b = *batches.iter().min().unwrap();
    for (name, dims) in inputs {
        let with = |b: usize| [vec![b], dims.clone()].concat();
        config
            .profile
            .inputs
            .insert(name.to_string(), ShapeRange { min: with(min_b), opt: with(max_b), max: with(max_b) });
    }
    let engine = Arc::new(Builder::new(backend).build(net, &config).expect("GPU build"));
    let mut worst = 0.0f64;
    for (k, &b) in batches.iter().enumerate() {
        let values: HashMap<String, Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, (name, dims))| {
                (name.to_string(), Value::Tensor(random(&[vec![b], dims.clone()].concat(), (k * 10 + i) as u64 + 7)))
            })
            .collect();
        worst = worst.max(compare(&engine, net, &values));
    }
    worst
}

fn compare(engine: &Arc<Engine>, net: &Network, values: &HashMap<String, Value>) -> f64 {
    let want = kiln_cpu::execute_named(net, values.clone()).expect("CPU reference");
    let mut ctx = engine.create_context();
    for (name, v) in values {
        ctx.set_input(name, v).unwrap();
    }
    ctx.execute().expect("GPU run");
    let mut worst = 0.0f64;
    for (k, &id) in net.outputs().iter().enumerate() {
        let got = ctx.output(&net.tensor(id).name).unwrap();
        let (g, w) = (got.as_tensor().unwrap(), want[k].as_tensor().unwrap());
        assert_eq!(g.shape(), w.shape(), "output {k} shape");
        let (g, w) = (g.to_f64_vec(), w.to_f64_vec());
        let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
        let diff = g.iter().zip(&w).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(g.iter().all(|v| v.is_finite()), "output {k} has non-finite values");
        if std::env::var("KILN_GPU_TEST_ALL_OUTPUTS").is_ok() {
            eprintln!("  {:<12} rel err {:.3e}", net.tensor(id).name, diff / scale);
        }
        worst = worst.max(diff / scale);
    }
    worst
}

/// conv(+bias, relu) → conv with a residual → relu → max pool → global pool → flatten → gemm.
fn cnn() -> Network {
    let mut net = Network::new("cnn");
    let x = dyn_input(&mut net, "image", &[3, 12, 12]);
    let conv_attrs = || Attributes::new().with("kernel_shape", vec![3i64, 3]).with("pads", vec![1i64, 1, 1, 1]);
    let w1 = constant(&mut net, "w1", &[8, 3, 3, 3], 1);
    let b1 = constant(&mut net, "b1", &[8], 2);
    let c1 = layer(&mut net, "conv1", "Conv", conv_attrs(), &[Some(x), Some(w1), Some(b1)]);
    let r1 = layer(&mut net, "relu1", "Relu", Attributes::new(), &[Some(c1)]);
    let w2 = constant(&mut net, "w2", &[8, 8, 3, 3], 3);
    let c2 = layer(&mut net, "conv2", "Conv", conv_attrs(), &[Some(r1), Some(w2)]);
    let add = layer(&mut net, "add", "Add", Attributes::new(), &[Some(c2), Some(r1)]);
    let r2 = layer(&mut net, "relu2", "Relu", Attributes::new(), &[Some(add)]);
    let pool = Attributes::new().with("kernel_shape", vec![2i64, 2]).with("strides", vec![2i64, 2]);
    let p = layer(&mut net, "pool", "MaxPool", pool, &[Some(r2)]);
    let dw = constant(&mut net, "dw", &[8, 1, 3, 3], 4);
    let dwc = layer(&mut net, "dwconv", "Conv", conv_attrs().with("group", 8i64), &[Some(p), Some(dw)]);
    let clip = layer(&mut net, "hs", "HardSwish", Attributes::new(), &[Some(dwc)]);
    let g = layer(&mut net, "gap", "GlobalAveragePool", Attributes::new(), &[Some(clip)]);
    let f = layer(&mut net, "flat", "Flatten", Attributes::new(), &[Some(g)]);
    let fw = constant(&mut net, "fw", &[5, 8], 5);
    let fb = constant(&mut net, "fb", &[5], 6);
    let y = layer(&mut net, "fc", "Gemm", Attributes::new().with("transB", 1i64), &[Some(f), Some(fw), Some(fb)]);
    net.mark_output(y).unwrap();
    net
}

/// MatMul + bias → GELU → MatMul + residual → LayerNorm; attention over 2 heads; softmax,
/// log-softmax, reductions, comparisons, Where, slices, transposes, concat and split.
fn transformer_bits() -> Network {
    let mut net = Network::new("bits");
    let x = dyn_input(&mut net, "x", &[6, 16]);
    let w = constant(&mut net, "w", &[16, 32], 1);
    let b = constant(&mut net, "b", &[32], 2);
    let h = layer(&mut net, "mm1", "MatMul", Attributes::new(), &[Some(x), Some(w)]);
    let h = layer(&mut net, "bias1", "Add", Attributes::new(), &[Some(h), Some(b)]);
    let h = layer(&mut net, "gelu", "Gelu", Attributes::new(), &[Some(h)]);
    let w2 = constant(&mut net, "w2", &[32, 16], 3);
    let h = layer(&mut net, "mm2", "MatMul", Attributes::new(), &[Some(h), Some(w2)]);
    let h = layer(&mut net, "res", "Add", Attributes::new(), &[Some(h), Some(x)]);
    let g = constant(&mut net, "gamma", &[16], 4);
    let be = constant(&mut net, "beta", &[16], 5);
    let ln = layer(
        &mut net,
        "ln",
        "LayerNormalization",
        Attributes::new().with("axis", -1i64),
        &[Some(h), Some(g), Some(be)],
    );
    let heads = Attributes::new().with("q_num_heads", 2i64).with("kv_num_heads", 2i64);
    let att = layer(&mut net, "att", "Attention", heads, &[Some(ln), Some(h), Some(x)]);
    let sm = layer(&mut net, "sm", "Softmax", Attributes::new(), &[Some(att)]);
    let lsm = layer(&mut net, "lsm", "LogSoftmax", Attributes::new(), &[Some(att)]);
    let axis2 = net.add_constant("axis2", Tensor::from_vec(vec![1], vec![2i64]).unwrap()).unwrap();
    let mean = layer(&mut net, "mean", "ReduceMean", Attributes::new(), &[Some(att), Some(axis2)]);
    let less = layer(&mut net, "less", "Less", Attributes::new(), &[Some(att), Some(mean)]);
    let wh = layer(&mut net, "where", "Where", Attributes::new(), &[Some(less), Some(sm), Some(lsm)]);
    let starts = net.add_constant("starts", Tensor::from_vec(vec![1], vec![1i64]).unwrap()).unwrap();
    let ends = net.add_constant("ends", Tensor::from_vec(vec![1], vec![5i64]).unwrap()).unwrap();
    let axes = net.add_constant("axes", Tensor::from_vec(vec![1], vec![1i64]).unwrap()).unwrap();
    let sl = layer(&mut net, "slice", "Slice", Attributes::new(), &[Some(wh), Some(starts), Some(ends), Some(axes)]);
    let tr = layer(&mut net, "tr", "Transpose", Attributes::new().with("perm", vec![0i64, 2, 1]), &[Some(sl)]);
    let axis1 = net.add_constant("axis1", Tensor::from_vec(vec![1], vec![1i64]).unwrap()).unwrap();
    let mx = layer(&mut net, "max", "ReduceMax", Attributes::new().with("keepdims", 0i64), &[Some(tr), Some(axis1)]);
    let am = layer(&mut net, "argmax", "ArgMax", Attributes::new().with("axis", 1i64), &[Some(tr)]);
    let amf = layer(&mut net, "argmax_f", "Cast", Attributes::new().with("to", 1i64), &[Some(am)]);
    let cat = layer(&mut net, "cat", "Concat", Attributes::new().with("axis", 1i64), &[Some(tr), Some(amf)]);
    net.mark_output(cat).unwrap();
    net.mark_output(mx).unwrap();
    // Every intermediate as an output too (per-output errors say which kernel is off).
    if std::env::var("KILN_GPU_TEST_ALL_OUTPUTS").is_ok() {
        for t in [h, ln, att, sm, lsm, mean, less, wh, sl, tr, am] {
            net.mark_output(t).unwrap();
        }
    }
    net
}

#[test]
fn convolutions_pools_and_products_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let err = check(gpu.clone(), &cnn(), &[("image", vec![3, 12, 12])], false, &[1, 3]);
    assert!(err < 1e-4, "fp32 relative error {err}");
    let err = check(gpu, &cnn(), &[("image", vec![3, 12, 12])], true, &[2]);
    assert!(err < 1e-2, "fp16 relative error {err}");
}

#[test]
fn transformer_layers_and_generated_kernels_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let err = check(gpu.clone(), &transformer_bits(), &[("x", vec![6, 16])], false, &[1, 2]);
    assert!(err < 1e-4, "fp32 relative error {err}");
    let err = check(gpu, &transformer_bits(), &[("x", vec![6, 16])], true, &[2]);
    assert!(err < 2e-2, "fp16 relative error {err}");
}

#[test]
fn a_plan_round_trip_runs_the_same_and_static_engines_replay_a_cuda_graph() {
    let Some(gpu) = gpu() else { return };
    let net = cnn();
    let mut config = BuilderConfig::default();
    config.profile.inputs.insert("image".into(), ShapeRange::fixed(vec![2, 3, 12, 12]));
    let engine = Builder::new(gpu.clone()).build(&net, &config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cnn.plan");
    engine.save(&path).unwrap();
    let loaded = Arc::new(Engine::load(&path, gpu).unwrap());
    let engine = Arc::new(engine);
    let placements = loaded.device_placements().unwrap();
    assert!(placements.iter().all(|p| p == "gpu" || p == "elided"), "{placements:?}");
    let values: HashMap<String, Value> = [("image".to_string(), Value::Tensor(random(&[2, 3, 12, 12], 99)))].into();
    // Runs 1-2 plan and capture; later runs replay the graph: all must agree with the CPU.
    for _ in 0..4 {
        assert!(compare(&loaded, &net, &values) < 1e-4);
    }
    assert!(compare(&engine, &net, &values) < 1e-4);
}

#[test]
fn contexts_run_concurrently_on_threads() {
    let Some(gpu) = gpu() else { return };
    let net = Arc::new(cnn());
    let mut config = BuilderConfig::default();
    config.profile.inputs.insert("image".into(), ShapeRange::fixed(vec![1, 3, 12, 12]));
    let engine = Arc::new(Builder::new(gpu).build(&net, &config).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (engine, net) = (engine.clone(), net.clone());
            std::thread::spawn(move || {
                for r in 0..3 {
                    let values: HashMap<String, Value> =
                        [("image".to_string(), Value::Tensor(random(&[1, 3, 12, 12], t * 10 + r)))].into();
                    assert!(compare(&engine, &net, &values) < 1e-4);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn shapes_outside_the_profile_are_refused() {
    let Some(gpu) = gpu() else { return };
    let mut config = BuilderConfig::default();
    config.profile.inputs.insert("image".into(), ShapeRange::fixed(vec![1, 3, 12, 12]));
    let engine = Arc::new(Builder::new(gpu).build(&cnn(), &config).unwrap());
    let mut ctx = engine.create_context();
    let err = ctx.set_input("image", &Value::Tensor(random(&[2, 3, 12, 12], 1))).unwrap_err();
    assert!(err.to_string().contains("outside the engine's profile"), "{err}");
}

#[test]
fn enqueue_on_a_callers_stream_then_synchronize() {
    let Some(gpu) = gpu() else { return };
    let net = cnn();
    let mut config = BuilderConfig::default();
    config.profile.inputs.insert("image".into(), ShapeRange::fixed(vec![1, 3, 12, 12]));
    let engine = Arc::new(Builder::new(gpu).build(&net, &config).unwrap());
    let stream =
        cudarc::driver::result::stream::create(cudarc::driver::result::stream::StreamKind::NonBlocking).unwrap();
    let mut ctx = engine.create_context();
    for seed in 0..3 {
        let values: HashMap<String, Value> =
            [("image".to_string(), Value::Tensor(random(&[1, 3, 12, 12], seed)))].into();
        let want = kiln_cpu::execute_named(&net, values.clone()).unwrap();
        ctx.set_input("image", &values["image"]).unwrap();
        ctx.enqueue(stream as u64).unwrap();
        ctx.synchronize().unwrap();
        let got = ctx.output(&net.tensor(net.outputs()[0]).name).unwrap();
        let (g, w) = (got.as_tensor().unwrap().to_f64_vec(), want[0].as_tensor().unwrap().to_f64_vec());
        let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = g.iter().zip(&w).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff / scale < 1e-4, "run {seed}: relative error {}", diff / scale);
    }
    // SAFETY: created above; every run on it has been collected.
    unsafe { cudarc::driver::result::stream::destroy(stream) }.unwrap();
}

/// RMSNormalization → constant Pad → Trilu → variadic Sum → LayerNormalization with its
/// Mean and InvStdDev outputs.
fn norms_and_pads() -> Network {
    let mut net = Network::new("norms");
    let x = dyn_input(&mut net, "x", &[6, 16]);
    let s = constant(&mut net, "scale", &[16], 1);
    let rms = layer(&mut net, "rms", "RMSNormalization", Attributes::new(), &[Some(x), Some(s)]);
    let pads = net.add_constant("pads", Tensor::from_vec(vec![6], vec![0i64, 1, 0, 0, 0, 2]).unwrap()).unwrap();
    let value = net.add_constant("value", Tensor::from_vec(vec![], vec![0.5f32]).unwrap()).unwrap();
    let pad = layer(&mut net, "pad", "Pad", Attributes::new(), &[Some(rms), Some(pads), Some(value)]);
    let tri = layer(&mut net, "tri", "Trilu", Attributes::new().with("upper", 1i64), &[Some(pad)]);
    let sum = layer(&mut net, "sum", "Sum", Attributes::new(), &[Some(tri), Some(pad), Some(tri)]);
    let idx = net
        .add_constant(
            "idx",
            Tensor::from_vec(vec![1, 1, 18], (0..18).map(|k| (k * 5 % 7) as i64 - 3).collect()).unwrap(),
        )
        .unwrap();
    let picked =
        layer(&mut net, "pick", "GatherElements", Attributes::new().with("axis", 1i64), &[Some(sum), Some(idx)]);
    net.mark_output(picked).unwrap();
    let g = constant(&mut net, "gamma", &[18], 2);
    let outs = net
        .add_layer("ln", "LayerNormalization", Attributes::new(), &[Some(sum), Some(g)], &["ln_y", "ln_mean", "ln_inv"])
        .unwrap();
    for o in outs.into_iter().flatten() {
        net.mark_output(o).unwrap();
    }
    net
}

#[test]
fn normalizations_pads_and_triangles_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let err = check(gpu, &norms_and_pads(), &[("x", vec![6, 16])], false, &[1, 3]);
    assert!(err < 1e-4, "fp32 relative error {err}");
}

/// `x` cast to ONNX dtype code `to` (1 float, 2 uint8, 3 int8, 4 uint16, 5 int16, 6 int32,
/// 7 int64, 9 bool, 10 float16, 11 double, 12 uint32, 13 uint64, 16 bfloat16).
fn cast(net: &mut Network, name: &str, x: TensorId, to: i64) -> TensorId {
    layer(net, name, "Cast", Attributes::new().with("to", to), &[Some(x)])
}

fn scalar_f32(net: &mut Network, name: &str, v: f32) -> TensorId {
    net.add_constant(name, Tensor::from_vec(vec![], vec![v]).unwrap()).unwrap()
}

/// A scalar `v` of ONNX dtype code `to` (a constant, then a Cast).
fn typed_scalar(net: &mut Network, name: &str, v: f32, to: i64) -> TensorId {
    let c = scalar_f32(net, &format!("{name}_value"), v);
    cast(net, name, c, to)
}

/// Integer arithmetic, remainders, bit operations, powers and comparisons on generated typed
/// kernels: inputs scaled to integers in [-50, 50] and cast to each integer type; every result
/// cast back to float as an output.
fn integer_ops() -> Network {
    let mut net = Network::new("ints");
    let x = dyn_input(&mut net, "x", &[4, 6]);
    let y = dyn_input(&mut net, "y", &[4, 6]);
    let fifty = scalar_f32(&mut net, "fifty", 50.0);
    let xs = layer(&mut net, "xs", "Mul", Attributes::new(), &[Some(x), Some(fifty)]);
    let ys = layer(&mut net, "ys", "Mul", Attributes::new(), &[Some(y), Some(fifty)]);
    let mut outs = Vec::new();
    for (to, tag) in [(6i64, "i32"), (7, "i64"), (5, "i16"), (3, "i8"), (2, "u8"), (4, "u16"), (12, "u32"), (13, "u64")]
    {
        let a = cast(&mut net, &format!("a_{tag}"), xs, to);
        let b = cast(&mut net, &format!("b_{tag}"), ys, to);
        let bin = |net: &mut Network, op: &str, attrs: Attributes| {
            layer(net, &format!("{op}_{tag}_{}", attrs.iter().count()), op, attrs, &[Some(a), Some(b)])
        };
        let mut results = vec![
            bin(&mut net, "Add", Attributes::new()),
            bin(&mut net, "Sub", Attributes::new()),
            bin(&mut net, "Mul", Attributes::new()),
            bin(&mut net, "Div", Attributes::new()),
            bin(&mut net, "Mod", Attributes::new()),
            bin(&mut net, "Mod", Attributes::new().with("fmod", 1i64)),
            bin(&mut net, "Max", Attributes::new()),
            bin(&mut net, "Min", Attributes::new()),
            bin(&mut net, "BitwiseAnd", Attributes::new()),
            bin(&mut net, "BitwiseXor", Attributes::new()),
            layer(&mut net, &format!("not_{tag}"), "BitwiseNot", Attributes::new(), &[Some(a)]),
            layer(&mut net, &format!("abs_{tag}"), "Abs", Attributes::new(), &[Some(a)]),
            layer(&mut net, &format!("sign_{tag}"), "Sign", Attributes::new(), &[Some(a)]),
        ];
        // ONNX defines Neg on signed types and Pow on 32/64-bit integers only.
        if !tag.starts_with('u') {
            results.push(layer(&mut net, &format!("neg_{tag}"), "Neg", Attributes::new(), &[Some(a)]));
        }
        let less = bin(&mut net, "Less", Attributes::new());
        results.push(layer(
            &mut net,
            &format!("where_{tag}"),
            "Where",
            Attributes::new(),
            &[Some(less), Some(a), Some(b)],
        ));
        let eq = bin(&mut net, "Equal", Attributes::new());
        results.push(cast(&mut net, &format!("eq_{tag}"), eq, 1));
        // Small shift amounts and exponents: b mod 9 (and mod 4).
        let nine = typed_scalar(&mut net, &format!("nine_{tag}"), 9.0, to);
        let amount = layer(&mut net, &format!("amount_{tag}"), "Mod", Attributes::new(), &[Some(b), Some(nine)]);
        for dir in ["LEFT", "RIGHT"] {
            let attrs = Attributes::new().with("direction", dir);
            results.push(layer(&mut net, &format!("shift_{dir}_{tag}"), "BitShift", attrs, &[Some(a), Some(amount)]));
        }
        if tag == "i32" || tag == "i64" {
            let four = typed_scalar(&mut net, &format!("four_{tag}"), 4.0, to);
            let e = layer(&mut net, &format!("exp_{tag}"), "Mod", Attributes::new(), &[Some(b), Some(four)]);
            results.push(layer(&mut net, &format!("pow_{tag}"), "Pow", Attributes::new(), &[Some(a), Some(e)]));
        }
        let lo = typed_scalar(&mut net, &format!("lo_{tag}"), 3.0, to);
        let hi = typed_scalar(&mut net, &format!("hi_{tag}"), 30.0, to);
        results.push(layer(
            &mut net,
            &format!("clip_{tag}"),
            "Clip",
            Attributes::new(),
            &[Some(a), Some(lo), Some(hi)],
        ));
        for (k, r) in results.into_iter().enumerate() {
            outs.push(cast(&mut net, &format!("out{k}_{tag}"), r, 1));
        }
    }
    // Mixed-type Pow: an integer base with a float exponent and the reverse.
    let a = cast(&mut net, "pa", xs, 7);
    let a = layer(&mut net, "pa_abs", "Abs", Attributes::new(), &[Some(a)]);
    let half = scalar_f32(&mut net, "half", 0.5);
    let pf = layer(&mut net, "pow_i_f", "Pow", Attributes::new(), &[Some(a), Some(half)]);
    outs.push(cast(&mut net, "pow_i_f_out", pf, 1));
    let two = net.add_constant("two", Tensor::from_vec(vec![], vec![2i64]).unwrap()).unwrap();
    outs.push(layer(&mut net, "pow_f_i", "Pow", Attributes::new(), &[Some(x), Some(two)]));
    for o in outs {
        net.mark_output(o).unwrap();
    }
    net
}

#[test]
fn integer_arithmetic_bits_and_comparisons_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let err = check(gpu, &integer_ops(), &[("x", vec![4, 6]), ("y", vec![4, 6])], false, &[1, 3]);
    assert!(err < 1e-6, "relative error {err}");
}

/// Every float function and activation the typed kernels generate, on fp32 inputs in (-0.9,
/// 0.9) (Log, Sqrt on 1 + x²; Acosh on 3.7·(1 + x²)), and on native f16, bf16 and f64 tensors
/// cast from them.
fn float_functions() -> Network {
    let mut net = Network::new("floats");
    let x0 = dyn_input(&mut net, "x", &[5, 7]);
    let s = scalar_f32(&mut net, "s", 0.9);
    let x = layer(&mut net, "x09", "Mul", Attributes::new(), &[Some(x0), Some(s)]);
    let one = scalar_f32(&mut net, "one", 1.0);
    let sq = layer(&mut net, "sq", "Mul", Attributes::new(), &[Some(x), Some(x)]);
    let big = layer(&mut net, "big", "Add", Attributes::new(), &[Some(sq), Some(one)]);
    let slope = constant(&mut net, "slope", &[7], 3);
    // A dividend in [3.7, 6.7) for a divisor in [1, 1.81): never a zero divisor.
    let k = scalar_f32(&mut net, "k", 3.7);
    let dividend = layer(&mut net, "dividend", "Mul", Attributes::new(), &[Some(big), Some(k)]);
    let mut outs = Vec::new();
    for (to, tag) in [(1i64, "f32"), (10, "f16"), (16, "bf16"), (11, "f64")] {
        let (xt, bt, st, dt) = if to == 1 {
            (x, big, slope, dividend)
        } else {
            (
                cast(&mut net, &format!("x_{tag}"), x, to),
                cast(&mut net, &format!("big_{tag}"), big, to),
                cast(&mut net, &format!("slope_{tag}"), slope, to),
                cast(&mut net, &format!("dividend_{tag}"), dividend, to),
            )
        };
        let unary = [
            ("Acos", Attributes::new()),
            ("Asin", Attributes::new()),
            ("Atan", Attributes::new()),
            ("Atanh", Attributes::new()),
            ("Asinh", Attributes::new()),
            ("Tan", Attributes::new()),
            ("Sinh", Attributes::new()),
            ("Cosh", Attributes::new()),
            ("Round", Attributes::new()),
            ("Sign", Attributes::new()),
            ("Exp", Attributes::new()),
            ("Sigmoid", Attributes::new()),
            ("Mish", Attributes::new()),
            ("Softplus", Attributes::new()),
            ("HardSwish", Attributes::new()),
            ("Celu", Attributes::new().with("alpha", 2.0f32)),
            ("Selu", Attributes::new()),
            ("Elu", Attributes::new()),
            ("Swish", Attributes::new().with("alpha", 1.5f32)),
            ("ThresholdedRelu", Attributes::new().with("alpha", 0.2f32)),
            ("Shrink", Attributes::new().with("lambd", 0.3f32).with("bias", 0.1f32)),
            ("Gelu", Attributes::new().with("approximate", "tanh")),
            ("LeakyRelu", Attributes::new().with("alpha", 0.3f32)),
        ];
        let mut results = Vec::new();
        for (op, attrs) in unary {
            results.push(layer(&mut net, &format!("{op}_{tag}"), op, attrs, &[Some(xt)]));
        }
        // Away from 1, where Acosh's slope would magnify the rounding of 16-bit storage.
        results.push(layer(&mut net, &format!("acosh_{tag}"), "Acosh", Attributes::new(), &[Some(dt)]));
        results.push(layer(&mut net, &format!("log_{tag}"), "Log", Attributes::new(), &[Some(bt)]));
        results.push(layer(&mut net, &format!("sqrt_{tag}"), "Sqrt", Attributes::new(), &[Some(bt)]));
        results.push(layer(&mut net, &format!("prelu_{tag}"), "PRelu", Attributes::new(), &[Some(xt), Some(st)]));
        results.push(layer(&mut net, &format!("div_{tag}"), "Div", Attributes::new(), &[Some(xt), Some(bt)]));
        results.push(layer(
            &mut net,
            &format!("mod_{tag}"),
            "Mod",
            Attributes::new().with("fmod", 1i64),
            &[Some(dt), Some(bt)],
        ));
        results.push(layer(&mut net, &format!("modf_{tag}"), "Mod", Attributes::new(), &[Some(dt), Some(bt)]));
        results.push(layer(&mut net, &format!("pow_{tag}"), "Pow", Attributes::new(), &[Some(bt), Some(xt)]));
        let sum = layer(&mut net, &format!("sum_{tag}"), "Sum", Attributes::new(), &[Some(xt), Some(bt), Some(xt)]);
        results.push(sum);
        results.push(layer(&mut net, &format!("mean_{tag}"), "Mean", Attributes::new(), &[Some(xt), Some(bt)]));
        results.push(layer(&mut net, &format!("max_{tag}"), "Max", Attributes::new(), &[Some(xt), Some(st), Some(bt)]));
        let nan = layer(&mut net, &format!("isnan_{tag}"), "IsNaN", Attributes::new(), &[Some(xt)]);
        // Against zero: 16-bit storage keeps every input's sign, so no comparison flips.
        let zero = typed_scalar(&mut net, &format!("zero_{tag}"), 0.0, to);
        let gt = layer(&mut net, &format!("gt_{tag}"), "Greater", Attributes::new(), &[Some(xt), Some(zero)]);
        let either = layer(&mut net, &format!("or_{tag}"), "Or", Attributes::new(), &[Some(nan), Some(gt)]);
        results.push(layer(
            &mut net,
            &format!("where_{tag}"),
            "Where",
            Attributes::new(),
            &[Some(either), Some(xt), Some(bt)],
        ));
        for (k, r) in results.into_iter().enumerate() {
            outs.push(if to == 1 { r } else { cast(&mut net, &format!("out{k}_{tag}"), r, 1) });
        }
    }
    for o in outs {
        net.mark_output(o).unwrap();
    }
    net
}

#[test]
fn float_functions_on_every_float_dtype_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    // Native f16/bf16 results are rounded once to their type, as on the CPU; a last-place
    // difference of the f32 math before rounding may flip one rounding.
    let err = check(gpu.clone(), &float_functions(), &[("x", vec![5, 7])], false, &[1, 2]);
    assert!(err < 1e-2, "relative error {err}");
    let err = check(gpu, &float_functions(), &[("x", vec![5, 7])], true, &[2]);
    assert!(err < 2e-2, "fp16 storage: relative error {err}");
}

/// Dropout at inference (with its mask), BitCast, and Trilu on integers.
fn dtype_moves() -> Network {
    let mut net = Network::new("moves");
    let x = dyn_input(&mut net, "x", &[6, 6]);
    let outs = net.add_layer("drop", "Dropout", Attributes::new(), &[Some(x)], &["drop_y", "drop_mask"]).unwrap();
    let (dy, mask) = (outs[0].unwrap(), outs[1].unwrap());
    let maskf = cast(&mut net, "maskf", mask, 1);
    let hundred = scalar_f32(&mut net, "hundred", 100.0);
    let xs = layer(&mut net, "xs", "Mul", Attributes::new(), &[Some(dy), Some(hundred)]);
    let xi = cast(&mut net, "xi", xs, 7);
    let tri = layer(&mut net, "tri", "Trilu", Attributes::new().with("upper", 0i64), &[Some(xi)]);
    let trif = cast(&mut net, "trif", tri, 1);
    let bits = layer(&mut net, "bits", "BitCast", Attributes::new().with("to", 6i64), &[Some(xs)]);
    let back = layer(&mut net, "back", "BitCast", Attributes::new().with("to", 1i64), &[Some(bits)]);
    for o in [maskf, trif, back] {
        net.mark_output(o).unwrap();
    }
    net
}

#[test]
fn dropout_bitcast_and_integer_triangles_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let err = check(gpu, &dtype_moves(), &[("x", vec![6, 6])], false, &[1, 2]);
    assert!(err < 1e-6, "relative error {err}");
}

/// The layers of `net` the CUDA backend would leave on the CPU, with why: placement decided from
/// a CPU-built engine graph, as the conformance census does (no GPU needed). The CPU reference
/// runs the network too, so it is known to be valid.
fn host_layers(net: &Network, inputs: &[(&str, Vec<usize>)]) -> Vec<String> {
    let mut config = BuilderConfig::default();
    let mut values = HashMap::new();
    for (k, (name, dims)) in inputs.iter().enumerate() {
        let shape = [vec![2], dims.clone()].concat();
        config.profile.inputs.insert(name.to_string(), ShapeRange::fixed(shape.clone()));
        values.insert(name.to_string(), Value::Tensor(random(&shape, k as u64 + 1)));
    }
    kiln_cpu::execute_named(net, values).expect("CPU reference");
    let engine = Builder::new(Arc::new(kiln_engine::cpu::CpuBackend)).build(net, &config).expect("CPU build");
    let places = kiln_cuda::placement_census(engine.graph());
    assert!(places.len() >= 8, "too few layers: {places:?}");
    places
        .iter()
        .zip(&engine.graph().layers)
        .filter(|(p, _)| p.starts_with("cpu"))
        .map(|(p, l)| format!("{} {p}", l.layer.op))
        .collect()
}

#[test]
fn typed_ops_of_every_dtype_are_placed_on_the_gpu() {
    for (net, inputs) in [
        (integer_ops(), vec![("x", vec![4, 6]), ("y", vec![4, 6])]),
        (float_functions(), vec![("x", vec![5, 7])]),
        (dtype_moves(), vec![("x", vec![6, 6])]),
    ] {
        let host = host_layers(&net, &inputs);
        assert!(host.is_empty(), "{}: {host:?}", net.name);
    }
}
