//! Unit tests for the control kernels: the tensor plumbing directly, the ops through small
//! networks run by the executor (bodies use only this family's ops, or pass inputs through).

use super::tensors::{concat, resolve_position, slice_axis};
use crate::execute;
use half::f16;
use kiln_ir::{Attributes, DType, Dim, Network, Tensor, TensorId, Value, ValueType};

fn t32(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v.to_vec()).unwrap()
}

fn scalar_i64_ty() -> ValueType {
    ValueType::tensor(DType::I64, vec![])
}

fn f32_ty(shape: &[usize]) -> ValueType {
    ValueType::tensor(DType::F32, shape.iter().map(|&d| Dim::Known(d)).collect())
}

fn layer(
    net: &mut Network,
    name: &str,
    op: &str,
    attrs: Attributes,
    ins: &[Option<TensorId>],
    outs: &[&str],
) -> Vec<TensorId> {
    net.add_layer(name, op, attrs, ins, outs).unwrap().into_iter().flatten().collect()
}

#[test]
fn concat_inner_axis_and_stack_middle_axis() {
    let a = t32(&[2, 2], &[1., 2., 3., 4.]);
    let b = t32(&[2, 1], &[5., 6.]);
    let c = concat(&[&a, &b], 1, false).unwrap();
    assert_eq!(c.shape(), &[2, 3]);
    assert_eq!(c.as_slice::<f32>().unwrap(), &[1., 2., 5., 3., 4., 6.]);
    // Stacking along a new axis 1 interleaves rows: out[i, k, j] = part_k[i, j].
    let d = t32(&[2, 2], &[7., 8., 9., 10.]);
    let s = concat(&[&a, &d], 1, true).unwrap();
    assert_eq!(s.shape(), &[2, 2, 2]);
    assert_eq!(s.as_slice::<f32>().unwrap(), &[1., 2., 7., 8., 3., 4., 9., 10.]);
    assert!(concat(&[&a, &b], 1, true).is_err(), "stacking needs equal shapes");
    let h = Tensor::from_vec(vec![1], vec![f16::from_f32(1.5)]).unwrap();
    assert!(concat(&[&a, &h], 0, false).is_err(), "dtypes must agree");
}

#[test]
fn slice_axis_keeps_or_drops_the_axis() {
    let x = t32(&[2, 3, 2], &(0..12).map(|v| v as f32).collect::<Vec<_>>());
    let s = slice_axis(&x, 1, 1, 2, true).unwrap();
    assert_eq!(s.shape(), &[2, 2, 2]);
    assert_eq!(s.as_slice::<f32>().unwrap(), &[2., 3., 4., 5., 8., 9., 10., 11.]);
    let d = slice_axis(&x, 1, 2, 1, false).unwrap();
    assert_eq!(d.shape(), &[2, 2]);
    assert_eq!(d.as_slice::<f32>().unwrap(), &[4., 5., 10., 11.]);
    assert!(slice_axis(&x, 1, 2, 2, true).is_err());
}

#[test]
fn positions_resolve_against_length() {
    assert_eq!(resolve_position(-1, 3, 0).unwrap(), 2);
    assert_eq!(resolve_position(-3, 3, 0).unwrap(), 0);
    assert_eq!(resolve_position(3, 3, 1).unwrap(), 3);
    assert!(resolve_position(3, 3, 0).is_err());
    assert!(resolve_position(-4, 3, 1).is_err());
}

#[test]
fn split_then_concat_round_trips() {
    let mut net = Network::new("g");
    let x = net.add_input("x", f32_ty(&[2, 5])).unwrap();
    let split = net.add_constant("split", Tensor::from_vec(vec![3], vec![1i64, 0, 4]).unwrap()).unwrap();
    let seq = layer(
        &mut net,
        "s",
        "SplitToSequence",
        Attributes::new().with("axis", 1i64),
        &[Some(x), Some(split)],
        &["seq"],
    );
    let len = layer(&mut net, "n", "SequenceLength", Attributes::new(), &[Some(seq[0])], &["len"]);
    let y = layer(&mut net, "c", "ConcatFromSequence", Attributes::new().with("axis", -1i64), &[Some(seq[0])], &["y"]);
    net.mark_output(len[0]).unwrap();
    net.mark_output(y[0]).unwrap();
    let xv = t32(&[2, 5], &[1., 2., 3., 4., 5., 6., 7., 8., 9., 10.]);
    let out = execute(&net, vec![Value::Tensor(xv.clone())]).unwrap();
    assert_eq!(out[0], Value::Tensor(Tensor::scalar(3i64)));
    assert_eq!(out[1], Value::Tensor(xv));
}

/// Loop with a trip count and no condition: the body's outputs are its own inputs (the
/// iteration number becomes the scan output), and a sequence is carried and grown.
#[test]
fn loop_passes_inputs_through_and_grows_a_sequence() {
    let mut body = Network::new("body");
    let i = body.add_input("i", scalar_i64_ty()).unwrap();
    let c = body.add_input("c", ValueType::tensor(DType::Bool, vec![])).unwrap();
    let s = body.add_input("s", ValueType::Sequence(Box::new(scalar_i64_ty()))).unwrap();
    let s2 = layer(&mut body, "ins", "SequenceInsert", Attributes::new(), &[Some(s), Some(i)], &["s2"]);
    body.mark_output(c).unwrap();
    body.mark_output(s2[0]).unwrap();
    body.mark_output(i).unwrap();

    let mut net = Network::new("g");
    let m = net.add_input("M", scalar_i64_ty()).unwrap();
    let empty = layer(&mut net, "e", "SequenceEmpty", Attributes::new().with("dtype", 7i64), &[], &["empty"]);
    let outs = layer(
        &mut net,
        "loop",
        "Loop",
        Attributes::new().with("body", body),
        &[Some(m), None, Some(empty[0])],
        &["seq", "iters"],
    );
    // With a constant-free M the scan axis is unknown; the element type is the body's.
    assert_eq!(net.tensor(outs[1]).ty, Some(ValueType::tensor(DType::I64, vec![Dim::Unknown])));
    net.mark_output(outs[0]).unwrap();
    net.mark_output(outs[1]).unwrap();
    let out = execute(&net, vec![Value::Tensor(Tensor::scalar(3i64))]).unwrap();
    let want: Vec<Tensor> = (0..3).map(|v| Tensor::scalar(v as i64)).collect();
    assert_eq!(out[0], Value::Sequence(want));
    assert_eq!(out[1], Value::Tensor(Tensor::from_vec(vec![3], vec![0i64, 1, 2]).unwrap()));
    // Zero iterations: the carried value is the initial one, the scan output is empty.
    let out = execute(&net, vec![Value::Tensor(Tensor::scalar(0i64))]).unwrap();
    assert_eq!(out[0], Value::Sequence(vec![]));
    assert_eq!(out[1], Value::Tensor(Tensor::from_vec(vec![0], Vec::<i64>::new()).unwrap()));
}

/// A Scan whose body passes its slice straight out: reading along axis 1 and writing along
/// axis 0 transposes; reversing both the input and the output direction cancels out.
#[test]
fn scan_axes_and_directions() {
    let build = |in_axis: i64, in_dir: i64, out_axis: i64, out_dir: i64| {
        let mut body = Network::new("body");
        let x = body.add_input("x", f32_ty(&[2])).unwrap();
        body.mark_output(x).unwrap();
        let mut net = Network::new("g");
        let xs = net.add_input("xs", f32_ty(&[2, 3])).unwrap();
        let attrs = Attributes::new()
            .with("body", body)
            .with("num_scan_inputs", 1i64)
            .with("scan_input_axes", vec![in_axis])
            .with("scan_input_directions", vec![in_dir])
            .with("scan_output_axes", vec![out_axis])
            .with("scan_output_directions", vec![out_dir]);
        let y = layer(&mut net, "scan", "Scan", attrs, &[Some(xs)], &["y"]);
        net.mark_output(y[0]).unwrap();
        net
    };
    let xv = t32(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
    let run = |net: &Network| execute(net, vec![Value::Tensor(xv.clone())]).unwrap().remove(0);
    let transposed = build(1, 0, 0, 0);
    assert_eq!(transposed.tensor(transposed.outputs()[0]).ty, Some(f32_ty(&[3, 2])));
    assert_eq!(run(&transposed), Value::Tensor(t32(&[3, 2], &[1., 4., 2., 5., 3., 6.])));
    assert_eq!(run(&build(1, 1, -1, 1)), Value::Tensor(xv.clone()));
    // Reversed input only: columns come out last-first.
    assert_eq!(run(&build(-1, 1, 1, 0)), Value::Tensor(t32(&[2, 3], &[3., 2., 1., 6., 5., 4.])));
}

#[test]
fn if_picks_branch_and_merges_types() {
    let branch = |v: &[f32]| {
        let mut g = Network::new("b");
        let c = g.add_constant("k", t32(&[v.len()], v)).unwrap();
        g.mark_output(c).unwrap();
        g
    };
    let mut net = Network::new("g");
    let cond = net.add_input("cond", ValueType::tensor(DType::Bool, vec![])).unwrap();
    let attrs = Attributes::new().with("then_branch", branch(&[1., 2.])).with("else_branch", branch(&[3., 4., 5.]));
    let y = layer(&mut net, "if", "If", attrs, &[Some(cond)], &["y"]);
    assert_eq!(net.tensor(y[0]).ty, Some(ValueType::tensor(DType::F32, vec![Dim::Unknown])));
    net.mark_output(y[0]).unwrap();
    let run = |c: bool| execute(&net, vec![Value::Tensor(Tensor::scalar(c))]).unwrap().remove(0);
    assert_eq!(run(true), Value::Tensor(t32(&[2], &[1., 2.])));
    assert_eq!(run(false), Value::Tensor(t32(&[3], &[3., 4., 5.])));
}

#[test]
fn optionals_and_sequence_errors() {
    let mut net = Network::new("g");
    let x = net.add_input("x", f32_ty(&[1])).unwrap();
    let attrs = Attributes::new().with("type", kiln_ir::Attribute::Type(f32_ty(&[1])));
    let none = layer(&mut net, "none", "Optional", attrs, &[], &["none"]);
    let some = layer(&mut net, "some", "Optional", Attributes::new(), &[Some(x)], &["some"]);
    let h0 = layer(&mut net, "h0", "OptionalHasElement", Attributes::new(), &[Some(none[0])], &["h0"]);
    let h1 = layer(&mut net, "h1", "OptionalHasElement", Attributes::new(), &[Some(some[0])], &["h1"]);
    let g = layer(&mut net, "g", "OptionalGetElement", Attributes::new(), &[Some(some[0])], &["got"]);
    assert_eq!(net.tensor(g[0]).ty, Some(f32_ty(&[1])));
    for id in [h0[0], h1[0], g[0]] {
        net.mark_output(id).unwrap();
    }
    let xv = t32(&[1], &[2.5]);
    let out = execute(&net, vec![Value::Tensor(xv.clone())]).unwrap();
    assert_eq!(out, vec![Value::Tensor(Tensor::scalar(false)), Value::Tensor(Tensor::scalar(true)), Value::Tensor(xv)]);

    // Getting the element of an empty optional and indexing past a sequence's end fail cleanly.
    let mut bad = Network::new("bad");
    let attrs = Attributes::new().with("type", kiln_ir::Attribute::Type(f32_ty(&[1])));
    let none = layer(&mut bad, "none", "Optional", attrs, &[], &["none"]);
    let g = layer(&mut bad, "g", "OptionalGetElement", Attributes::new(), &[Some(none[0])], &["got"]);
    bad.mark_output(g[0]).unwrap();
    assert!(execute(&bad, vec![]).is_err());
    let mut bad = Network::new("bad");
    let x = bad.add_input("x", f32_ty(&[1])).unwrap();
    let pos = bad.add_constant("pos", Tensor::scalar(1i64)).unwrap();
    let seq = layer(&mut bad, "c", "SequenceConstruct", Attributes::new(), &[Some(x)], &["seq"]);
    let at = layer(&mut bad, "at", "SequenceAt", Attributes::new(), &[Some(seq[0]), Some(pos)], &["at"]);
    bad.mark_output(at[0]).unwrap();
    let err = execute(&bad, vec![Value::Tensor(t32(&[1], &[1.]))]).unwrap_err().to_string();
    assert!(err.contains("out of range"), "{err}");
}
