//! The pruning stage end to end (issue 6): a model without structured zeros builds to exactly
//! the same engine with pruning on or off; a model with zeroed channels builds to a smaller
//! engine whose outputs match the zeroed model run unoptimized.

use kiln_engine::{Builder, BuilderConfig, Engine, ShapeRange};
use kiln_ir::{Attributes, DType, Network, Tensor, TensorId, Value, ValueType};
use std::collections::HashMap;
use std::sync::Arc;

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Never exactly zero: a dense model must have no structured zeros by accident.
            ((s % 2000) as f32 + 0.5) / 1000.0 - 1.0
        })
        .collect();
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

/// stem conv → BN → relu → [1x1 conv → BN → relu → 3x3 conv (pad 1) → BN] + residual → relu →
/// pool → flatten → Gemm. `zeroed`: channels of the 1x1 conv whose filter and BN scale/shift are
/// zero (what gen_models.py --pruned writes).
fn cnn(zeroed: &[usize]) -> Network {
    let mut net = Network::new("cnn");
    let x = net.add_input("image", ValueType::tensor(DType::F32, kiln_ir::known_shape(&[1, 3, 10, 10]))).unwrap();
    let mut seed = 1;
    let mut conv_bn =
        |net: &mut Network, name: &str, x: TensorId, cin: usize, cout: usize, k: usize, zero: &[usize]| {
            seed += 10;
            let mut w = random(&[cout, cin, k, k], seed);
            let per = cin * k * k;
            let mut bn: Vec<Tensor> = (0..4).map(|i| random(&[cout], seed + 1 + i)).collect();
            bn[3] = Tensor::from_vec(vec![cout], (0..cout).map(|c| 0.5 + c as f32 / cout as f32).collect()).unwrap();
            for &c in zero {
                w.as_mut_slice::<f32>().unwrap()[c * per..(c + 1) * per].iter_mut().for_each(|v| *v = 0.0);
                bn[0].as_mut_slice::<f32>().unwrap()[c] = 0.0;
                bn[1].as_mut_slice::<f32>().unwrap()[c] = 0.0;
            }
            let w = net.add_constant(&format!("{name}.w"), w).unwrap();
            let attrs = Attributes::new().with("pads", vec![(k / 2) as i64; 4]);
            let y = net.add_layer(name, "Conv", attrs, &[Some(x), Some(w)], &[&format!("{name}_out")]).unwrap()[0];
            let mut ins = vec![y];
            for (i, t) in bn.into_iter().enumerate() {
                ins.push(Some(net.add_constant(&format!("{name}.bn{i}"), t).unwrap()));
            }
            let bn_name = format!("{name}_bn");
            net.add_layer(&bn_name, "BatchNormalization", Attributes::new(), &ins, &[&format!("{bn_name}_out")])
                .unwrap()[0]
                .unwrap()
        };
    let relu = |net: &mut Network, name: &str, x: TensorId| {
        net.add_layer(name, "Relu", Attributes::new(), &[Some(x)], &[&format!("{name}_out")]).unwrap()[0].unwrap()
    };
    let s = conv_bn(&mut net, "stem", x, 3, 8, 3, &[]);
    let s = relu(&mut net, "stem_relu", s);
    let y = conv_bn(&mut net, "reduce", s, 8, 6, 1, zeroed);
    let y = relu(&mut net, "reduce_relu", y);
    let y = conv_bn(&mut net, "spatial", y, 6, 8, 3, &[]);
    let y = net.add_layer("res", "Add", Attributes::new(), &[Some(y), Some(s)], &["res_out"]).unwrap()[0].unwrap();
    let y = relu(&mut net, "res_relu", y);
    let p = net.add_layer("pool", "GlobalAveragePool", Attributes::new(), &[Some(y)], &["pooled"]).unwrap()[0];
    let f = net.add_layer("flatten", "Flatten", Attributes::new(), &[p], &["features"]).unwrap()[0];
    let fw = net.add_constant("fc.w", random(&[5, 8], 99)).unwrap();
    let out = net.add_layer("fc", "Gemm", Attributes::new().with("transB", 1i64), &[f, Some(fw)], &["logits"]).unwrap()
        [0]
    .unwrap();
    net.mark_output(out).unwrap();
    net
}

/// Opt level 1: default tactics, so two builds can only differ by their graphs.
fn build(net: &Network, prune: bool) -> Arc<Engine> {
    let mut config = BuilderConfig { opt_level: 1, prune, ..BuilderConfig::default() };
    config.profile.inputs.insert("image".into(), ShapeRange::fixed(vec![1, 3, 10, 10]));
    Arc::new(Builder::cpu().build(net, &config).unwrap())
}

fn run(engine: &Arc<Engine>, image: &Tensor) -> Vec<f32> {
    let mut ctx = engine.create_context();
    ctx.set_input("image", &Value::Tensor(image.clone())).unwrap();
    ctx.execute().unwrap();
    ctx.output("logits").unwrap().into_tensor().unwrap().as_slice::<f32>().unwrap().to_vec()
}

#[test]
fn without_structured_zeros_pruning_changes_nothing() {
    let net = cnn(&[]);
    let (on, off) = (build(&net, true), build(&net, false));
    let json = |e: &Engine| {
        let g = e.graph();
        serde_json::to_string(&(&g.layers, &g.tensors, &g.weights, g.arena_bytes)).unwrap()
    };
    assert_eq!(json(&on), json(&off), "same layers, tensors, weights and memory plan");
    assert!(on.graph().build.pruned.is_none());
    let image = random(&[1, 3, 10, 10], 5);
    assert_eq!(run(&on, &image), run(&off, &image), "bit-identical outputs");
}

#[test]
fn zeroed_channels_leave_the_engine_and_outputs_match_the_zeroed_model() {
    let net = cnn(&[0, 3, 4]);
    let pruned = build(&net, true);
    let dense = build(&net, false);
    let report = pruned.graph().build.pruned.clone().expect("pruned");
    assert!(report.changes.iter().any(|c| c.layer == "reduce" && c.what == "output channels" && c.after == 3));
    assert!(report.changes.iter().any(|c| c.layer == "spatial" && c.what == "input channels" && c.after == 3));
    let (p, d) = (pruned.graph().build.cost, dense.graph().build.cost);
    assert!(p.flops < d.flops && p.params < d.params, "{p:?} vs {d:?}");
    for seed in [1, 2, 3] {
        let image = random(&[1, 3, 10, 10], seed);
        let inputs: HashMap<String, Value> = [("image".to_string(), Value::Tensor(image.clone()))].into();
        let want = kiln_cpu::execute_named(&net, inputs).unwrap().remove(0).into_tensor().unwrap().to_f64_vec();
        let got = run(&pruned, &image);
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() <= 1e-5 * scale, "{g} vs {w}");
        }
    }
}
