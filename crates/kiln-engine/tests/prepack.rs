//! Weights pre-packed at build time: a backend's `pack_weights` form of a layer's weight is
//! stored in the engine and the plan in place of the ONNX layout, for the one layer that reads
//! it, and its kernel reads it as is. The test backend "packs" a MatMul weight by reversing its
//! f32 elements; its kernel un-reverses them when the weight arrives packed and packs for itself
//! when it does not.

use kiln_engine::cpu::CpuBackend;
use kiln_engine::plan::{encode, write_plan, LoadedPlan, PlanError, PlanExpectation, DEFAULT_METADATA_LIMIT};
use kiln_engine::{
    Arg, Backend, Builder, BuilderConfig, Engine, EngineError, EngineGraph, LayerDesc, LayerIo, LayerKernel, Tactic,
};
use kiln_ir::{Attribute, Attributes, DType, Network, Tensor, Value, ValueType};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

const TACTIC: &str = "test-reversed";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `pack_weights` returns nothing: every kernel packs for itself.
    Off,
    /// A MatMul's weight (input 1) reversed.
    Reverse,
    /// `pack_weights` fails.
    Fail,
    /// `pack_weights` names input 0, which is not a weight.
    NotAWeight,
}

/// The CPU backend, except that a MatMul with a constant 2-D f32 weight runs [`ReversedMatMul`].
struct PackBackend(Mode);

fn reversed_le(bytes: &[u8]) -> Vec<u8> {
    bytes.chunks_exact(4).rev().flatten().copied().collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Whether the optimizer fused a ReLU into the layer (the only activation the kernel applies).
fn relu(desc: &LayerDesc) -> Result<bool, String> {
    match desc.layer.attrs.get("kiln_activation") {
        None => Ok(false),
        Some(Attribute::String(s)) if s == "Relu" => Ok(true),
        Some(other) => Err(format!("activation {other:?}")),
    }
}

fn applies(desc: &LayerDesc) -> bool {
    desc.layer.op == "MatMul"
        && relu(desc).is_ok()
        && matches!(desc.weights.get(1), Some(Some(w)) if w.dtype == DType::F32 && w.shape.len() == 2)
}

impl Backend for PackBackend {
    fn name(&self) -> &'static str {
        "test-pack"
    }

    fn device(&self) -> String {
        CpuBackend.device()
    }

    fn tactics(&self, desc: &LayerDesc) -> Vec<Tactic> {
        if applies(desc) {
            vec![Tactic::new(TACTIC)]
        } else {
            CpuBackend.tactics(desc)
        }
    }

    fn instantiate(&self, desc: &LayerDesc, tactic: &str) -> Result<Arc<dyn LayerKernel>, String> {
        if tactic == TACTIC {
            Ok(Arc::new(ReversedMatMul::new(desc)?))
        } else {
            CpuBackend.instantiate(desc, tactic)
        }
    }

    fn pack_weights(&self, desc: &LayerDesc, tactic: &str) -> Result<Vec<(usize, Vec<u8>)>, String> {
        if tactic != TACTIC {
            return Ok(Vec::new());
        }
        let w = desc.weights[1].expect("the tactic applies to constant weights only");
        assert!(!w.packed, "pack_weights sees the ONNX layout");
        match self.0 {
            Mode::Off => Ok(Vec::new()),
            Mode::Reverse => Ok(vec![(1, reversed_le(w.bytes))]),
            Mode::Fail => Err("no room for the panels".into()),
            Mode::NotAWeight => Ok(vec![(0, Vec::new())]),
        }
    }
}

/// `A[m, k] · W[k, n]` with W held reversed: read from the packed weight at run time, or packed
/// here from the ONNX layout.
struct ReversedMatMul {
    relu: bool,
    k: usize,
    n: usize,
    /// `None`: the weight arrives packed (as `Arg::PackedWeight`) at run time.
    own: Option<Vec<f32>>,
}

impl ReversedMatMul {
    fn new(desc: &LayerDesc) -> Result<Self, String> {
        let w = desc.weights[1].ok_or("needs a constant weight")?;
        let (k, n) = (w.shape[0], w.shape[1]);
        let relu = relu(desc)?;
        if w.packed {
            // A plan is untrusted: packed bytes of the wrong size are refused, not read past.
            if w.bytes.len() != k * n * 4 {
                return Err(format!("packed weight of {} bytes, expected {}", w.bytes.len(), k * n * 4));
            }
            Ok(ReversedMatMul { relu, k, n, own: None })
        } else {
            Ok(ReversedMatMul { relu, k, n, own: Some(f32s(&reversed_le(w.bytes))) })
        }
    }
}

impl LayerKernel for ReversedMatMul {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let reversed = match (&self.own, &io.inputs[1]) {
            (Some(own), _) => own.clone(),
            (None, Some(Arg::PackedWeight { bytes, .. })) => f32s(bytes),
            (None, _) => return Err("the weight was packed at build time but arrived unpacked".into()),
        };
        let w: Vec<f32> = reversed.into_iter().rev().collect();
        let a = io.inputs[0].as_ref().ok_or("no input")?.value()?;
        let a = a.as_tensor().ok_or("not a tensor")?;
        let m = a.shape()[0];
        assert_eq!(a.shape()[1], self.k);
        let a = a.as_slice::<f32>().map_err(|e| e.to_string())?;
        let mut out = vec![0f32; m * self.n];
        for i in 0..m {
            for j in 0..self.n {
                let v: f32 = (0..self.k).map(|p| a[i * self.k + p] * w[p * self.n + j]).sum();
                out[i * self.n + j] = if self.relu { v.max(0.0) } else { v };
            }
        }
        let t = Tensor::from_vec(vec![m, self.n], out).map_err(|e| e.to_string())?;
        io.set_output_value(0, Value::Tensor(t));
        Ok(())
    }
}

fn values(shape: &[usize], seed: u32) -> Tensor {
    let n: usize = shape.iter().product();
    let v = (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 250.0 - 2.0).collect();
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

fn matmul(net: &mut Network, name: &str, a: kiln_ir::TensorId, w: kiln_ir::TensorId) -> kiln_ir::TensorId {
    net.add_layer(name, "MatMul", Attributes::new(), &[Some(a), Some(w)], &[&format!("{name}_out")]).unwrap()[0]
        .unwrap()
}

/// x[2, 3] · w1[3, 4] → relu → · w2[4, 5] → y. `shared`: a third MatMul `· ws[5, 5]` twice.
fn network(shared: bool) -> Network {
    let mut net = Network::new("prepack");
    let x = net.add_input("x", ValueType::tensor(DType::F32, kiln_ir::known_shape(&[2, 3]))).unwrap();
    let w1 = net.add_constant("w1", values(&[3, 4], 1)).unwrap();
    let w2 = net.add_constant("w2", values(&[4, 5], 2)).unwrap();
    let h = matmul(&mut net, "mm1", x, w1);
    let h = net.add_layer("relu", "Relu", Attributes::new(), &[Some(h)], &["relu_out"]).unwrap()[0].unwrap();
    let mut y = matmul(&mut net, "mm2", h, w2);
    if shared {
        let ws = net.add_constant("ws", values(&[5, 5], 3)).unwrap();
        y = matmul(&mut net, "mm3", y, ws);
        y = matmul(&mut net, "mm4", y, ws);
    }
    net.mark_output(y).unwrap();
    net
}

fn input() -> Value {
    Value::Tensor(values(&[2, 3], 9))
}

fn build(net: &Network, mode: Mode) -> Result<Engine, EngineError> {
    Builder::new(Arc::new(PackBackend(mode))).build(net, &BuilderConfig::default())
}

fn run(engine: Engine) -> Vec<f32> {
    let engine = Arc::new(engine);
    let mut ctx = engine.create_context();
    ctx.set_input("x", &input()).unwrap();
    ctx.execute().unwrap();
    let name = engine.output_names()[0].to_string();
    ctx.output(&name).unwrap().into_tensor().unwrap().as_slice::<f32>().unwrap().to_vec()
}

fn reference(net: &Network) -> Vec<f32> {
    let inputs: HashMap<String, Value> = [("x".to_string(), input())].into();
    kiln_cpu::execute_named(net, inputs).unwrap().remove(0).into_tensor().unwrap().as_slice::<f32>().unwrap().to_vec()
}

fn weight<'a>(graph: &'a EngineGraph, name: &str) -> &'a kiln_engine::WeightMeta {
    graph.weights.iter().find(|w| w.name == name).unwrap_or_else(|| panic!("no weight '{name}'"))
}

fn le(t: &Tensor) -> Vec<u8> {
    t.as_slice::<f32>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn load(path: &Path) -> Result<Engine, EngineError> {
    Engine::load(path, Arc::new(PackBackend(Mode::Reverse)))
}

#[test]
fn packed_weights_give_the_results_of_unpacked_ones() {
    let net = network(false);
    let packed = build(&net, Mode::Reverse).unwrap();
    let g = packed.graph();
    for el in g.layers.iter().filter(|el| el.layer.op == "MatMul") {
        assert_eq!(el.tactic, TACTIC, "layer {}", el.layer.name);
    }
    for name in ["w1", "w2"] {
        let w = weight(g, name);
        assert_eq!(w.packed_for.as_deref(), Some(TACTIC), "{name}");
        assert_eq!(w.offset % 64, 0);
    }
    let unpacked = build(&net, Mode::Off).unwrap();
    assert!(unpacked.graph().weights.iter().all(|w| w.packed_for.is_none()));
    let (a, b) = (run(packed), run(unpacked));
    assert_eq!(a, b, "packed at build time vs packed by the kernel");
    let r = reference(&net);
    assert!(a.iter().zip(&r).all(|(x, y)| (x - y).abs() <= 1e-4 * y.abs().max(1.0)), "{a:?} vs {r:?}");
}

#[test]
fn a_plan_stores_and_serves_the_packed_bytes_only() {
    let net = network(false);
    let engine = build(&net, Mode::Reverse).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("packed.plan");
    engine.save(&path).unwrap();
    let expected = run(engine);

    let plan = LoadedPlan::open(&path, &PlanExpectation::any()).unwrap();
    let graph: EngineGraph = plan.decode_metadata(DEFAULT_METADATA_LIMIT).unwrap();
    // The plan's weight section is the engine's weight buffer, written as is: what it lacks,
    // the engine did not hold either.
    let blob = plan.weight(0).unwrap();
    let file = std::fs::read(&path).unwrap();
    for name in ["w1", "w2"] {
        let w = weight(&graph, name);
        assert_eq!(w.packed_for.as_deref(), Some(TACTIC), "{name}");
        let onnx = le(net.tensor(net.tensor_by_name(name).unwrap()).constant().unwrap());
        assert_eq!(&blob[w.offset..w.offset + w.bytes], reversed_le(&onnx).as_slice(), "{name}");
        assert!(!contains(&file, &onnx), "the ONNX layout of {name} is still in the plan");
    }

    let loaded = load(&path).unwrap();
    assert_eq!(weight(loaded.graph(), "w1").packed_for.as_deref(), Some(TACTIC));
    assert_eq!(run(loaded), expected);
}

#[test]
fn a_weight_read_by_two_layers_is_not_packed() {
    let net = network(true);
    let engine = build(&net, Mode::Reverse).unwrap();
    let g = engine.graph();
    let tactics: Vec<(&str, &str)> = g.layers.iter().map(|el| (el.layer.name.as_str(), el.tactic.as_str())).collect();
    assert!(tactics.contains(&("mm3", TACTIC)) && tactics.contains(&("mm4", TACTIC)), "{tactics:?}");
    assert_eq!(weight(g, "ws").packed_for, None);
    assert_eq!(weight(g, "w1").packed_for.as_deref(), Some(TACTIC));
    let ws = weight(g, "ws");
    assert_eq!(ws.bytes, 5 * 5 * 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.plan");
    engine.save(&path).unwrap();
    let a = run(engine);
    assert_eq!(a, run(build(&net, Mode::Off).unwrap()));
    assert_eq!(a, run(load(&path).unwrap()));
}

#[test]
fn a_weight_that_is_a_graph_output_is_not_packed() {
    let mut net = network(false);
    let w2 = net.tensor_by_name("w2").unwrap();
    net.mark_output(w2).unwrap();
    let config = BuilderConfig { opt_level: 0, ..Default::default() };
    let engine = Arc::new(Builder::new(Arc::new(PackBackend(Mode::Reverse))).build(&net, &config).unwrap());
    assert_eq!(weight(engine.graph(), "w2").packed_for, None);
    assert_eq!(weight(engine.graph(), "w1").packed_for.as_deref(), Some(TACTIC));
    let mut ctx = engine.create_context();
    ctx.set_input("x", &input()).unwrap();
    ctx.execute().unwrap();
    let out = ctx.output("w2").unwrap().into_tensor().unwrap();
    assert_eq!(&out, net.tensor(w2).constant().unwrap());
}

#[test]
fn pack_weights_errors_name_the_layer() {
    let net = network(false);
    for (mode, text) in [(Mode::Fail, "no room for the panels"), (Mode::NotAWeight, "not a weight")] {
        match build(&net, mode) {
            Err(EngineError::Layer { layer, op, message }) => {
                assert_eq!(op, "MatMul");
                assert_eq!(layer, "mm1");
                assert!(message.contains(text) && message.contains(TACTIC), "{message}");
            }
            other => panic!("expected a layer error, got {other:?}"),
        }
    }
}

#[test]
fn a_packed_weight_has_no_value() {
    let bytes = reversed_le(&le(&values(&[2, 2], 4)));
    let shape = [2usize, 2];
    let arg = Arg::PackedWeight { dtype: DType::F32, shape: &shape, bytes: &bytes };
    let e = arg.value().unwrap_err();
    assert!(e.contains("packed"), "{e}");
    assert_eq!(arg.shape(), Some(&shape[..]));
    // The same bytes as an ordinary weight decode (they have the ONNX length).
    let cell = OnceLock::new();
    assert!(Arg::Weight { dtype: DType::F32, shape: &shape, bytes: &bytes, value: &cell }.value().is_ok());
}

/// Rewrite the plan at `path` with its metadata changed by `edit` (checksums made anew), and
/// load it.
fn load_edited(path: &Path, edit: impl FnOnce(&mut EngineGraph)) -> Result<Engine, EngineError> {
    let plan = LoadedPlan::open(path, &PlanExpectation::any()).unwrap();
    let mut graph: EngineGraph = plan.decode_metadata(DEFAULT_METADATA_LIMIT).unwrap();
    edit(&mut graph);
    let header = plan.header().clone();
    let blob = plan.weight(0).unwrap().to_vec();
    drop(plan);
    let edited = path.with_extension("edited.plan");
    write_plan(&edited, &header, &encode(&graph).unwrap(), &[&blob]).unwrap();
    load(&edited)
}

fn corrupt_message(r: Result<Engine, EngineError>) -> String {
    match r {
        Err(EngineError::Plan(PlanError::Corrupt { message, .. })) => message,
        other => panic!("expected a corrupt plan, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_plan_whose_packed_weights_lie_is_refused() {
    let net = network(true);
    let engine = build(&net, Mode::Reverse).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lying.plan");
    engine.save(&path).unwrap();
    let at = |g: &EngineGraph, name: &str| g.weights.iter().position(|w| w.name == name).unwrap();

    // Unchanged, it loads.
    load_edited(&path, |_| {}).unwrap();
    // A packed weight's range past the end of the weight buffer.
    let m = corrupt_message(load_edited(&path, |g| {
        let i = at(g, "w1");
        g.weights[i].offset = g.weights.iter().map(|w| w.offset + w.bytes).max().unwrap().next_multiple_of(64);
    }));
    assert!(m.contains("w1") && m.contains("invalid range"), "{m}");
    let m = corrupt_message(load_edited(&path, |g| {
        let i = at(g, "w1");
        g.weights[i].bytes = usize::MAX - 8;
    }));
    assert!(m.contains("w1"), "{m}");
    // Not 64-byte aligned.
    let m = corrupt_message(load_edited(&path, |g| {
        let i = at(g, "w2");
        g.weights[i].offset += 4;
        g.weights[i].bytes -= 4;
    }));
    assert!(m.contains("w2"), "{m}");
    // Packed for a tactic its layer does not run.
    let m = corrupt_message(load_edited(&path, |g| {
        let i = at(g, "w2");
        g.weights[i].packed_for = Some("reference".into());
    }));
    assert!(m.contains("w2") && m.contains("reference"), "{m}");
    // Packed although two layers read it.
    let m = corrupt_message(load_edited(&path, |g| {
        let i = at(g, "ws");
        g.weights[i].packed_for = Some(TACTIC.into());
    }));
    assert!(m.contains("ws"), "{m}");
    // An unpacked weight still must hold exactly its elements.
    let m = corrupt_message(load_edited(&path, |g| {
        let i = at(g, "ws");
        g.weights[i].bytes -= 4;
    }));
    assert!(m.contains("ws"), "{m}");
    // A packed weight of the wrong size reaches its kernel, which refuses it.
    match load_edited(&path, |g| {
        let i = at(g, "w1");
        g.weights[i].bytes -= 4;
    }) {
        Err(EngineError::Layer { layer, message, .. }) => {
            assert_eq!(layer, "mm1");
            assert!(message.contains("packed weight"), "{message}");
        }
        other => panic!("expected the kernel's error, got {:?}", other.map(|_| ())),
    }
}
