use super::*;
use crate::passes::pattern::testing::{assert_close, random};
use crate::passes::test_support::{input, layer};
use kiln_ir::Attributes;

/// Random non-zero f32 weights with the listed output channels (dim 0) zeroed.
fn weights(shape: &[usize], seed: u64, zero_out: &[usize]) -> Tensor {
    let mut t = random(shape, seed, 0.5);
    let per = t.len() / shape[0];
    let v = t.as_mut_slice::<f32>().unwrap();
    for &o in zero_out {
        v[o * per..(o + 1) * per].iter_mut().for_each(|x| *x = 0.0);
    }
    t
}

/// Zero input channel `c` of every filter of conv weights `[M, C, k...]`.
fn zero_in(mut t: Tensor, cs: &[usize]) -> Tensor {
    let s = t.shape().to_vec();
    let k: usize = s[2..].iter().product();
    let v = t.as_mut_slice::<f32>().unwrap();
    for o in 0..s[0] {
        for &c in cs {
            v[(o * s[1] + c) * k..][..k].iter_mut().for_each(|x| *x = 0.0);
        }
    }
    t
}

fn bias(net: &mut Network, name: &str, values: Vec<f32>) -> TensorId {
    let n = values.len();
    net.add_constant(name, Tensor::from_vec(vec![n], values).unwrap()).unwrap()
}

fn conv(net: &mut Network, name: &str, x: TensorId, w: Tensor, b: Option<TensorId>, pad: i64) -> TensorId {
    let w = net.add_constant(&format!("{name}_w"), w).unwrap();
    let mut ins = vec![x, w];
    ins.extend(b);
    let attrs = Attributes::new().with("pads", vec![pad; 4]);
    layer(net, name, "Conv", attrs, &ins)
}

fn w_shape(net: &Network, layer_name: &str) -> Vec<usize> {
    let l = net.layer_by_name(layer_name).unwrap();
    net.tensor(l.inputs[1].unwrap()).constant().unwrap().shape().to_vec()
}

fn check(net: &Network, inputs: &[(&str, Tensor)]) -> Network {
    let (out, _) = prune_channels(net).unwrap().expect("pruned");
    assert_close(net, &out, inputs, 1e-5);
    assert!(prune_channels(&out).unwrap().is_none(), "a fixpoint");
    out
}

/// conv1 (channels 1 and 3 zero, with a bias) → Relu → 1x1 conv2: the channels are the
/// constants relu(bias), folded into conv2's bias, and leave both convs.
#[test]
fn zero_filters_with_bias_fold_into_the_next_convs_bias() {
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[1, 3, 6, 6]);
    let b1 = bias(&mut net, "b1", vec![0.3, 0.7, -0.2, 0.5]);
    let y = conv(&mut net, "conv1", x, weights(&[4, 3, 3, 3], 1, &[1, 3]), Some(b1), 1);
    let y = layer(&mut net, "relu", "Relu", Attributes::new(), &[y]);
    let z = conv(&mut net, "conv2", y, weights(&[5, 4, 1, 1], 2, &[]), None, 0);
    net.mark_output(z).unwrap();
    let out = check(&net, &[("x", random(&[1, 3, 6, 6], 3, 1.0))]);
    assert_eq!(w_shape(&out, "conv1"), vec![2, 3, 3, 3]);
    assert_eq!(w_shape(&out, "conv2"), vec![5, 2, 1, 1]);
    assert_eq!(out.layer_by_name("conv2").unwrap().inputs.len(), 3, "a bias was created for the fold");
}

/// A padded consumer sees zeros at the borders: a constant non-zero channel cannot fold into
/// its bias (the channel stays); a zero channel can.
#[test]
fn a_padded_consumer_keeps_constant_non_zero_channels() {
    for (b, removed) in [(0.5f32, false), (0.0, true)] {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[1, 2, 5, 5]);
        let b1 = bias(&mut net, "b1", vec![0.1, b, 0.2]);
        let y = conv(&mut net, "conv1", x, weights(&[3, 2, 1, 1], 1, &[1]), Some(b1), 0);
        let y = layer(&mut net, "relu", "Relu", Attributes::new(), &[y]);
        let z = conv(&mut net, "conv2", y, weights(&[4, 3, 3, 3], 2, &[]), None, 1);
        net.mark_output(z).unwrap();
        let r = prune_channels(&net).unwrap();
        assert_eq!(r.is_some(), removed, "bias {b}");
        if let Some((out, _)) = r {
            assert_close(&net, &out, &[("x", random(&[1, 2, 5, 5], 4, 1.0))], 1e-5);
            assert_eq!(w_shape(&out, "conv2"), vec![4, 2, 3, 3]);
        }
    }
}

/// Residual: `relu(conv_a(x) + conv_b(x))` into conv_c. A channel goes only when it is dead on
/// both sides of the Add.
#[test]
fn a_residual_channel_goes_only_when_dead_on_both_paths() {
    for (a_zero, b_zero, removed) in [(vec![0, 2], vec![2], 1usize), (vec![0], vec![1], 0)] {
        let mut net = Network::new("t");
        let x = input(&mut net, "x", &[1, 3, 4, 4]);
        let ya = conv(&mut net, "conv_a", x, weights(&[4, 3, 1, 1], 1, &a_zero), None, 0);
        let yb = conv(&mut net, "conv_b", x, weights(&[4, 3, 1, 1], 2, &b_zero), None, 0);
        let s = layer(&mut net, "add", "Add", Attributes::new(), &[ya, yb]);
        let s = layer(&mut net, "relu", "Relu", Attributes::new(), &[s]);
        let z = conv(&mut net, "conv_c", s, weights(&[2, 4, 1, 1], 3, &[]), None, 0);
        net.mark_output(z).unwrap();
        match prune_channels(&net).unwrap() {
            None => assert_eq!(removed, 0),
            Some((out, _)) => {
                assert_close(&net, &out, &[("x", random(&[1, 3, 4, 4], 5, 1.0))], 1e-5);
                for l in ["conv_a", "conv_b"] {
                    assert_eq!(w_shape(&out, l)[0], 4 - removed, "{l}");
                }
                assert_eq!(w_shape(&out, "conv_c")[1], 4 - removed);
            }
        }
    }
}

/// An input channel every filter of its only reader ignores is dead, whatever its value: it
/// leaves the producer too.
#[test]
fn input_channels_with_all_zero_weights_are_dead() {
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[1, 3, 5, 5]);
    let y = conv(&mut net, "conv1", x, weights(&[4, 3, 3, 3], 1, &[]), None, 1);
    let y = layer(&mut net, "sig", "Sigmoid", Attributes::new(), &[y]);
    let z = conv(&mut net, "conv2", y, zero_in(weights(&[3, 4, 3, 3], 2, &[]), &[0, 3]), None, 1);
    net.mark_output(z).unwrap();
    let out = check(&net, &[("x", random(&[1, 3, 5, 5], 6, 1.0))]);
    assert_eq!(w_shape(&out, "conv1"), vec![2, 3, 3, 3]);
    assert_eq!(w_shape(&out, "conv2"), vec![3, 2, 3, 3]);
}

/// Depthwise: a dead channel of the conv before it removes its group; its constant output
/// (the depthwise bias, no padding) folds into the 1x1 conv after it.
#[test]
fn depthwise_groups_go_with_their_channel() {
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[1, 2, 6, 6]);
    let y = conv(&mut net, "expand", x, weights(&[6, 2, 1, 1], 1, &[0, 4]), None, 0);
    let lo = net.add_constant("lo", Tensor::scalar(0.0f32)).unwrap();
    let hi = net.add_constant("hi", Tensor::scalar(6.0f32)).unwrap();
    let y = layer(&mut net, "relu6", "Clip", Attributes::new(), &[y, lo, hi]);
    let dw_w = net.add_constant("dw_w", weights(&[6, 1, 3, 3], 2, &[])).unwrap();
    let dw_b = bias(&mut net, "dw_b", vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
    let attrs = Attributes::new().with("group", 6i64).with("pads", vec![1i64; 4]);
    let y = layer(&mut net, "dw", "Conv", attrs, &[y, dw_w, dw_b]);
    let y = layer(&mut net, "relu", "Relu", Attributes::new(), &[y]);
    let z = conv(&mut net, "project", y, weights(&[3, 6, 1, 1], 3, &[]), None, 0);
    net.mark_output(z).unwrap();
    let out = check(&net, &[("x", random(&[1, 2, 6, 6], 7, 1.0))]);
    assert_eq!(w_shape(&out, "dw"), vec![4, 1, 3, 3]);
    assert_eq!(out.layer_by_name("dw").unwrap().attrs.int("group", 0).unwrap(), 4);
    assert_eq!(w_shape(&out, "project"), vec![3, 4, 1, 1]);
}

/// Pooling, Flatten and a Gemm (transB) after the last conv; Concat and Split on the way.
#[test]
fn channels_are_tracked_through_concat_split_pooling_and_flatten() {
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[2, 3, 4, 4]);
    let b = bias(&mut net, "b_a", vec![0.5, -0.5, 0.25]);
    let ya = conv(&mut net, "conv_a", x, weights(&[3, 3, 1, 1], 1, &[0, 1]), Some(b), 0);
    let yb = conv(&mut net, "conv_b", x, weights(&[2, 3, 1, 1], 2, &[1]), None, 0);
    let cat = layer(&mut net, "cat", "Concat", Attributes::new().with("axis", 1i64), &[ya, yb]);
    let r = layer(&mut net, "relu", "Relu", Attributes::new(), &[cat]);
    let p = layer(&mut net, "pool", "MaxPool", Attributes::new().with("kernel_shape", vec![2i64, 2]), &[r]);
    let sizes = net.add_constant("sizes", Tensor::from_vec(vec![2], vec![2i64, 3]).unwrap()).unwrap();
    let outs = net
        .add_layer("split", "Split", Attributes::new().with("axis", 1i64), &[Some(p), Some(sizes)], &["s0", "s1"])
        .unwrap();
    let (s0, s1) = (outs[0].unwrap(), outs[1].unwrap());
    let z0 = conv(&mut net, "conv_c", s0, weights(&[2, 2, 1, 1], 3, &[]), None, 0);
    let g = layer(&mut net, "gap", "GlobalAveragePool", Attributes::new(), &[s1]);
    let f = layer(&mut net, "flat", "Flatten", Attributes::new(), &[g]);
    let fw = net.add_constant("fc_w", random(&[4, 3], 4, 0.5)).unwrap();
    let fb = bias(&mut net, "fc_b", vec![0.1, 0.2, 0.3, 0.4]);
    let z1 = layer(&mut net, "fc", "Gemm", Attributes::new().with("transB", 1i64), &[f, fw, fb]);
    net.mark_output(z0).unwrap();
    net.mark_output(z1).unwrap();
    let out = check(&net, &[("x", random(&[2, 3, 4, 4], 8, 1.0))]);
    // conv_a channels 0, 1 (all of s0, read by conv_c: channel 0 stays so s0 is not empty) and
    // conv_b channel 1 (s1 channel 2, into the Gemm).
    assert_eq!(w_shape(&out, "conv_a"), vec![2, 3, 1, 1]);
    assert_eq!(w_shape(&out, "conv_b"), vec![1, 3, 1, 1]);
    assert_eq!(w_shape(&out, "fc"), vec![4, 2]);
    // s0 kept one channel at least: conv_c reads it.
    assert_eq!(w_shape(&out, "conv_c")[1], 1);
}

/// BERT's FFN: MatMul → Add(bias) → Gelu → MatMul, neurons zeroed in the first product.
#[test]
fn ffn_neurons_leave_both_matmuls() {
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[1, 5, 8]);
    let mut w1 = random(&[8, 6], 1, 0.5);
    let v = w1.as_mut_slice::<f32>().unwrap();
    for r in 0..8 {
        v[r * 6 + 2] = 0.0;
        v[r * 6 + 5] = 0.0;
    }
    let w1 = net.add_constant("w1", w1).unwrap();
    let b1 = bias(&mut net, "b1", vec![0.1, 0.2, 0.0, 0.3, 0.4, 0.9]);
    let h = layer(&mut net, "mm1", "MatMul", Attributes::new(), &[x, w1]);
    let h = layer(&mut net, "bias1", "Add", Attributes::new(), &[h, b1]);
    let h = layer(&mut net, "gelu", "Gelu", Attributes::new(), &[h]);
    let w2 = net.add_constant("w2", random(&[6, 8], 2, 0.5)).unwrap();
    let y = layer(&mut net, "mm2", "MatMul", Attributes::new(), &[h, w2]);
    net.mark_output(y).unwrap();
    let out = check(&net, &[("x", random(&[1, 5, 8], 3, 1.0))]);
    assert_eq!(w_shape(&out, "mm1"), vec![8, 4]);
    // Neuron 5 was gelu(0.9) ≠ 0: its W2 row went into a new bias of mm2.
    assert_eq!(w_shape(&out, "mm2"), vec![4, 8]);
    assert_eq!(out.layer_by_name("mm2").unwrap().inputs.len(), 3);
}

/// What the caller reads, and ops that mix channels, pin them.
#[test]
fn outputs_and_opaque_readers_pin_channels() {
    // The zero channel is a network output.
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[1, 2, 3, 3]);
    let y = conv(&mut net, "conv1", x, weights(&[3, 2, 1, 1], 1, &[0]), None, 0);
    let z = conv(&mut net, "conv2", y, weights(&[2, 3, 1, 1], 2, &[]), None, 0);
    net.mark_output(y).unwrap();
    net.mark_output(z).unwrap();
    assert!(prune_channels(&net).unwrap().is_none());
    // A grouped (not depthwise) conv mixes channels in groups: it pins its input.
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[1, 2, 3, 3]);
    let y = conv(&mut net, "conv1", x, weights(&[4, 2, 1, 1], 1, &[0]), None, 0);
    let w = net.add_constant("gw", weights(&[4, 2, 1, 1], 2, &[])).unwrap();
    let z = layer(&mut net, "grouped", "Conv", Attributes::new().with("group", 2i64), &[y, w]);
    net.mark_output(z).unwrap();
    assert!(prune_channels(&net).unwrap().is_none());
    // Softmax over the channel axis.
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[1, 2, 3, 3]);
    let y = conv(&mut net, "conv1", x, weights(&[3, 2, 1, 1], 1, &[0]), None, 0);
    let z = layer(&mut net, "sm", "Softmax", Attributes::new().with("axis", 1i64), &[y]);
    net.mark_output(z).unwrap();
    assert!(prune_channels(&net).unwrap().is_none());
}

/// A layer whose every channel is dead keeps one (no empty tensors).
#[test]
fn a_tensor_never_loses_every_channel() {
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[1, 2, 3, 3]);
    let y = conv(&mut net, "conv1", x, weights(&[3, 2, 1, 1], 1, &[0, 1, 2]), None, 0);
    let z = conv(&mut net, "conv2", y, weights(&[2, 3, 1, 1], 2, &[]), None, 0);
    net.mark_output(z).unwrap();
    let out = check(&net, &[("x", random(&[1, 2, 3, 3], 3, 1.0))]);
    assert_eq!(w_shape(&out, "conv1")[0], 1);
}

/// No structured zeros: nothing to do.
#[test]
fn dense_networks_are_left_alone() {
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[1, 2, 3, 3]);
    let y = conv(&mut net, "conv1", x, weights(&[3, 2, 1, 1], 1, &[]), None, 0);
    let z = conv(&mut net, "conv2", y, weights(&[2, 3, 1, 1], 2, &[]), None, 0);
    net.mark_output(z).unwrap();
    assert!(prune_channels(&net).unwrap().is_none());
}

/// A BatchNormalization that could not fold into a conv (it follows a residual Add): a channel
/// with scale 0 is its shift, a constant, and goes from the BN and from the conv reading it
/// (its shift folds into that conv's bias). A per-channel Mul by 0 is 0 whatever its input.
#[test]
fn zero_scale_batch_norm_and_zero_mul_channels_go() {
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[1, 4, 5, 5]);
    let ya = conv(&mut net, "conv_a", x, weights(&[4, 4, 1, 1], 1, &[]), None, 0);
    let yb = conv(&mut net, "conv_b", x, weights(&[4, 4, 1, 1], 2, &[]), None, 0);
    let s = layer(&mut net, "add", "Add", Attributes::new(), &[ya, yb]);
    let p: Vec<TensorId> =
        [vec![0.0f32, 1.5, 0.7, 1.1], vec![0.3, -0.2, 0.1, 0.4], vec![0.05, 0.1, -0.1, 0.2], vec![1.0, 0.5, 2.0, 1.5]]
            .into_iter()
            .enumerate()
            .map(|(i, v)| bias(&mut net, &format!("bn{i}"), v))
            .collect();
    let y = layer(&mut net, "bn", "BatchNormalization", Attributes::new(), &[s, p[0], p[1], p[2], p[3]]);
    let gate = net.add_constant("gate", Tensor::from_vec(vec![4, 1, 1], vec![1.0f32, 1.0, 0.0, 2.0]).unwrap()).unwrap();
    let y = layer(&mut net, "gate_mul", "Mul", Attributes::new(), &[y, gate]);
    let z = conv(&mut net, "conv_c", y, weights(&[3, 4, 1, 1], 3, &[]), None, 0);
    net.mark_output(z).unwrap();
    let out = check(&net, &[("x", random(&[1, 4, 5, 5], 9, 1.0))]);
    assert_eq!(w_shape(&out, "conv_a"), vec![2, 4, 1, 1]);
    assert_eq!(w_shape(&out, "conv_c"), vec![3, 2, 1, 1]);
    let bn = out.layer_by_name("bn").unwrap();
    assert_eq!(out.tensor(bn.inputs[1].unwrap()).constant().unwrap().len(), 2);
}
