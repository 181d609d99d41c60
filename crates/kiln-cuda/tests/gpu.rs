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

/// Products whose bias, residual and ReLU cuBLASLt fuses: MatMul + bias → ReLU, MatMul +
/// residual → ReLU, and a transposed, scaled Gemm with its C → ReLU.
fn fused_products() -> Network {
    let mut net = Network::new("mlp");
    let x = dyn_input(&mut net, "x", &[24]);
    let w1 = constant(&mut net, "w1", &[24, 40], 11);
    let b1 = constant(&mut net, "b1", &[40], 12);
    let h = layer(&mut net, "mm1", "MatMul", Attributes::new(), &[Some(x), Some(w1)]);
    let h = layer(&mut net, "bias1", "Add", Attributes::new(), &[Some(h), Some(b1)]);
    let h = layer(&mut net, "relu1", "Relu", Attributes::new(), &[Some(h)]);
    let w2 = constant(&mut net, "w2", &[40, 24], 13);
    let h = layer(&mut net, "mm2", "MatMul", Attributes::new(), &[Some(h), Some(w2)]);
    let h = layer(&mut net, "res", "Add", Attributes::new(), &[Some(h), Some(x)]);
    let h = layer(&mut net, "relu2", "Relu", Attributes::new(), &[Some(h)]);
    let w3 = constant(&mut net, "w3", &[7, 24], 14);
    let b3 = constant(&mut net, "b3", &[7], 15);
    let gemm = Attributes::new().with("transB", 1i64).with("alpha", 0.5f32);
    let y = layer(&mut net, "fc", "Gemm", gemm, &[Some(h), Some(w3), Some(b3)]);
    let y = layer(&mut net, "relu3", "Relu", Attributes::new(), &[Some(y)]);
    net.mark_output(y).unwrap();
    net
}

#[test]
fn products_with_fused_bias_residual_and_relu_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let err = check(gpu.clone(), &fused_products(), &[("x", vec![24])], false, &[1, 5]);
    assert!(err < 1e-4, "fp32 relative error {err}");
    let err = check(gpu, &fused_products(), &[("x", vec![24])], true, &[3]);
    assert!(err < 1e-2, "fp16 relative error {err}");
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

fn int_constant(net: &mut Network, name: &str, shape: &[usize], values: Vec<i64>) -> TensorId {
    net.add_constant(name, Tensor::from_vec(shape.to_vec(), values).unwrap()).unwrap()
}

/// NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss over [N, C, d]: weights, ignore_index,
/// each reduction, and SoftmaxCrossEntropyLoss's log_prob output.
fn losses() -> Network {
    let mut net = Network::new("losses");
    let x = dyn_input(&mut net, "x", &[5, 3]);
    // Targets of a batch of 2, ignore_index 4 among them.
    let t = int_constant(&mut net, "t", &[2, 3], vec![0, 4, 2, 1, 3, 4]);
    let w = net.add_constant("w", Tensor::from_vec(vec![5], vec![0.5f32, 1.0, 2.0, 0.25, 1.5]).unwrap()).unwrap();
    let a = |r: &str| Attributes::new().with("reduction", r).with("ignore_index", 4i64);
    let mean = layer(&mut net, "nll_mean", "NegativeLogLikelihoodLoss", a("mean"), &[Some(x), Some(t), Some(w)]);
    let none = layer(&mut net, "nll_none", "NegativeLogLikelihoodLoss", a("none"), &[Some(x), Some(t)]);
    let sum = layer(&mut net, "sce_sum", "SoftmaxCrossEntropyLoss", a("sum"), &[Some(x), Some(t), Some(w)]);
    let sce = net
        .add_layer("sce", "SoftmaxCrossEntropyLoss", a("none"), &[Some(x), Some(t)], &["sce_loss", "sce_log_prob"])
        .unwrap();
    for o in [mean, none, sum].into_iter().chain(sce.into_iter().flatten()) {
        net.mark_output(o).unwrap();
    }
    net
}

#[test]
fn losses_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let err = check(gpu.clone(), &losses(), &[("x", vec![5, 3])], false, &[2]);
    assert!(err < 1e-4, "fp32 relative error {err}");
    let err = check(gpu, &losses(), &[("x", vec![5, 3])], true, &[2]);
    assert!(err < 2e-2, "fp16 relative error {err}");
}

/// GatherElements (negative indices), GatherND with batch_dims, ScatterElements with duplicate
/// indices (replacing in order, and adding), ScatterND with max and with replacement, and
/// TensorScatter into a cache.
fn gathers_and_scatters() -> Network {
    let mut net = Network::new("scatter");
    let x = dyn_input(&mut net, "x", &[4, 6]);
    let gi = int_constant(&mut net, "gi", &[2, 4, 3], (0..24).map(|k| (k * 7 % 11) - 5).map(|k| k % 6).collect());
    let ge = layer(&mut net, "ge", "GatherElements", Attributes::new().with("axis", 2i64), &[Some(x), Some(gi)]);
    let ni = int_constant(&mut net, "ni", &[2, 3, 1], vec![3, 0, -1, 1, 1, 2]);
    let gnd = layer(&mut net, "gnd", "GatherND", Attributes::new().with("batch_dims", 1i64), &[Some(x), Some(ni)]);
    // Indices [2, 4, 6] into axis 1 (of 4): most lines hit one row more than once.
    let si = int_constant(&mut net, "si", &[2, 4, 6], (0..48).map(|k| [1, -3, 1, 0, 3][k % 5]).collect());
    let upd = layer(&mut net, "upd", "Neg", Attributes::new(), &[Some(ge)]);
    let upd = layer(&mut net, "upd6", "Concat", Attributes::new().with("axis", 2i64), &[Some(upd), Some(upd)]);
    let se = |r: &str| Attributes::new().with("axis", 1i64).with("reduction", r);
    let sn = layer(&mut net, "se_none", "ScatterElements", se("none"), &[Some(x), Some(si), Some(upd)]);
    let sa = layer(&mut net, "se_add", "ScatterElements", se("add"), &[Some(x), Some(si), Some(upd)]);
    // Tuples (1, 2) twice: with no reduction the later update wins.
    let ti = int_constant(&mut net, "ti", &[3, 2], vec![1, 2, 0, -1, 1, 2]);
    let tu = constant(&mut net, "tu", &[3, 6], 9);
    let nd = |r: &str| Attributes::new().with("reduction", r);
    let ndm = layer(&mut net, "nd_max", "ScatterND", nd("max"), &[Some(x), Some(ti), Some(tu)]);
    let ndn = layer(&mut net, "nd_none", "ScatterND", nd("none"), &[Some(x), Some(ti), Some(tu)]);
    let cu = constant(&mut net, "cache_update", &[2, 2, 6], 10);
    let wi = int_constant(&mut net, "wi", &[2], vec![2, 0]);
    let cache =
        layer(&mut net, "cache", "TensorScatter", Attributes::new().with("axis", 1i64), &[Some(x), Some(cu), Some(wi)]);
    for o in [ge, gnd, sn, sa, ndm, ndn, cache] {
        net.mark_output(o).unwrap();
    }
    net
}

#[test]
fn gathers_and_scatters_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let err = check(gpu, &gathers_and_scatters(), &[("x", vec![4, 6])], false, &[2]);
    assert!(err < 1e-5, "fp32 relative error {err}");
}

/// CumSum (exclusive, reverse) and CumProd along constant axes, Hardmax, DepthToSpace (CRD),
/// SpaceToDepth (DCR), ReverseSequence, EyeLike and MaxUnpool.
fn scans_and_permutations() -> Network {
    let mut net = Network::new("scans");
    let x = dyn_input(&mut net, "x", &[8, 4, 4]);
    let one = int_constant(&mut net, "one", &[], vec![1]);
    let last = int_constant(&mut net, "last", &[1], vec![-1]);
    let cs = layer(
        &mut net,
        "cumsum",
        "CumSum",
        Attributes::new().with("exclusive", 1i64).with("reverse", 1i64),
        &[Some(x), Some(one)],
    );
    let cp = layer(&mut net, "cumprod", "CumProd", Attributes::new(), &[Some(x), Some(last)]);
    let hm = layer(&mut net, "hardmax", "Hardmax", Attributes::new().with("axis", 1i64), &[Some(x)]);
    let d2s = Attributes::new().with("blocksize", 2i64).with("mode", "CRD");
    let d2s = layer(&mut net, "d2s", "DepthToSpace", d2s, &[Some(x)]);
    let s2d = layer(&mut net, "s2d", "SpaceToDepth", Attributes::new().with("blocksize", 2i64), &[Some(x)]);
    let lens = int_constant(&mut net, "lens", &[2], vec![5, 8]);
    let rs = Attributes::new().with("batch_axis", 0i64).with("time_axis", 1i64);
    let rs = layer(&mut net, "revseq", "ReverseSequence", rs, &[Some(x), Some(lens)]);
    let flat = layer(&mut net, "flat", "Flatten", Attributes::new(), &[Some(x)]);
    let eye = layer(&mut net, "eye", "EyeLike", Attributes::new().with("k", 3i64), &[Some(flat)]);
    // Unpooled to [2, 8, 8, 8]: flat indices with repeats (the later element wins).
    let ui = int_constant(&mut net, "ui", &[2, 8, 4, 4], (0..256).map(|k| k * 37 % 200).collect());
    let unpool = Attributes::new().with("kernel_shape", vec![2i64, 2]).with("strides", vec![2i64, 2]);
    let unpool = layer(&mut net, "unpool", "MaxUnpool", unpool, &[Some(x), Some(ui)]);
    for o in [cs, cp, hm, d2s, s2d, rs, eye, unpool] {
        net.mark_output(o).unwrap();
    }
    net
}

#[test]
fn scans_and_permutations_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let err = check(gpu, &scans_and_permutations(), &[("x", vec![8, 4, 4])], false, &[2]);
    assert!(err < 1e-5, "fp32 relative error {err}");
}

/// QuantizeLinear per axis (uint8, zero points) and per tensor (int8, saturating), blocked
/// (int16), DequantizeLinear back, and DynamicQuantizeLinear.
fn quantization() -> Network {
    let mut net = Network::new("quant");
    let x = dyn_input(&mut net, "x", &[4, 6]);
    let scale = net.add_constant("scale", Tensor::from_vec(vec![4], vec![0.01f32, 0.02, 0.005, 0.1]).unwrap()).unwrap();
    let zp = net.add_constant("zp", Tensor::from_vec(vec![4], vec![128u8, 0, 100, 255]).unwrap()).unwrap();
    let axis = || Attributes::new().with("axis", 1i64);
    let q = layer(&mut net, "q", "QuantizeLinear", axis(), &[Some(x), Some(scale), Some(zp)]);
    let dq = layer(&mut net, "dq", "DequantizeLinear", axis(), &[Some(q), Some(scale), Some(zp)]);
    let s1 = net.add_constant("s1", Tensor::from_vec(vec![], vec![0.004f32]).unwrap()).unwrap();
    let z1 = net.add_constant("z1", Tensor::from_vec(vec![], vec![-3i8]).unwrap()).unwrap();
    let q8 = layer(&mut net, "q8", "QuantizeLinear", Attributes::new(), &[Some(x), Some(s1), Some(z1)]);
    let sb = constant(&mut net, "sb", &[2, 4, 2], 11);
    let zb = net
        .add_constant("zb", Tensor::from_vec(vec![2, 4, 2], (0..16).map(|k| k as i16 * 50 - 400).collect()).unwrap())
        .unwrap();
    let blocked = Attributes::new().with("axis", 2i64).with("block_size", 4i64);
    let qb = layer(&mut net, "qb", "QuantizeLinear", blocked.clone(), &[Some(x), Some(sb), Some(zb)]);
    let dqb = layer(&mut net, "dqb", "DequantizeLinear", blocked, &[Some(qb), Some(sb), Some(zb)]);
    let dynamic = net
        .add_layer("dyn", "DynamicQuantizeLinear", Attributes::new(), &[Some(x)], &["dyn_y", "dyn_scale", "dyn_zp"])
        .unwrap();
    for o in [q, dq, q8, qb, dqb].into_iter().chain(dynamic.into_iter().flatten()) {
        net.mark_output(o).unwrap();
    }
    net
}

#[test]
fn quantization_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let err = check(gpu, &quantization(), &[("x", vec![4, 6])], false, &[2]);
    assert!(err < 1e-6, "fp32 relative error {err}");
}

// ---- spatial family: resampling, transposed convolution, N-D pools, normalizations ----------

fn const_f32(net: &mut Network, name: &str, shape: &[usize], v: Vec<f32>) -> TensorId {
    net.add_constant(name, Tensor::from_vec(shape.to_vec(), v).unwrap()).unwrap()
}

fn const_i64(net: &mut Network, name: &str, v: Vec<i64>) -> TensorId {
    net.add_constant(name, Tensor::from_vec(vec![v.len()], v).unwrap()).unwrap()
}

/// Every layer of `net` runs on the GPU (a CPU fallback would make the comparison vacuous).
fn assert_all_on_gpu(backend: Arc<CudaBackend>, net: &Network, inputs: &[(&str, Vec<usize>)]) {
    let mut config = BuilderConfig::default();
    for (name, dims) in inputs {
        config.profile.inputs.insert(name.to_string(), ShapeRange::fixed([vec![2], dims.clone()].concat()));
    }
    let engine = Builder::new(backend).build(net, &config).expect("GPU build");
    let placements = engine.device_placements().unwrap();
    assert!(placements.iter().all(|p| p == "gpu" || p == "elided"), "{placements:?}");
}

/// Resize (linear, antialiased cubic with sizes and axes, nearest, tf_crop_and_resize),
/// GridSample (three modes and paddings) and ConvTranspose (strides, pads, output_padding,
/// groups, dilations, SAME_UPPER) and DeformConv (offset groups, mask, bias). `discrete`: also outputs that pick one input by comparing
/// floats (nearest grid sampling), which fp16 storage may flip.
fn spatial_resampling(discrete: bool) -> Network {
    let mut net = Network::new("resampling");
    let x = dyn_input(&mut net, "x", &[3, 6, 5]);
    let grid = dyn_input(&mut net, "grid", &[4, 5, 2]);
    let mut outs = Vec::new();
    let scales = const_f32(&mut net, "scales", &[4], vec![1.0, 1.0, 1.5, 0.75]);
    let a = Attributes::new().with("mode", "linear");
    outs.push(layer(&mut net, "rs_linear", "Resize", a, &[Some(x), None, Some(scales)]));
    let sizes = const_i64(&mut net, "sizes", vec![4, 3]);
    let a = Attributes::new().with("mode", "cubic").with("antialias", 1i64).with("axes", vec![2i64, 3]);
    outs.push(layer(&mut net, "rs_cubic_aa", "Resize", a, &[Some(x), None, None, Some(sizes)]));
    let scales2 = const_f32(&mut net, "scales2", &[2], vec![2.0, 1.5]);
    let a = Attributes::new()
        .with("mode", "nearest")
        .with("coordinate_transformation_mode", "asymmetric")
        .with("nearest_mode", "round_prefer_ceil")
        .with("axes", vec![3i64, 2]);
    outs.push(layer(&mut net, "rs_nearest", "Resize", a, &[Some(x), None, Some(scales2)]));
    let roi = const_f32(&mut net, "roi", &[4], vec![0.2, 0.1, 0.8, 1.2]);
    let sizes2 = const_i64(&mut net, "sizes2", vec![5, 4]);
    let a = Attributes::new()
        .with("mode", "linear")
        .with("coordinate_transformation_mode", "tf_crop_and_resize")
        .with("extrapolation_value", 7.0f32)
        .with("axes", vec![2i64, 3]);
    outs.push(layer(&mut net, "rs_crop", "Resize", a, &[Some(x), Some(roi), None, Some(sizes2)]));
    let a = Attributes::new().with("mode", "cubic").with("exclude_outside", 1i64).with("cubic_coeff_a", -0.5f32);
    let scales3 = const_f32(&mut net, "scales3", &[4], vec![1.0, 1.0, 0.6, 1.8]);
    outs.push(layer(&mut net, "rs_cubic_ex", "Resize", a, &[Some(x), None, Some(scales3)]));
    let modes = [
        ("gs_linear", "linear", "zeros", 0i64),
        ("gs_cubic", "cubic", "reflection", 1),
        ("gs_near", "nearest", "border", 0),
    ];
    for (name, mode, padding, align) in modes.into_iter().take(if discrete { 3 } else { 2 }) {
        let a = Attributes::new().with("mode", mode).with("padding_mode", padding).with("align_corners", align);
        outs.push(layer(&mut net, name, "GridSample", a, &[Some(x), Some(grid)]));
    }
    let w = constant(&mut net, "ct_w", &[3, 2, 3, 3], 11);
    let b = constant(&mut net, "ct_b", &[2], 12);
    let a = Attributes::new()
        .with("strides", vec![2i64, 2])
        .with("pads", vec![1i64, 0, 1, 1])
        .with("output_padding", vec![1i64, 0]);
    outs.push(layer(&mut net, "ct", "ConvTranspose", a, &[Some(x), Some(w), Some(b)]));
    let wg = constant(&mut net, "ctg_w", &[3, 2, 2, 2], 13);
    let a = Attributes::new()
        .with("group", 3i64)
        .with("dilations", vec![2i64, 1])
        .with("strides", vec![1i64, 2])
        .with("auto_pad", "SAME_UPPER");
    outs.push(layer(&mut net, "ct_group", "ConvTranspose", a, &[Some(x), Some(wg)]));
    let offset = dyn_input(&mut net, "offset", &[8, 5, 4]);
    let wd = constant(&mut net, "dc_w", &[4, 3, 2, 2], 14);
    outs.push(layer(&mut net, "deform", "DeformConv", Attributes::new(), &[Some(x), Some(wd), Some(offset)]));
    let offset2 = dyn_input(&mut net, "offset2", &[24, 7, 6]);
    let mask = dyn_input(&mut net, "mask", &[12, 7, 6]);
    let wd2 = constant(&mut net, "dc_w2", &[3, 1, 2, 2], 15);
    let bd = constant(&mut net, "dc_b", &[3], 16);
    let a = Attributes::new().with("group", 3i64).with("offset_group", 3i64).with("pads", vec![1i64, 1, 1, 1]);
    let dc_in = [Some(x), Some(wd2), Some(offset2), Some(bd), Some(mask)];
    outs.push(layer(&mut net, "deform_masked", "DeformConv", a, &dc_in));
    for o in outs {
        net.mark_output(o).unwrap();
    }
    net
}

#[test]
fn resize_grid_sample_transposed_and_deformable_convolutions_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let net = spatial_resampling(true);
    let inputs = [
        ("x", vec![3, 6, 5]),
        ("grid", vec![4, 5, 2]),
        ("offset", vec![8, 5, 4]),
        ("offset2", vec![24, 7, 6]),
        ("mask", vec![12, 7, 6]),
    ];
    assert_all_on_gpu(gpu.clone(), &net, &inputs);
    let err = check(gpu.clone(), &net, &inputs, false, &[1, 2]);
    assert!(err < 1e-4, "fp32 relative error {err}");
    let err = check(gpu, &spatial_resampling(false), &inputs, true, &[2]);
    assert!(err < 2e-2, "fp16 relative error {err}");
}

/// 1-D, 2-D (SAME_UPPER with Indices, ceil_mode with count_include_pad) and 3-D pools, LpPool,
/// GlobalLpPool, softmax over inner axes, the normalizations, RoiAlign and CausalConvWithState. `discrete`: also MaxPool's
/// Indices, uint8 MaxPool and MaxUnpool (fp16 storage may make maxima tie).
fn spatial_pools_and_norms(discrete: bool) -> Network {
    let mut net = Network::new("pools_norms");
    let x = dyn_input(&mut net, "x", &[4, 6, 6]);
    let v = dyn_input(&mut net, "v", &[2, 4, 4, 5]);
    let s = dyn_input(&mut net, "s", &[3, 10]);
    let mut outs = Vec::new();
    let a = Attributes::new()
        .with("kernel_shape", vec![3i64, 3])
        .with("strides", vec![2i64, 2])
        .with("auto_pad", "SAME_UPPER");
    let mp = net.add_layer("mp_same", "MaxPool", a, &[Some(x)], &["mp_y", "mp_idx"]).unwrap();
    outs.extend(mp.into_iter().flatten().take(if discrete { 2 } else { 1 }));
    let a = Attributes::new()
        .with("kernel_shape", vec![3i64, 3])
        .with("strides", vec![2i64, 2])
        .with("pads", vec![1i64, 1, 1, 1])
        .with("ceil_mode", 1i64)
        .with("count_include_pad", 1i64);
    outs.push(layer(&mut net, "ap_ceil", "AveragePool", a, &[Some(x)]));
    let a = Attributes::new().with("kernel_shape", vec![2i64, 2]).with("pads", vec![0i64, 1, 1, 0]).with("p", 3i64);
    outs.push(layer(&mut net, "lp", "LpPool", a, &[Some(x)]));
    outs.push(layer(&mut net, "glp", "GlobalLpPool", Attributes::new(), &[Some(x)]));
    let a = Attributes::new().with("kernel_shape", vec![2i64, 2, 2]).with("dilations", vec![1i64, 2, 1]);
    let mp3 = net.add_layer("mp3", "MaxPool", a, &[Some(v)], &["mp3_y", "mp3_idx"]).unwrap();
    outs.extend(mp3.into_iter().flatten().take(if discrete { 2 } else { 1 }));
    let a = Attributes::new().with("kernel_shape", vec![2i64, 3, 2]).with("strides", vec![1i64, 2, 2]);
    outs.push(layer(&mut net, "ap3", "AveragePool", a, &[Some(v)]));
    let a =
        Attributes::new().with("kernel_shape", vec![3i64]).with("strides", vec![2i64]).with("auto_pad", "SAME_LOWER");
    outs.push(layer(&mut net, "ap1", "AveragePool", a, &[Some(s)]));
    outs.push(layer(&mut net, "sm1", "Softmax", Attributes::new().with("axis", 1i64), &[Some(x)]));
    outs.push(layer(&mut net, "lsm2", "LogSoftmax", Attributes::new().with("axis", 2i64), &[Some(x)]));
    let scale = constant(&mut net, "bn_scale", &[4], 21);
    let bias = constant(&mut net, "bn_bias", &[4], 22);
    let mean = constant(&mut net, "bn_mean", &[4], 23);
    let var = const_f32(&mut net, "bn_var", &[4], vec![0.5, 1.5, 0.25, 2.0]);
    let bn_in = [Some(x), Some(scale), Some(bias), Some(mean), Some(var)];
    outs.push(layer(&mut net, "bn", "BatchNormalization", Attributes::new().with("epsilon", 1e-3f32), &bn_in));
    let a = Attributes::new().with("training_mode", 1i64).with("momentum", 0.8f32);
    let bnt = net.add_layer("bn_train", "BatchNormalization", a, &bn_in, &["bnt_y", "bnt_mean", "bnt_var"]).unwrap();
    outs.extend(bnt.into_iter().flatten());
    outs.push(layer(
        &mut net,
        "inorm",
        "InstanceNormalization",
        Attributes::new(),
        &[Some(x), Some(scale), Some(bias)],
    ));
    let a = Attributes::new().with("num_groups", 2i64);
    outs.push(layer(&mut net, "gnorm", "GroupNormalization", a, &[Some(x), Some(scale), Some(bias)]));
    let a = Attributes::new().with("axis", 1i64).with("p", 1i64);
    outs.push(layer(&mut net, "l1", "LpNormalization", a, &[Some(x)]));
    outs.push(layer(&mut net, "l2", "LpNormalization", Attributes::new(), &[Some(x)]));
    outs.push(layer(&mut net, "mvn", "MeanVarianceNormalization", Attributes::new(), &[Some(x)]));
    let a = Attributes::new().with("size", 3i64).with("alpha", 0.01f32).with("bias", 2.0f32);
    outs.push(layer(&mut net, "lrn", "LRN", a, &[Some(x)]));
    let past = dyn_input(&mut net, "past", &[3, 3]);
    let cw = constant(&mut net, "causal_w", &[3, 1, 4], 31);
    let cb = constant(&mut net, "causal_b", &[3], 32);
    let a = Attributes::new().with("activation", "silu");
    let cc = net
        .add_layer(
            "causal",
            "CausalConvWithState",
            a,
            &[Some(s), Some(cw), Some(cb), Some(past)],
            &["cc_y", "cc_state"],
        )
        .unwrap();
    outs.extend(cc.into_iter().flatten());
    outs.push(layer(&mut net, "causal_plain", "CausalConvWithState", Attributes::new(), &[Some(s), Some(cw)]));
    if discrete {
        // MaxPool on uint8 (from scaled |x|), and MaxUnpool of a pool's values at its indices.
        let hundred = const_f32(&mut net, "hundred", &[], vec![100.0]);
        let scaled = layer(&mut net, "scaled", "Mul", Attributes::new(), &[Some(x), Some(hundred)]);
        let abs = layer(&mut net, "abs", "Abs", Attributes::new(), &[Some(scaled)]);
        let bytes = layer(&mut net, "bytes", "Cast", Attributes::new().with("to", 2i64), &[Some(abs)]);
        let a = Attributes::new().with("kernel_shape", vec![2i64, 3]).with("pads", vec![1i64, 0, 0, 1]);
        outs.push(layer(&mut net, "mp_u8", "MaxPool", a, &[Some(bytes)]));
        let a = || Attributes::new().with("kernel_shape", vec![2i64, 2]).with("strides", vec![2i64, 2]);
        let mp2 = net.add_layer("mp2", "MaxPool", a(), &[Some(x)], &["mp2_y", "mp2_idx"]).unwrap();
        outs.push(layer(&mut net, "unpool", "MaxUnpool", a(), &[mp2[0], mp2[1]]));
    }
    let rois = const_f32(&mut net, "rois", &[3, 4], vec![0.5, 1.0, 4.0, 5.5, 0.0, 0.0, 6.0, 6.0, 2.2, 3.1, 2.9, 3.3]);
    let batch = const_i64(&mut net, "roi_batch", vec![0, 0, 0]);
    let a = Attributes::new().with("output_height", 3i64).with("output_width", 2i64).with("spatial_scale", 0.9f32);
    outs.push(layer(&mut net, "roi_avg", "RoiAlign", a, &[Some(x), Some(rois), Some(batch)]));
    let a = Attributes::new().with("mode", "max").with("sampling_ratio", 2i64).with("output_height", 2i64);
    let a = a.with("coordinate_transformation_mode", "output_half_pixel");
    outs.push(layer(&mut net, "roi_max", "RoiAlign", a, &[Some(x), Some(rois), Some(batch)]));
    for o in outs {
        net.mark_output(o).unwrap();
    }
    net
}

#[test]
fn nd_pools_softmax_axes_and_normalizations_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let net = spatial_pools_and_norms(true);
    let inputs = [("x", vec![4, 6, 6]), ("v", vec![2, 4, 4, 5]), ("s", vec![3, 10]), ("past", vec![3, 3])];
    assert_all_on_gpu(gpu.clone(), &net, &inputs);
    let err = check(gpu.clone(), &net, &inputs, false, &[1, 3]);
    assert!(err < 1e-4, "fp32 relative error {err}");
    let err = check(gpu, &spatial_pools_and_norms(false), &inputs, true, &[2]);
    assert!(err < 2e-2, "fp16 relative error {err}");
}

/// Col2Im (pads, strides) and AffineGrid (2-D, 3-D), their shapes given as constants (batch 2).
fn shapes_from_constants() -> Network {
    let mut net = Network::new("col2im_affine");
    let cols = dyn_input(&mut net, "cols", &[8, 20]);
    let theta = dyn_input(&mut net, "theta", &[2, 3]);
    let theta3 = dyn_input(&mut net, "theta3", &[3, 4]);
    let image = const_i64(&mut net, "image", vec![5, 4]);
    let block = const_i64(&mut net, "block", vec![2, 2]);
    let a = Attributes::new().with("pads", vec![1i64, 0, 0, 1]);
    let c2i = layer(&mut net, "col2im", "Col2Im", a, &[Some(cols), Some(image), Some(block)]);
    let size = const_i64(&mut net, "size", vec![2, 1, 4, 5]);
    let ag =
        layer(&mut net, "ag", "AffineGrid", Attributes::new().with("align_corners", 1i64), &[Some(theta), Some(size)]);
    let size3 = const_i64(&mut net, "size3", vec![2, 1, 2, 3, 4]);
    let ag3 = layer(&mut net, "ag3", "AffineGrid", Attributes::new(), &[Some(theta3), Some(size3)]);
    for o in [c2i, ag, ag3] {
        net.mark_output(o).unwrap();
    }
    net
}

#[test]
fn col2im_and_affine_grid_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let net = shapes_from_constants();
    let inputs = [("cols", vec![8, 20]), ("theta", vec![2, 3]), ("theta3", vec![3, 4])];
    assert_all_on_gpu(gpu.clone(), &net, &inputs);
    let err = check(gpu, &net, &inputs, false, &[2]);
    assert!(err < 1e-5, "fp32 relative error {err}");
}

/// Asserts that the GPU engine for `net` (at batch `batch`) runs every layer of the given ops on
/// the GPU, so a comparison with the CPU checks the GPU kernels rather than the fallback.
fn assert_on_gpu(backend: Arc<CudaBackend>, net: &Network, inputs: &[(&str, Vec<usize>)], batch: usize, ops: &[&str]) {
    let mut config = BuilderConfig::default();
    for (name, dims) in inputs {
        let s = [vec![batch], dims.clone()].concat();
        config.profile.inputs.insert(name.to_string(), ShapeRange { min: s.clone(), opt: s.clone(), max: s });
    }
    let engine = Builder::new(backend).build(net, &config).expect("GPU build");
    let placements = engine.device_placements().expect("a device program");
    let mut seen = 0;
    for (el, p) in engine.graph().layers.iter().zip(&placements) {
        if ops.contains(&el.layer.op.as_str()) {
            assert_eq!(p, "gpu", "layer {} ({})", el.layer.name, el.layer.op);
            seen += 1;
        }
    }
    assert!(seen > 0, "no layer of {ops:?} in the engine");
}

/// Adds `op` with several named outputs ("" for an absent one) and marks them all as outputs.
fn multi_output(
    net: &mut Network,
    name: &str,
    op: &str,
    attrs: Attributes,
    inputs: &[Option<TensorId>],
    outs: &[&str],
) {
    for o in net.add_layer(name, op, attrs, inputs, outs).unwrap().into_iter().flatten() {
        net.mark_output(o).unwrap();
    }
}

/// Attention variants: 4-D grouped-query attention with a KV cache, causal rule, softcap, a
/// float mask and every optional output; 3-D grouped-query attention with a boolean mask, a
/// sliding window, an explicit scale and the probabilities as qk_matmul_output.
fn attention_variants() -> Network {
    let mut net = Network::new("attention_variants");
    let q = dyn_input(&mut net, "q", &[4, 5, 8]);
    let k = dyn_input(&mut net, "k", &[2, 6, 8]);
    let v = dyn_input(&mut net, "v", &[2, 6, 3]);
    let pk = dyn_input(&mut net, "past_k", &[2, 3, 8]);
    let pv = dyn_input(&mut net, "past_v", &[2, 3, 3]);
    let mask = constant(&mut net, "mask", &[5, 9], 11);
    let a = Attributes::new().with("is_causal", 1i64).with("softcap", 2.0f32).with("qk_matmul_output_mode", 1i64);
    let inputs = [Some(q), Some(k), Some(v), Some(mask), Some(pk), Some(pv)];
    multi_output(&mut net, "gqa_cache", "Attention", a, &inputs, &["y4", "present_k", "present_v", "qk4"]);

    let q3 = dyn_input(&mut net, "q3", &[5, 32]);
    let k3 = dyn_input(&mut net, "k3", &[7, 16]);
    let v3 = dyn_input(&mut net, "v3", &[7, 12]);
    let pattern: Vec<bool> = (0..4 * 5 * 7).map(|i| i % 3 != 1).collect();
    let bmask = net.add_constant("bmask", Tensor::from_vec(vec![4, 5, 7], pattern).unwrap()).unwrap();
    let a = Attributes::new()
        .with("q_num_heads", 4i64)
        .with("kv_num_heads", 2i64)
        .with("scale", 0.3f32)
        .with("left_window_size", 2i64)
        .with("right_window_size", 1i64)
        .with("qk_matmul_output_mode", 3i64);
    let inputs = [Some(q3), Some(k3), Some(v3), Some(bmask)];
    multi_output(&mut net, "packed_window", "Attention", a, &inputs, &["y3", "", "", "qk3"]);
    // FlexAttention without modifier subgraphs: plain grouped-query attention.
    let y =
        layer(&mut net, "flex", "FlexAttention", Attributes::new().with("scale", 0.5f32), &[Some(q), Some(k), Some(v)]);
    net.mark_output(y).unwrap();
    net
}

#[test]
fn attention_variants_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let inputs = [
        ("q", vec![4, 5, 8]),
        ("k", vec![2, 6, 8]),
        ("v", vec![2, 6, 3]),
        ("past_k", vec![2, 3, 8]),
        ("past_v", vec![2, 3, 3]),
        ("q3", vec![5, 32]),
        ("k3", vec![7, 16]),
        ("v3", vec![7, 12]),
    ];
    assert_on_gpu(gpu.clone(), &attention_variants(), &inputs, 2, &["Attention", "FlexAttention"]);
    let err = check(gpu.clone(), &attention_variants(), &inputs, false, &[1, 3]);
    assert!(err < 1e-4, "fp32 relative error {err}");
    let err = check(gpu, &attention_variants(), &inputs, true, &[2]);
    assert!(err < 2e-2, "fp16 relative error {err}");
}

/// At batch 2: attention with nonpad_kv_seqlen (one sequence padded) and a causal rule;
/// RotaryEmbedding on 4-D input with per-batch caches, and on 3-D input, interleaved, with
/// position ids and a partial rotary_embedding_dim.
fn padded_attention_and_rotary() -> Network {
    let mut net = Network::new("padded_rotary");
    let q = dyn_input(&mut net, "q", &[2, 3, 4]);
    let k = dyn_input(&mut net, "k", &[2, 6, 4]);
    let v = dyn_input(&mut net, "v", &[2, 6, 5]);
    let lens = net.add_constant("lens", Tensor::from_vec(vec![2], vec![4i64, 6]).unwrap()).unwrap();
    let inputs = [Some(q), Some(k), Some(v), None, None, None, Some(lens)];
    let a = Attributes::new().with("is_causal", 1i64);
    multi_output(&mut net, "nonpad", "Attention", a, &inputs, &["y_nonpad"]);

    let x = dyn_input(&mut net, "x", &[4, 6, 8]);
    let cos = dyn_input(&mut net, "cos", &[6, 4]);
    let sin = dyn_input(&mut net, "sin", &[6, 4]);
    let r = layer(&mut net, "rope4", "RotaryEmbedding", Attributes::new(), &[Some(x), Some(cos), Some(sin)]);
    net.mark_output(r).unwrap();

    let x3 = dyn_input(&mut net, "x3", &[6, 16]);
    let cos_cache = constant(&mut net, "cos_cache", &[10, 2], 12);
    let sin_cache = constant(&mut net, "sin_cache", &[10, 2], 13);
    let ids: Vec<i64> = (0..12).map(|i| (i * 7 % 10) as i64).collect();
    let pos = net.add_constant("pos", Tensor::from_vec(vec![2, 6], ids).unwrap()).unwrap();
    let a = Attributes::new().with("num_heads", 2i64).with("interleaved", 1i64).with("rotary_embedding_dim", 4i64);
    let r = layer(&mut net, "rope3", "RotaryEmbedding", a, &[Some(x3), Some(cos_cache), Some(sin_cache), Some(pos)]);
    net.mark_output(r).unwrap();
    net
}

#[test]
fn padded_attention_and_rotary_embeddings_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let inputs = [
        ("q", vec![2, 3, 4]),
        ("k", vec![2, 6, 4]),
        ("v", vec![2, 6, 5]),
        ("x", vec![4, 6, 8]),
        ("cos", vec![6, 4]),
        ("sin", vec![6, 4]),
        ("x3", vec![6, 16]),
    ];
    assert_on_gpu(gpu.clone(), &padded_attention_and_rotary(), &inputs, 2, &["Attention", "RotaryEmbedding"]);
    let err = check(gpu, &padded_attention_and_rotary(), &inputs, false, &[2]);
    assert!(err < 1e-4, "fp32 relative error {err}");
}

/// Einsum: a batched product, a diagonal under an ellipsis, an implicit output summing over
/// the batch; MatMul with broadcast batch dims and with a 1-D operand.
fn einsums() -> Network {
    let mut net = Network::new("einsums");
    let a = dyn_input(&mut net, "a", &[3, 4]);
    let b = dyn_input(&mut net, "b", &[4, 5]);
    let d = dyn_input(&mut net, "d", &[4, 4]);
    let c = dyn_input(&mut net, "c", &[4]);
    let eq = |e: &str| Attributes::new().with("equation", e.to_string());
    for (name, e, inputs) in [
        ("bmm", "bij, bjk -> bik", vec![Some(a), Some(b)]),
        ("diag", "...ii->...i", vec![Some(d)]),
        ("implicit", "bij,bj", vec![Some(a), Some(c)]),
    ] {
        let y = layer(&mut net, name, "Einsum", eq(e), &inputs);
        net.mark_output(y).unwrap();
    }
    let w = constant(&mut net, "w", &[2, 1, 4, 5], 21);
    let y = layer(&mut net, "mm_bcast", "MatMul", Attributes::new(), &[Some(a), Some(w)]);
    net.mark_output(y).unwrap();
    let col = constant(&mut net, "col", &[4], 22);
    let y = layer(&mut net, "mm_vec", "MatMul", Attributes::new(), &[Some(a), Some(col)]);
    net.mark_output(y).unwrap();
    let y = layer(&mut net, "vec_mm", "MatMul", Attributes::new(), &[Some(c), Some(b)]);
    net.mark_output(y).unwrap();
    net
}

#[test]
fn einsums_and_broadcast_matmuls_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let inputs = [("a", vec![3, 4]), ("b", vec![4, 5]), ("d", vec![4, 4]), ("c", vec![4])];
    assert_on_gpu(gpu.clone(), &einsums(), &inputs, 2, &["Einsum", "MatMul"]);
    let err = check(gpu, &einsums(), &inputs, false, &[1, 3]);
    assert!(err < 1e-4, "fp32 relative error {err}");
}

/// Quantized products on a quantized input: QLinearMatMul with per-column weight scales and
/// zero points of uint8, MatMulInteger of uint8 by int8 with per-column zero points, and the
/// quantized convolutions ConvInteger and QLinearConv.
fn quantized_products() -> Network {
    let mut net = Network::new("quantized");
    let x = dyn_input(&mut net, "x", &[3, 4]);
    let scalar = |net: &mut Network, name: &str, t: Tensor| net.add_constant(name, t).unwrap();
    let x_scale = scalar(&mut net, "x_scale", Tensor::scalar(0.02f32));
    let x_zp = scalar(&mut net, "x_zp", Tensor::scalar(128u8));
    let xq = layer(&mut net, "quantize", "QuantizeLinear", Attributes::new(), &[Some(x), Some(x_scale), Some(x_zp)]);
    let w: Vec<u8> = (0..20).map(|i| (i * 37 % 256) as u8).collect();
    let w = scalar(&mut net, "w", Tensor::from_vec(vec![4, 5], w).unwrap());
    let w_scale =
        scalar(&mut net, "w_scale", Tensor::from_vec(vec![5], vec![0.01f32, 0.02, 0.015, 0.03, 0.005]).unwrap());
    let w_zp = scalar(&mut net, "w_zp", Tensor::scalar(120u8));
    let y_scale = scalar(&mut net, "y_scale", Tensor::scalar(0.05f32));
    let y_zp = scalar(&mut net, "y_zp", Tensor::scalar(100u8));
    let inputs = [Some(xq), Some(x_scale), Some(x_zp), Some(w), Some(w_scale), Some(w_zp), Some(y_scale), Some(y_zp)];
    let y = layer(&mut net, "qlinear", "QLinearMatMul", Attributes::new(), &inputs);
    net.mark_output(y).unwrap();
    let wi: Vec<i8> = (0..20).map(|i| (i * 29 % 256) as u8 as i8).collect();
    let wi = scalar(&mut net, "wi", Tensor::from_vec(vec![4, 5], wi).unwrap());
    let wi_zp = scalar(&mut net, "wi_zp", Tensor::from_vec(vec![5], vec![1i8, -2, 3, 0, -5]).unwrap());
    let y =
        layer(&mut net, "mm_int", "MatMulInteger", Attributes::new(), &[Some(xq), Some(wi), Some(x_zp), Some(wi_zp)]);
    net.mark_output(y).unwrap();
    // xq as a 1-D signal [N, C = 3, L = 4]: ConvInteger with padding, QLinearConv with a stride,
    // per-channel weight scales and an int32 bias.
    let wc: Vec<u8> = (0..12).map(|i| (i * 53 % 256) as u8).collect();
    let wc = scalar(&mut net, "wc", Tensor::from_vec(vec![2, 3, 2], wc).unwrap());
    let wc_zp = scalar(&mut net, "wc_zp", Tensor::from_vec(vec![2], vec![100u8, 140]).unwrap());
    let a = Attributes::new().with("pads", vec![1i64, 1]);
    let y = layer(&mut net, "conv_int", "ConvInteger", a, &[Some(xq), Some(wc), Some(x_zp), Some(wc_zp)]);
    net.mark_output(y).unwrap();
    let wc_scale = scalar(&mut net, "wc_scale", Tensor::from_vec(vec![2], vec![0.01f32, 0.03]).unwrap());
    let bias = scalar(&mut net, "bias", Tensor::from_vec(vec![2], vec![500i32, -700]).unwrap());
    let a = Attributes::new().with("strides", vec![2i64]).with("pads", vec![1i64, 0]);
    let inputs = [
        Some(xq),
        Some(x_scale),
        Some(x_zp),
        Some(wc),
        Some(wc_scale),
        Some(wc_zp),
        Some(y_scale),
        Some(y_zp),
        Some(bias),
    ];
    let y = layer(&mut net, "qconv", "QLinearConv", a, &inputs);
    net.mark_output(y).unwrap();
    net
}

#[test]
fn quantized_products_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let inputs = [("x", vec![3, 4])];
    assert_on_gpu(
        gpu.clone(),
        &quantized_products(),
        &inputs,
        2,
        &["QLinearMatMul", "MatMulInteger", "ConvInteger", "QLinearConv"],
    );
    // Exact integer sums; the requantized output may differ by one step where the CPU's and
    // the GPU's quantized input round a tie differently.
    let err = check(gpu, &quantized_products(), &inputs, false, &[1, 3]);
    assert!(err < 1e-2, "relative error {err}");
}

/// LinearAttention: gated delta rule, grouped heads, a past state, decay per key dim, beta per
/// head, the present state.
fn linear_attention() -> Network {
    let mut net = Network::new("linear_attention");
    let q = dyn_input(&mut net, "q", &[5, 4 * 3]);
    let k = dyn_input(&mut net, "k", &[5, 2 * 3]);
    let v = dyn_input(&mut net, "v", &[5, 2 * 4]);
    let past = dyn_input(&mut net, "past", &[2, 3, 4]);
    let decay = dyn_input(&mut net, "decay", &[5, 2 * 3]);
    let beta = dyn_input(&mut net, "beta", &[5, 2]);
    let a = Attributes::new().with("q_num_heads", 4i64).with("kv_num_heads", 2i64);
    let inputs = [Some(q), Some(k), Some(v), Some(past), Some(decay), Some(beta)];
    multi_output(&mut net, "linear_attention", "LinearAttention", a, &inputs, &["la_y", "la_state"]);
    net
}

#[test]
fn linear_attention_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let inputs = [
        ("q", vec![5, 12]),
        ("k", vec![5, 6]),
        ("v", vec![5, 8]),
        ("past", vec![2, 3, 4]),
        ("decay", vec![5, 6]),
        ("beta", vec![5, 2]),
    ];
    assert_on_gpu(gpu.clone(), &linear_attention(), &inputs, 2, &["LinearAttention"]);
    let err = check(gpu, &linear_attention(), &inputs, false, &[1, 3]);
    assert!(err < 1e-4, "fp32 relative error {err}");
}

/// LSTM (bidirectional, biases, sequence lengths, initial states, peepholes), GRU (reverse;
/// and linear_before_reset with clip), RNN (layout 1, LeakyRelu), all outputs. X is
/// [seq, 2, 3]; the symbolic first dim is the sequence (the batch for the layout-1 RNN).
fn recurrent_layers() -> Network {
    let mut net = Network::new("recurrent_layers");
    let x = dyn_input(&mut net, "xs", &[2, 3]);
    let c = |net: &mut Network, name: &str, shape: &[usize], seed: u64| constant(net, name, shape, seed);
    let (w, r, b) =
        (c(&mut net, "lw", &[2, 20, 3], 41), c(&mut net, "lr", &[2, 20, 5], 42), c(&mut net, "lb", &[2, 40], 43));
    let lens = net.add_constant("lens", Tensor::from_vec(vec![2], vec![3i32, 4]).unwrap()).unwrap();
    let (h0, c0, p) =
        (c(&mut net, "h0", &[2, 2, 5], 44), c(&mut net, "c0", &[2, 2, 5], 45), c(&mut net, "p", &[2, 15], 46));
    let a = Attributes::new().with("direction", "bidirectional".to_string()).with("hidden_size", 5i64);
    let inputs = [Some(x), Some(w), Some(r), Some(b), Some(lens), Some(h0), Some(c0), Some(p)];
    multi_output(&mut net, "lstm", "LSTM", a, &inputs, &["lstm_y", "lstm_h", "lstm_c"]);

    let (w, r, b) =
        (c(&mut net, "gw", &[1, 15, 3], 47), c(&mut net, "gr", &[1, 15, 5], 48), c(&mut net, "gb", &[1, 30], 49));
    let a = Attributes::new().with("direction", "reverse".to_string());
    multi_output(&mut net, "gru", "GRU", a, &[Some(x), Some(w), Some(r), Some(b)], &["gru_y", "gru_h"]);
    let a = Attributes::new().with("linear_before_reset", 1i64).with("clip", 0.5f32);
    multi_output(&mut net, "gru_lbr", "GRU", a, &[Some(x), Some(w), Some(r), Some(b)], &["", "gru_lbr_h"]);

    let (w, r) = (c(&mut net, "rw", &[1, 5, 3], 50), c(&mut net, "rr", &[1, 5, 5], 51));
    let a = Attributes::new()
        .with("layout", 1i64)
        .with("activations", kiln_ir::Attribute::Strings(vec!["LeakyRelu".to_string()]))
        .with("activation_alpha", vec![0.1f32]);
    multi_output(&mut net, "rnn", "RNN", a, &[Some(x), Some(w), Some(r)], &["rnn_y", "rnn_h"]);
    net
}

#[test]
fn recurrent_layers_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let inputs = [("xs", vec![2, 3])];
    assert_on_gpu(gpu.clone(), &recurrent_layers(), &inputs, 4, &["LSTM", "GRU", "RNN"]);
    let err = check(gpu, &recurrent_layers(), &inputs, false, &[4]);
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
    // With fp16 storage the f32 tensors are fp16 on the device, so a Cast to bf16 rounds twice
    // (f32 → fp16 → bf16) and may land one bf16 unit (2^-8) away from the CPU's single rounding;
    // Mod of such a dividend moves by that unit, 2.5e-2 of its result here (measured on the H100).
    let err = check(gpu, &float_functions(), &[("x", vec![5, 7])], true, &[2]);
    assert!(err < 4e-2, "fp16 storage: relative error {err}");
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
