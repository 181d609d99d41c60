use super::*;
use crate::passes::pattern::testing::{assert_close, random};
use crate::passes::test_support::{input, layer};
use kiln_ir::Attributes;

const H: usize = 4;
const D: usize = 3;
const E: usize = H * D;

/// x → MatMul(x, [Bq Bk Bv], [bq bk bv]) → Split → Attention(q, k, v, mask, H heads) →
/// MatMul(y, Wo, bo): the form fuse_parallel_gemms + fuse_attention leave. `zero` edits the
/// packed weights, the output projection and the packed bias before they become constants.
fn attention_net(zero: impl Fn(&mut [f32], &mut [f32], &mut [f32])) -> (Network, Vec<(&'static str, Tensor)>) {
    let mut net = Network::new("t");
    let x = input(&mut net, "x", &[2, 5, 8]);
    let mask = input(&mut net, "mask", &[2, 1, 1, 5]);
    let mut w = random(&[8, 3 * E], 1, 0.5);
    let mut wo = random(&[E, 6], 2, 0.5);
    let mut b = random(&[3 * E], 3, 0.5);
    zero(w.as_mut_slice::<f32>().unwrap(), wo.as_mut_slice::<f32>().unwrap(), b.as_mut_slice::<f32>().unwrap());
    let w = net.add_constant("w_qkv", w).unwrap();
    let b = net.add_constant("b_qkv", b).unwrap();
    let p = layer(&mut net, "qkv", "MatMul", Attributes::new(), &[x, w, b]);
    let sizes = net.add_constant("sizes", Tensor::from_vec(vec![3], vec![E as i64; 3]).unwrap()).unwrap();
    let outs = net
        .add_layer("split", "Split", Attributes::new().with("axis", -1i64), &[Some(p), Some(sizes)], &["q", "k", "v"])
        .unwrap();
    let [q, k, v] = [0, 1, 2].map(|i| outs[i].unwrap());
    let attrs = Attributes::new()
        .with("q_num_heads", H as i64)
        .with("kv_num_heads", H as i64)
        .with("scale", 0.5f32)
        .with(kiln_ir::spec::ATTENTION_MASK_BROADCAST_ATTR, 1i64);
    let y = layer(&mut net, "att", "Attention", attrs, &[q, k, v, mask]);
    let wo = net.add_constant("wo", wo).unwrap();
    let bo = net.add_constant("bo", random(&[6], 4, 0.5)).unwrap();
    let o = layer(&mut net, "out", "MatMul", Attributes::new(), &[y, wo, bo]);
    net.mark_output(o).unwrap();
    let inputs = vec![("x", random(&[2, 5, 8], 5, 1.0)), ("mask", random(&[2, 1, 1, 5], 6, 1.0))];
    (net, inputs)
}

fn heads(net: &Network) -> i64 {
    net.layer_by_name("att").unwrap().attrs.int("q_num_heads", 0).unwrap()
}

/// Zero rows of Wo: nothing the head computes reaches the output.
#[test]
fn a_head_whose_output_rows_are_zero_goes() {
    let (net, inputs) = attention_net(|_, wo, _| {
        for r in D..2 * D {
            wo[r * 6..(r + 1) * 6].iter_mut().for_each(|x| *x = 0.0);
        }
    });
    let (out, changes) = prune_heads(&net).unwrap().expect("pruned");
    assert_eq!(heads(&out), H as i64 - 1);
    assert!(changes.iter().any(|c| c.what == "heads" && c.before == H && c.after == H - 1));
    assert_close(&net, &out, &inputs, 1e-5);
    assert!(prune_heads(&out).unwrap().is_none(), "a fixpoint");
}

/// Zero V columns and V bias: the head's context is zero.
#[test]
fn a_head_whose_values_are_zero_goes() {
    let (net, inputs) = attention_net(|w, _, b| {
        for h in [0, 3] {
            for c in 2 * E + h * D..2 * E + (h + 1) * D {
                (0..8).for_each(|r| w[r * 3 * E + c] = 0.0);
                b[c] = 0.0;
            }
        }
    });
    let (out, _) = prune_heads(&net).unwrap().expect("pruned");
    assert_eq!(heads(&out), 2);
    assert_close(&net, &out, &inputs, 1e-5);
}

/// Zero Q and K slices leave uniform scores: the head still averages V, so it stays. Zero V
/// columns with a non-zero V bias give a constant context, which is not zero either.
#[test]
fn heads_that_still_contribute_stay() {
    let (net, _) = attention_net(|w, _, b| {
        for c in (0..D).chain(E..E + D) {
            (0..8).for_each(|r| w[r * 3 * E + c] = 0.0);
            b[c] = 0.0;
        }
        for c in 2 * E + D..2 * E + 2 * D {
            (0..8).for_each(|r| w[r * 3 * E + c] = 0.0);
        }
    });
    assert!(prune_heads(&net).unwrap().is_none());
}
