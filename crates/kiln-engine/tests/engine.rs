//! Engine build and execution against the reference executor (kiln-cpu on the unoptimized
//! network), on fresh random inputs.

use kiln_engine::{Builder, BuilderConfig, EngineError, ShapeRange};
use kiln_ir::{Attributes, DType, Dim, Network, Tensor, Value, ValueType};
use std::collections::HashMap;
use std::sync::Arc;

fn weights(shape: &[usize], seed: u32) -> Tensor {
    let n: usize = shape.iter().product();
    let v = (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0 - 0.5).collect();
    Tensor::from_vec(shape.to_vec(), v).unwrap()
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

/// conv → BN → relu → conv (+ residual) → relu → pool → flatten → gemm, with a dynamic batch.
fn small_cnn() -> Network {
    let mut net = Network::new("small_cnn");
    let x = net
        .add_input(
            "image",
            ValueType::tensor(DType::F32, vec![Dim::Symbol("batch".into()), 4.into(), 8.into(), 8.into()]),
        )
        .unwrap();
    let conv = |net: &mut Network, name: &str, x, seed| {
        let w = net.add_constant(&format!("{name}.w"), weights(&[4, 4, 3, 3], seed)).unwrap();
        let b = net.add_constant(&format!("{name}.b"), weights(&[4], seed + 1)).unwrap();
        let attrs = Attributes::new().with("kernel_shape", vec![3i64, 3]).with("pads", vec![1i64, 1, 1, 1]);
        net.add_layer(name, "Conv", attrs, &[Some(x), Some(w), Some(b)], &[&format!("{name}_out")]).unwrap()[0].unwrap()
    };
    let c1 = conv(&mut net, "conv1", x, 1);
    let bn: Vec<_> = (0..4)
        .map(|k| {
            net.add_constant(
                &format!("bn.{k}"),
                if k == 3 {
                    Tensor::from_vec(vec![4], vec![1.0, 0.5, 2.0, 1.5]).unwrap()
                } else {
                    weights(&[4], 10 + k as u32)
                },
            )
            .unwrap()
        })
        .collect();
    let y = net
        .add_layer(
            "bn",
            "BatchNormalization",
            Attributes::new(),
            &[Some(c1), Some(bn[0]), Some(bn[1]), Some(bn[2]), Some(bn[3])],
            &["bn_out"],
        )
        .unwrap()[0];
    let y = net.add_layer("relu1", "Relu", Attributes::new(), &[y], &["relu1_out"]).unwrap()[0].unwrap();
    let c2 = conv(&mut net, "conv2", y, 20);
    let s = net.add_layer("res", "Add", Attributes::new(), &[Some(c2), Some(y)], &["res_out"]).unwrap()[0];
    let s = net.add_layer("relu2", "Relu", Attributes::new(), &[s], &["relu2_out"]).unwrap()[0];
    let p = net.add_layer("pool", "GlobalAveragePool", Attributes::new(), &[s], &["pooled"]).unwrap()[0];
    let f = net.add_layer("flatten", "Flatten", Attributes::new(), &[p], &["features"]).unwrap()[0];
    let fw = net.add_constant("fc.w", weights(&[3, 4], 30)).unwrap();
    let logits =
        net.add_layer("fc", "Gemm", Attributes::new().with("transB", 1i64), &[f, Some(fw)], &["logits"]).unwrap()[0]
            .unwrap();
    net.mark_output(logits).unwrap();
    net
}

fn config(batch: (usize, usize, usize)) -> BuilderConfig {
    let mut c = BuilderConfig::default();
    c.profile.inputs.insert(
        "image".into(),
        ShapeRange { min: vec![batch.0, 4, 8, 8], opt: vec![batch.1, 4, 8, 8], max: vec![batch.2, 4, 8, 8] },
    );
    c
}

fn reference(net: &Network, image: &Tensor) -> Tensor {
    let inputs: HashMap<String, Value> = [("image".to_string(), Value::Tensor(image.clone()))].into();
    kiln_cpu::execute_named(net, inputs).unwrap().remove(0).into_tensor().unwrap()
}

fn max_rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-12);
    a.iter().zip(&b).map(|(x, y)| (x - y).abs() / scale).fold(0.0, f64::max)
}

#[test]
fn engine_matches_the_reference_at_every_batch_of_the_profile() {
    let net = small_cnn();
    for level in [0u8, 1, 2] {
        let mut cfg = config((1, 2, 4));
        cfg.opt_level = level;
        let engine = Arc::new(Builder::cpu().build(&net, &cfg).unwrap());
        let mut ctx = engine.create_context();
        for batch in [1, 3, 4] {
            let image = random(&[batch, 4, 8, 8], batch as u64 + 7 * level as u64);
            ctx.set_input("image", &Value::Tensor(image.clone())).unwrap();
            ctx.execute().unwrap();
            let out = ctx.output("logits").unwrap().into_tensor().unwrap();
            let err = max_rel_err(&out, &reference(&net, &image));
            assert!(err < 1e-5, "opt level {level}, batch {batch}: relative error {err}");
        }
        let g = engine.graph();
        assert!(
            g.arena_bytes as f64 <= 1.2 * g.peak_live_bytes as f64,
            "arena {} peak {}",
            g.arena_bytes,
            g.peak_live_bytes
        );
        if level > 0 {
            assert!(g.layers.len() < net.layers().len(), "optimized: {} layers", g.layers.len());
        }
    }
}

#[test]
fn shapes_outside_the_profile_and_bad_bindings_are_refused() {
    let engine = Arc::new(Builder::cpu().build(&small_cnn(), &config((1, 2, 4))).unwrap());
    let mut ctx = engine.create_context();
    let e = ctx.set_input("image", &Value::Tensor(random(&[5, 4, 8, 8], 1))).unwrap_err();
    assert!(matches!(e, EngineError::Input { .. }) && e.to_string().contains("outside the engine's profile"), "{e}");
    let e = ctx.set_input_shape("image", &[2, 4, 8, 9]).unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");
    let e = ctx.set_input("nope", &Value::Tensor(random(&[1, 4, 8, 8], 1))).unwrap_err();
    assert!(e.to_string().contains("no such input"), "{e}");
    let e = ctx.execute().unwrap_err();
    assert!(e.to_string().contains("not bound"), "{e}");
    let ints = Tensor::from_vec(vec![1, 4, 8, 8], vec![0i64; 256]).unwrap();
    let e = ctx.set_input("image", &Value::Tensor(ints)).unwrap_err();
    assert!(e.to_string().contains("dtype"), "{e}");
}

#[test]
fn a_dynamic_input_without_a_profile_is_an_error_naming_it() {
    let e = Builder::cpu().build(&small_cnn(), &BuilderConfig::default()).unwrap_err();
    assert!(e.to_string().contains("image") && e.to_string().contains("batch"), "{e}");
}

#[test]
fn contexts_run_one_engine_concurrently() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<kiln_engine::Engine>();
    let net = small_cnn();
    let engine = Arc::new(Builder::cpu().build(&net, &config((1, 2, 4))).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let mut ctx = engine.create_context();
                let mut outs = Vec::new();
                for i in 0..5 {
                    let image = random(&[1 + (t + i) % 4, 4, 8, 8], (t * 100 + i) as u64);
                    ctx.set_input("image", &Value::Tensor(image.clone())).unwrap();
                    ctx.execute().unwrap();
                    outs.push((image, ctx.output("logits").unwrap().into_tensor().unwrap()));
                }
                outs
            })
        })
        .collect();
    for h in handles {
        for (image, out) in h.join().unwrap() {
            assert!(max_rel_err(&out, &reference(&net, &image)) < 1e-5);
        }
    }
}

#[test]
fn a_saved_and_loaded_plan_gives_bit_identical_outputs() {
    let net = small_cnn();
    let engine = Arc::new(Builder::cpu().build(&net, &config((1, 2, 4))).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.plan");
    engine.save(&path).unwrap();
    let backend: Arc<dyn kiln_engine::Backend> = Arc::new(kiln_engine::cpu::CpuBackend);
    let loaded = Arc::new(kiln_engine::Engine::load(&path, backend.clone()).unwrap());
    assert_eq!(loaded.graph().layers.len(), engine.graph().layers.len());
    let (mut a, mut b) = (engine.create_context(), loaded.create_context());
    for batch in [1, 4] {
        let image = Value::Tensor(random(&[batch, 4, 8, 8], 99 + batch as u64));
        a.set_input("image", &image).unwrap();
        b.set_input("image", &image).unwrap();
        a.execute().unwrap();
        b.execute().unwrap();
        assert_eq!(a.outputs().unwrap(), b.outputs().unwrap(), "batch {batch}");
    }
    // A damaged plan is refused with an error naming the file. Where the middle byte falls
    // (weights, metadata or alignment padding) depends on the tactics the build timed, so
    // either check may catch it: a checksum mismatch or nonzero padding.
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let e = kiln_engine::Engine::load(&path, backend.clone()).unwrap_err().to_string();
    assert!(e.contains("small.plan") && e.contains("corrupt"), "{e}");
    std::fs::write(&path, &bytes[..100]).unwrap();
    let e = kiln_engine::Engine::load(&path, backend).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
}

/// Two convolutions concatenated along channels (batch 1, static): the concat is elided and
/// each convolution writes straight into its slice of the output.
#[test]
fn concat_inputs_are_written_in_place() {
    let mut net = Network::new("concat");
    let x = net.add_input("x", ValueType::tensor(DType::F32, kiln_ir::known_shape(&[1, 3, 6, 6]))).unwrap();
    let mut branches = Vec::new();
    for (i, cout) in [4usize, 2].into_iter().enumerate() {
        let w = net.add_constant(&format!("w{i}"), weights(&[cout, 3, 3, 3], i as u32 + 1)).unwrap();
        let attrs = Attributes::new().with("pads", vec![1i64, 1, 1, 1]);
        let y = net.add_layer(&format!("conv{i}"), "Conv", attrs, &[Some(x), Some(w)], &[&format!("c{i}")]).unwrap()[0];
        let y = net.add_layer(&format!("relu{i}"), "Relu", Attributes::new(), &[y], &[&format!("r{i}")]).unwrap()[0];
        branches.push(y);
    }
    let cat = net.add_layer("cat", "Concat", Attributes::new().with("axis", 1i64), &branches, &["cat_out"]).unwrap()[0];
    let out = net.add_layer("sig", "Sigmoid", Attributes::new(), &[cat], &["y"]).unwrap()[0].unwrap();
    net.mark_output(out).unwrap();
    let engine = Arc::new(Builder::cpu().build(&net, &BuilderConfig::default()).unwrap());
    let concat = engine.graph().layers.iter().find(|l| l.layer.op == "Concat").unwrap();
    assert_eq!(concat.elided, Some(kiln_engine::Elision::Concat));
    let image = random(&[1, 3, 6, 6], 5);
    let mut ctx = engine.create_context();
    ctx.set_input("x", &Value::Tensor(image.clone())).unwrap();
    ctx.execute().unwrap();
    let got = ctx.output("y").unwrap().into_tensor().unwrap();
    let want = kiln_cpu::execute_named(&net, [("x".to_string(), Value::Tensor(image))].into()).unwrap();
    assert!(max_rel_err(&got, want[0].as_tensor().unwrap()) < 1e-6);
}

#[test]
fn a_rebuild_with_the_timing_cache_picks_the_same_tactics() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config((1, 2, 4));
    cfg.timing_cache = Some(dir.path().join("timing.json"));
    let first = Builder::cpu().build(&small_cnn(), &cfg).unwrap();
    let cache = kiln_engine::TimingCache::load(cfg.timing_cache.as_ref().unwrap()).unwrap();
    assert!(!cache.is_empty(), "the conv layers have several tactics, so timings were cached");
    let second = Builder::cpu().build(&small_cnn(), &cfg).unwrap();
    let tactics = |e: &kiln_engine::Engine| e.graph().layers.iter().map(|l| l.tactic.clone()).collect::<Vec<_>>();
    assert_eq!(tactics(&first), tactics(&second));
    std::fs::write(cfg.timing_cache.as_ref().unwrap(), "{ broken").unwrap();
    let e = Builder::cpu().build(&small_cnn(), &cfg).unwrap_err().to_string();
    assert!(e.contains("timing.json"), "{e}");
}

#[test]
fn tactics_needing_more_workspace_than_the_limit_are_skipped() {
    let mut cfg = config((1, 2, 4));
    cfg.workspace_bytes = 0;
    let engine = Builder::cpu().build(&small_cnn(), &cfg).unwrap();
    for l in &engine.graph().layers {
        assert_ne!(l.tactic, "conv-im2col-gemm", "{} needs scratch memory", l.layer.name);
    }
    // Still correct with the fallback tactics.
    let engine = Arc::new(engine);
    let mut ctx = engine.create_context();
    let image = random(&[2, 4, 8, 8], 3);
    ctx.set_input("image", &Value::Tensor(image.clone())).unwrap();
    ctx.execute().unwrap();
    let out = ctx.output("logits").unwrap().into_tensor().unwrap();
    assert!(max_rel_err(&out, &reference(&small_cnn(), &image)) < 1e-5);
}

#[test]
fn the_profiler_hears_every_layer() {
    struct Count(Arc<std::sync::Mutex<Vec<String>>>);
    impl kiln_engine::Profiler for Count {
        fn layer_done(&mut self, layer: &str, _op: &str, _start: std::time::Instant, _elapsed: std::time::Duration) {
            self.0.lock().unwrap().push(layer.to_string());
        }
    }
    let engine = Arc::new(Builder::cpu().build(&small_cnn(), &config((1, 1, 1))).unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut ctx = engine.create_context();
    ctx.set_profiler(Some(Box::new(Count(seen.clone()))));
    ctx.set_input("image", &Value::Tensor(random(&[1, 4, 8, 8], 1))).unwrap();
    ctx.execute().unwrap();
    ctx.execute().unwrap(); // inputs stay bound across runs
    let names: Vec<String> = engine.graph().layers.iter().map(|l| l.layer.name.clone()).collect();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2 * names.len());
    assert_eq!(&seen[..names.len()], names.as_slice());
}
