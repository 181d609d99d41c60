//! Hostile and malformed models get a typed error that names what is wrong — never a panic,
//! an abort or an unbounded allocation.

use kiln_onnx::proto::{
    tensor_proto, tensor_shape_proto, type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use kiln_onnx::{import_bytes, import_file, OnnxError};
use prost::Message;
use std::path::{Path, PathBuf};

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn model(graph: GraphProto, opset: i64) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(opset) }],
        graph: Some(graph),
        ..Default::default()
    }
}

fn graph(nodes: Vec<NodeProto>, inputs: Vec<ValueInfoProto>, outputs: Vec<ValueInfoProto>) -> GraphProto {
    GraphProto { name: Some("g".into()), node: nodes, input: inputs, output: outputs, ..Default::default() }
}

fn import(m: &ModelProto) -> Result<kiln_onnx::Model, OnnxError> {
    import_bytes(&m.encode_to_vec(), None, Path::new("test.onnx"))
}

fn float_tensor(name: &str, dims: &[i64], values: Vec<f32>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        float_data: values,
        ..Default::default()
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn truncated_file_is_a_decode_error_naming_the_file() {
    let bytes = std::fs::read(examples_dir().join("cnn.onnx")).unwrap();
    for cut in [1, 10, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        let err = import_bytes(&bytes[..cut], None, Path::new("cnn-truncated.onnx")).unwrap_err();
        assert!(matches!(err, OnnxError::Decode { .. } | OnnxError::Tensor { .. }), "cut {cut}: {err}");
        assert!(err.to_string().contains("cnn-truncated.onnx") || err.to_string().contains("tensor"), "{err}");
    }
}

#[test]
fn random_bytes_never_panic() {
    // xorshift: deterministic "random" files of several sizes.
    let mut s: u64 = 0x9E3779B97F4A7C15;
    for len in [0usize, 1, 7, 64, 1000, 100_000] {
        for _ in 0..20 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s as u8
                })
                .collect();
            let r = import_bytes(&bytes, None, Path::new("random.onnx"));
            assert!(r.is_err(), "random bytes of length {len} imported");
        }
    }
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let err = import_file("/nonexistent/dir/model.onnx").unwrap_err();
    assert!(matches!(err, OnnxError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/dir/model.onnx"), "{err}");
}

#[test]
fn reading_an_undefined_tensor_names_node_and_tensor() {
    let g = graph(vec![node("relu1", "Relu", &["ghost"], &["y"])], vec![], vec![value_info("y", &[1])]);
    let err = import(&model(g, 17)).unwrap_err();
    assert!(
        matches!(&err, OnnxError::UndefinedInput { node, tensor } if node == "relu1" && tensor == "ghost"),
        "{err}"
    );
}

#[test]
fn a_cycle_is_reported_with_its_nodes() {
    let g = graph(
        vec![node("a", "Relu", &["x", "b_out"], &["a_out"]), node("b", "Relu", &["a_out"], &["b_out"])],
        vec![value_info("x", &[2])],
        vec![value_info("b_out", &[2])],
    );
    let err = import(&model(g, 17)).unwrap_err();
    match &err {
        OnnxError::Cycle { nodes, .. } => assert!(nodes.contains(&"a".to_string()) && nodes.contains(&"b".to_string())),
        other => panic!("expected a cycle error, got {other}"),
    }
}

#[test]
fn negative_and_huge_dimensions_are_refused() {
    for dims in [vec![-1i64, 3], vec![1i64 << 40, 4]] {
        let g = graph(vec![], vec![value_info("x", &dims)], vec![value_info("x", &dims)]);
        let err = import(&model(g, 17)).unwrap_err();
        assert!(matches!(&err, OnnxError::Tensor { tensor, .. } if tensor == "x"), "{dims:?}: {err}");
    }
    // The same in an initializer: refused before any allocation.
    for dims in [vec![-2i64], vec![1i64 << 40, 1 << 40]] {
        let mut g = graph(vec![], vec![], vec![value_info("w", &[1])]);
        g.initializer.push(float_tensor("w", &dims, vec![1.0]));
        let err = import(&model(g, 17)).unwrap_err();
        assert!(matches!(&err, OnnxError::Tensor { tensor, .. } if tensor == "w"), "{dims:?}: {err}");
    }
}

#[test]
fn initializer_length_must_match_dims() {
    let mut g = graph(vec![], vec![], vec![value_info("w", &[2, 3])]);
    g.initializer.push(float_tensor("w", &[2, 3], vec![1.0, 2.0, 3.0]));
    let err = import(&model(g.clone(), 17)).unwrap_err();
    assert!(matches!(&err, OnnxError::Tensor { tensor, message } if tensor == "w" && message.contains("6")), "{err}");
    // raw_data of the wrong length too.
    let mut t = float_tensor("w", &[2, 3], vec![]);
    t.raw_data = Some(vec![0u8; 5 * 4]);
    g.initializer = vec![t];
    let err = import(&model(g, 17)).unwrap_err();
    assert!(err.to_string().contains("raw_data"), "{err}");
}

#[test]
fn external_data_outside_the_model_directory_is_refused() {
    let dir = std::env::temp_dir().join(format!("kiln-ext-{}", std::process::id()));
    let inner = dir.join("model");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(dir.join("secret.bin"), [0u8; 16]).unwrap();
    std::fs::write(inner.join("weights.bin"), 1.5f32.to_le_bytes().repeat(4)).unwrap();
    let ext = |location: &str| TensorProto {
        name: Some("w".into()),
        dims: vec![4],
        data_type: Some(1),
        data_location: Some(tensor_proto::DataLocation::External as i32),
        external_data: vec![StringStringEntryProto { key: Some("location".into()), value: Some(location.into()) }],
        ..Default::default()
    };
    let write_model = |location: &str| {
        let mut g = graph(vec![], vec![], vec![value_info("w", &[4])]);
        g.initializer.push(ext(location));
        let path = inner.join("m.onnx");
        std::fs::write(&path, model(g, 17).encode_to_vec()).unwrap();
        path
    };
    for escape in ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"] {
        let err = import_file(write_model(escape)).unwrap_err();
        assert!(
            matches!(&err, OnnxError::ExternalData { tensor, .. } | OnnxError::Tensor { tensor, .. } if tensor == "w"),
            "{escape}: {err}"
        );
    }
    // Inside the directory it loads.
    let m = import_file(write_model("weights.bin")).unwrap();
    let id = m.network.tensor_by_name("w").unwrap();
    assert_eq!(m.network.tensor(id).constant().unwrap().to_f64_vec(), vec![1.5; 4]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_unknown_op_names_op_node_and_opset() {
    let g = graph(
        vec![node("mystery", "FrobnicateV2", &["x"], &["y"])],
        vec![value_info("x", &[1])],
        vec![value_info("y", &[1])],
    );
    let err = import(&model(g, 17)).unwrap_err();
    match &err {
        OnnxError::UnsupportedOp { node, op, opset, .. } => {
            assert_eq!((node.as_str(), op.as_str(), *opset), ("mystery", "FrobnicateV2", 17));
        }
        other => panic!("expected UnsupportedOp, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("FrobnicateV2") && msg.contains("mystery") && msg.contains("17"), "{msg}");
}

#[test]
fn an_opset_newer_than_supported_is_refused() {
    let g = graph(vec![], vec![value_info("x", &[1])], vec![value_info("x", &[1])]);
    let err = import(&model(g, kiln_onnx::MAX_OPSET + 1)).unwrap_err();
    assert!(matches!(err, OnnxError::OpsetTooNew { version, .. } if version == kiln_onnx::MAX_OPSET + 1), "{err}");
}

#[test]
fn out_of_scope_ops_say_why() {
    let g = graph(
        vec![node("rand", "RandomNormalLike", &["x"], &["y"])],
        vec![value_info("x", &[1])],
        vec![value_info("y", &[1])],
    );
    let err = import(&model(g, 17)).unwrap_err();
    assert!(err.to_string().contains("random"), "{err}");
}
