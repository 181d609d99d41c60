//! serde support for the IR: a network with constants, attributes of every kind and subgraphs
//! round-trips exactly; hostile input (ids out of range, tensors whose shape lies, deep nesting,
//! duplicate names) is refused with an error instead of a panic later.

use kiln_ir::{
    known_shape, Attribute, Attributes, DType, Dim, IrError, Layer, LayerId, Network, Tensor, TensorData, TensorId,
    TensorInfo, TensorSource, TensorType, ValueType,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(v: &T) -> T {
    let bytes = postcard::to_allocvec(v).unwrap();
    postcard::from_bytes(&bytes).unwrap()
}

/// Decodes, with kiln-ir's message for the error where it raised one (postcard drops it).
fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    kiln_ir::take_deserialize_error();
    postcard::from_bytes(bytes).map_err(|e| kiln_ir::take_deserialize_error().unwrap_or_else(|| e.to_string()))
}

/// `If` branch: reads `x` from the enclosing graph, adds a constant.
fn branch(name: &str, k: f32) -> Network {
    let mut g = Network::new(name);
    let x = g.add_captured("x", Some(ValueType::tensor(DType::F32, known_shape(&[2, 3])))).unwrap();
    let c = g.add_constant(&format!("{name}_k"), Tensor::scalar(k)).unwrap();
    let y = g
        .add_layer(&format!("{name}_add"), "Add", Attributes::new(), &[Some(x), Some(c)], &[&format!("{name}_y")])
        .unwrap()[0]
        .unwrap();
    g.mark_output(y).unwrap();
    g
}

fn sample_network() -> Network {
    let mut net = Network::new("sample");
    let x = net.add_input("x", ValueType::tensor(DType::F32, vec![Dim::Known(2), Dim::Known(3)])).unwrap();
    let cond = net.add_input("cond", ValueType::tensor(DType::Bool, vec![])).unwrap();
    let _sym = net.add_input("s", ValueType::tensor(DType::F16, vec![Dim::Symbol("batch".into()), Dim::Unknown]));
    let w =
        net.add_constant("w", Tensor::from_vec(vec![2, 3], vec![1.0f32, -2.0, 3.5, 0.0, 1e-3, 7.0]).unwrap()).unwrap();
    let every_kind = Attributes::new()
        .with("f", 0.5f32)
        .with("i", -7i64)
        .with("s", "text")
        .with("t", Tensor::from_vec(vec![2], vec![1i64, 2]).unwrap())
        .with("g", branch("attr_graph", 1.0))
        .with("fs", vec![1.0f32, 2.0])
        .with("is", vec![3i64, -4])
        .with(
            "ty",
            Attribute::Type(ValueType::Sequence(Box::new(ValueType::Optional(Box::new(ValueType::Tensor(
                TensorType::unranked(DType::U16),
            )))))),
        )
        .with("ss", Attribute::Strings(vec!["a".into(), "".into()]))
        .with(
            "ts",
            Attribute::Tensors(vec![
                Tensor::from_vec(vec![1], vec![true]).unwrap(),
                Tensor::from_vec(vec![2, 0], Vec::<u8>::new()).unwrap(),
                Tensor::from_vec(vec![1], vec![kiln_ir::bf16::from_f32(1.5)]).unwrap(),
            ]),
        )
        .with("gs", Attribute::Graphs(vec![Arc::new(branch("gs0", 2.0)), Arc::new(branch("gs1", 3.0))]));
    let y = net.add_layer("add", "Add", every_kind, &[Some(x), Some(w)], &["y"]).unwrap()[0].unwrap();
    let attrs = Attributes::new().with("then_branch", branch("then", 1.0)).with("else_branch", branch("else", -1.0));
    let z = net.add_layer_with_implicit("if", "If", attrs, &[Some(cond)], &["z"], vec![y]).unwrap()[0].unwrap();
    net.mark_output(z).unwrap();
    net.mark_output(y).unwrap();
    net
}

#[test]
fn network_with_every_attribute_kind_round_trips() {
    let net = sample_network();
    net.validate().unwrap();
    let back = round_trip(&net);
    assert_eq!(back, net);
    back.validate().unwrap();
    // The name maps were rebuilt.
    assert_eq!(back.tensor_by_name("y"), net.tensor_by_name("y"));
    assert_eq!(back.layer_by_name("if").map(|l| &l.op), Some(&"If".to_string()));
}

#[test]
fn every_dtype_round_trips() {
    for dtype in DType::ALL {
        let t = Tensor::zeros(dtype, vec![3, 1]).unwrap();
        assert_eq!(round_trip(&t), t);
        assert_eq!(round_trip(&dtype), dtype);
    }
    let t = Tensor::from_vec(vec![2, 2], vec![1.5f64, -0.0, f64::MAX, f64::MIN_POSITIVE]).unwrap();
    assert_eq!(round_trip(&t), t);
    let d = TensorData::I16(vec![-1, 300]);
    assert_eq!(round_trip(&d), d);
}

#[test]
fn tensor_bytes_are_compact() {
    let t = Tensor::from_vec(vec![256], vec![0.25f32; 256]).unwrap();
    let bytes = postcard::to_allocvec(&t).unwrap();
    assert!(bytes.len() < 1024 + 16, "{} bytes for 1 KiB of data", bytes.len());
}

/// Same field layout as a network on the wire, so tests can write networks the builder refuses.
#[derive(Serialize)]
struct RawNetwork {
    name: String,
    tensors: Vec<TensorInfo>,
    layers: Vec<Layer>,
    inputs: Vec<TensorId>,
    outputs: Vec<TensorId>,
}

fn raw_of(net: &Network) -> RawNetwork {
    RawNetwork {
        name: net.name.clone(),
        tensors: net.tensors().to_vec(),
        layers: net.layers().to_vec(),
        inputs: net.inputs().to_vec(),
        outputs: net.outputs().to_vec(),
    }
}

fn decode_raw(raw: &RawNetwork) -> Result<Network, String> {
    decode::<Network>(&postcard::to_allocvec(raw).unwrap())
}

#[test]
fn raw_mirror_matches_the_wire_format() {
    let net = sample_network();
    assert_eq!(decode_raw(&raw_of(&net)).unwrap(), net);
}

#[test]
fn ids_out_of_range_are_refused_at_load() {
    let net = sample_network();
    type Mutation = (&'static str, Box<dyn Fn(&mut RawNetwork)>);
    let mutations: Vec<Mutation> = vec![
        ("output id", Box::new(|r| r.outputs.push(TensorId(999)))),
        ("input id", Box::new(|r| r.inputs[0] = TensorId(usize::MAX))),
        ("layer input", Box::new(|r| r.layers[0].inputs[0] = Some(TensorId(1000)))),
        ("implicit input", Box::new(|r| r.layers[1].implicit_inputs.push(TensorId(77)))),
        ("layer output", Box::new(|r| r.layers[1].outputs[0] = Some(TensorId(12345)))),
        (
            "source layer",
            Box::new(|r| r.tensors.last_mut().unwrap().source = TensorSource::Layer { layer: LayerId(9), index: 0 }),
        ),
        (
            "source index",
            Box::new(|r| r.tensors.last_mut().unwrap().source = TensorSource::Layer { layer: LayerId(1), index: 5 }),
        ),
        ("execution order", Box::new(|r| r.layers.swap(0, 1))),
        ("input twice", Box::new(|r| r.inputs.push(TensorId(0)))),
        (
            "input not listed",
            Box::new(|r| {
                r.inputs.remove(0);
            }),
        ),
        (
            "constant type",
            Box::new(|r| {
                let w = r.tensors.iter_mut().find(|t| t.name == "w").unwrap();
                w.ty = Some(ValueType::tensor(DType::F32, known_shape(&[3, 2])));
            }),
        ),
        ("duplicate tensor", Box::new(|r| r.tensors[1].name = "x".into())),
        ("duplicate layer", Box::new(|r| r.layers[1].name = "add".into())),
        ("rank", Box::new(|r| r.tensors[0].ty = Some(ValueType::tensor(DType::F32, known_shape(&[1; 9]))))),
    ];
    for (what, mutate) in mutations {
        let mut raw = raw_of(&net);
        mutate(&mut raw);
        let err = decode_raw(&raw).expect_err(what);
        assert!(!err.is_empty(), "{what}");
    }
}

#[test]
fn bad_subgraph_is_refused() {
    let mut sub = raw_of(&branch("bad", 1.0));
    sub.outputs.push(TensorId(50));
    let sub_bytes = postcard::to_allocvec(&sub).unwrap();
    // Splice the bad subgraph in as an attribute: encode `Attribute::Graph` by hand (variant 4).
    let mut attr_bytes = vec![4u8];
    attr_bytes.extend_from_slice(&sub_bytes);
    assert!(decode::<Attribute>(&attr_bytes).is_err());
    attr_bytes.truncate(1);
    attr_bytes.extend_from_slice(&postcard::to_allocvec(&raw_of(&branch("good", 1.0))).unwrap());
    assert!(matches!(decode::<Attribute>(&attr_bytes), Ok(Attribute::Graph(_))));
}

#[test]
fn validate_reports_bad_networks_built_in_memory() {
    let net = sample_network();
    assert!(net.validate().is_ok());
    let mut raw = raw_of(&net);
    raw.outputs.push(TensorId(999));
    let err = decode_raw(&raw).unwrap_err();
    assert!(err.contains("network 'sample'") && err.contains("999"), "{err}");
    let mut raw = raw_of(&net);
    raw.tensors[1].name = "x".into();
    let err = decode_raw(&raw).unwrap_err();
    assert_eq!(err, IrError::DuplicateName { kind: "tensor", name: "x".into() }.to_string());
}

#[derive(Serialize)]
struct RawTensor {
    shape: Vec<usize>,
    data: TensorData,
}

#[test]
fn tensor_whose_shape_lies_is_refused() {
    let ok = RawTensor { shape: vec![2, 2], data: TensorData::F32(vec![1.0; 4]) };
    assert!(decode::<Tensor>(&postcard::to_allocvec(&ok).unwrap()).is_ok());
    for shape in [vec![2, 3], vec![5], vec![], vec![usize::MAX, 2], vec![1 << 40, 1 << 40], vec![1 << 35]] {
        let bad = RawTensor { shape: shape.clone(), data: TensorData::F32(vec![1.0; 4]) };
        assert!(decode::<Tensor>(&postcard::to_allocvec(&bad).unwrap()).is_err(), "{shape:?}");
    }
    // A byte count that is not a whole number of elements.
    let mut bytes = postcard::to_allocvec(&TensorData::F32(vec![1.0])).unwrap();
    assert_eq!(bytes, [0, 4, 0, 0, 128, 63]); // dtype F32, 4 bytes
    bytes[1] = 3;
    bytes.pop();
    assert!(decode::<TensorData>(&bytes).is_err());
    // A length beyond the input.
    let huge = [0u8, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3];
    assert!(decode::<TensorData>(&huge).is_err());
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    // ValueType variant 1 is Sequence: a million of them and then a tensor type.
    let mut bytes = vec![1u8; 1_000_000];
    bytes.extend_from_slice(&postcard::to_allocvec(&ValueType::tensor(DType::F32, vec![])).unwrap());
    let err = decode::<ValueType>(&bytes).unwrap_err();
    assert!(err.contains("nest deeper"), "{err}");
    // Nesting within the limit is fine.
    let mut ty = ValueType::tensor(DType::I8, vec![]);
    for _ in 0..20 {
        ty = ValueType::Optional(Box::new(ty));
    }
    assert_eq!(round_trip(&ty), ty);
    // A chain of graphs, each holding the next as an attribute, deeper than the limit is refused.
    let mut g = branch("leaf", 0.0);
    for depth in 0..40 {
        let mut outer = Network::new(format!("level{depth}"));
        let c = outer.add_captured(&format!("c{depth}"), Some(ValueType::tensor(DType::F32, vec![]))).unwrap();
        let attrs = Attributes::new().with("inner", g);
        let o = outer.add_layer("id", "Identity", attrs, &[Some(c)], &["o"]).unwrap();
        outer.mark_output(o[0].unwrap()).unwrap();
        g = outer;
        if depth < 20 {
            assert_eq!(round_trip(&g), g);
        }
    }
    let err = decode::<Network>(&postcard::to_allocvec(&g).unwrap()).unwrap_err();
    assert!(err.contains("nest deeper"), "{err}");
}
