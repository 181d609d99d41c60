//! Run-time input mistakes get typed errors naming the input.

use kiln::cpu::CpuError;
use kiln::{DType, Dim, Error, Network, Tensor, Value, ValueType};
use std::collections::HashMap;

/// Two inputs sharing the symbolic `batch` dim, each passed straight to an output.
fn passthrough() -> Network {
    let mut net = Network::new("passthrough");
    let a =
        net.add_input("a", ValueType::tensor(DType::F32, vec![Dim::Symbol("batch".into()), Dim::Known(3)])).unwrap();
    let b = net.add_input("b", ValueType::tensor(DType::I64, vec![Dim::Symbol("batch".into())])).unwrap();
    net.mark_output(a).unwrap();
    net.mark_output(b).unwrap();
    net
}

fn f32s(shape: &[usize]) -> Value {
    let n = shape.iter().product();
    Value::Tensor(Tensor::from_vec(shape.to_vec(), (0..n).map(|i| i as f32 * 0.5 - 1.0).collect()).unwrap())
}

fn i64s(n: usize) -> Value {
    Value::Tensor(Tensor::from_vec(vec![n], (0..n as i64).collect()).unwrap())
}

fn run(inputs: Vec<(&str, Value)>) -> Result<Vec<(String, Value)>, Error> {
    let map: HashMap<String, Value> = inputs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    kiln::run(&passthrough(), map)
}

#[test]
fn good_inputs_run() {
    let out = run(vec![("a", f32s(&[2, 3])), ("b", i64s(2))]).unwrap();
    assert_eq!(out[0].0, "a");
    assert_eq!(out[0].1, f32s(&[2, 3]));
}

#[test]
fn missing_input_is_named() {
    let err = run(vec![("a", f32s(&[2, 3]))]).unwrap_err();
    assert!(matches!(&err, Error::Execution(CpuError::MissingInput(n)) if n == "b"), "{err}");
}

#[test]
fn unknown_input_is_named() {
    let err = run(vec![("a", f32s(&[2, 3])), ("b", i64s(2)), ("c", i64s(1))]).unwrap_err();
    assert!(matches!(&err, Error::Execution(CpuError::UnknownInput(n)) if n == "c"), "{err}");
}

#[test]
fn wrong_shape_dtype_or_symbol_is_named() {
    let cases = vec![
        (vec![("a", f32s(&[2, 4])), ("b", i64s(2))], "must be 3"),
        (vec![("a", f32s(&[2, 3, 1])), ("b", i64s(2))], "rank"),
        (vec![("a", i64s(6)), ("b", i64s(2))], "dtype"),
        (vec![("a", f32s(&[2, 3])), ("b", i64s(5))], "'batch'"),
    ];
    for (inputs, needle) in cases {
        let err = run(inputs).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Execution(CpuError::BadInput { .. })), "{msg}");
        assert!(msg.contains(needle), "expected '{needle}' in: {msg}");
    }
}
