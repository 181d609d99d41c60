use super::*;
use crate::passes::pattern::testing::{assert_close, random};
use crate::passes::prune::prune;
use crate::passes::test_support::{input, layer};
use kiln_ir::{Attributes, Tensor};

fn ops(net: &Network) -> Vec<&str> {
    net.layers().iter().map(|l| l.op.as_str()).collect()
}

/// Mul by an all-zero constant: the product is zeros and the layers before it go.
#[test]
fn mul_by_zero_folds_and_its_producers_go() {
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[2, 3]);
    let y = layer(&mut net, "exp", "Exp", Attributes::new(), &[x]);
    let z = net.add_constant("z", Tensor::zeros(kiln_ir::DType::F32, vec![3]).unwrap()).unwrap();
    let m = layer(&mut net, "mul", "Mul", Attributes::new(), &[y, z]);
    let o = layer(&mut net, "add", "Add", Attributes::new(), &[m, x]);
    net.mark_output(o).unwrap();
    let (out, report) = prune(&net).unwrap().expect("pruned");
    assert_eq!(ops(&out), vec!["Add"], "Exp fed only the Mul");
    assert!(report.changes.iter().any(|c| c.layer == "mul"));
    assert_close(&net, &out, &[("x", random(&[2, 3], 1, 1.0))], 0.0);
}

/// Relu of a provably non-positive tensor (−relu(x)) is zero; of an unknown sign it stays.
#[test]
fn relu_of_a_non_positive_tensor_is_zero() {
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[2, 3]);
    let r = layer(&mut net, "relu1", "Relu", Attributes::new(), &[x]);
    let n = layer(&mut net, "neg", "Neg", Attributes::new(), &[r]);
    let r2 = layer(&mut net, "relu2", "Relu", Attributes::new(), &[n]);
    let r3 = layer(&mut net, "relu3", "Relu", Attributes::new(), &[x]);
    let o = layer(&mut net, "add", "Add", Attributes::new(), &[r2, r3]);
    net.mark_output(o).unwrap();
    let (out, _) = prune_values(&net).unwrap().expect("folded");
    assert!(out.layer_by_name("relu2").is_none());
    assert!(out.layer_by_name("relu3").is_some());
    assert_close(&net, &out, &[("x", random(&[2, 3], 2, 1.0))], 0.0);
}

/// A Conv with all-zero weights is its bias (after the fused activation), everywhere.
#[test]
fn a_conv_with_zero_weights_is_its_bias() {
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[1, 2, 4, 4]);
    let w = net.add_constant("w", Tensor::zeros(kiln_ir::DType::F32, vec![3, 2, 3, 3]).unwrap()).unwrap();
    let b = net.add_constant("b", Tensor::from_vec(vec![3], vec![0.5f32, -1.0, 2.0]).unwrap()).unwrap();
    let mut attrs = Attributes::new().with("pads", vec![1i64; 4]);
    Activation::Relu.to_attrs(&mut attrs);
    let c = layer(&mut net, "conv", "Conv", attrs, &[x, w, b]);
    let y = layer(&mut net, "sig", "Sigmoid", Attributes::new(), &[c]);
    net.mark_output(y).unwrap();
    let (out, _) = prune(&net).unwrap().expect("pruned");
    assert!(out.layers().iter().all(|l| l.op != "Conv"));
    assert_close(&net, &out, &[("x", random(&[1, 2, 4, 4], 3, 1.0))], 1e-6);
}

/// Nothing provably constant: nothing to do.
#[test]
fn ordinary_layers_stay() {
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[2, 3]);
    let c = net.add_constant("c", random(&[3], 1, 1.0)).unwrap();
    let m = layer(&mut net, "mul", "Mul", Attributes::new(), &[x, c]);
    let r = layer(&mut net, "relu", "Relu", Attributes::new(), &[m]);
    net.mark_output(r).unwrap();
    assert!(prune_values(&net).unwrap().is_none());
}
