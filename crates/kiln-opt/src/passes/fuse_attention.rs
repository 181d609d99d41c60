//! Scaled dot-product attention written out becomes one ONNX `Attention` (opset 23):
//!
//! ```text
//! MatMul(Softmax(Add(Div(MatMul(Q, Kᵀ), c), mask), axis=-1), V)
//!   → Attention(Q, K, V, attn_mask = mask, scale = 1/c)
//! ```
//!
//! with `Div(·, c)` or `Mul(·, c)` (or no scaling: scale 1) and the mask optional. Q, Kᵀ and V
//! must be 4-D with equal batch and head dims ([b, h, sq, d], [b, h, d, skv], [b, h, skv, dv]);
//! Attention wants K as [b, h, skv, d]: when Kᵀ is a Transpose (BERT's `perm [0, 2, 3, 1]` of the
//! [b, s, h, d] tensor) it becomes the Transpose that yields K directly (none if that is the
//! identity), otherwise a Transpose of Kᵀ's last two axes is added.
//!
//! The additive mask keeps the Add's broadcasting: ONNX Attention pads a mask shorter than the
//! key length with -inf, where Add broadcasts a last dim of 1, so the fused layer carries
//! [`spec::ATTENTION_MASK_BROADCAST_ATTR`] (every mask dim 1 or equal, as for Add). Symbolic
//! exports often leave the sequence dims unknown, so equality is checked by the kernel at run
//! time; a mask that would *grow* the scores (Add broadcasting a scores dim of 1) is rejected
//! here when the dims say so and is an error at run time otherwise.
//!
//! When Q, K and V come from `Transpose(Reshape(x, [b, s, h, d]), [0, 2, 1, 3])` of 3-D tensors
//! (K: the BERT `perm [0, 2, 3, 1]` form) and the output goes through `Transpose([0, 2, 1, 3])`
//! and `Reshape([b, s, h·dv])`, the packed form is used instead: Attention on the 3-D tensors with
//! `q_num_heads` / `kv_num_heads`, which splits and merges the heads itself (the same arithmetic),
//! so those eight layers go too.
//!
//! One difference remains, by design: a query row whose mask is -inf for every key gives NaN in
//! the decomposed form and zeros in Attention.

use crate::passes::pattern::{self, fused_attr, only_output, same_dim, Graph, Rewrite};
use crate::Pass;
use kiln_ir::{spec, Attributes, Dim, IrError, Layer, Network, TensorId};

pub struct FuseAttention;

impl Pass for FuseAttention {
    fn name(&self) -> &'static str {
        "fuse-attention"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        let g = Graph::new(net);
        let rewrites = (0..net.layers().len()).filter_map(|i| matched(&g, i)).collect();
        pattern::apply(net, rewrites)
    }
}

/// `MatMul(Q, Kᵀ)`, optionally scaled by a constant: (layers, Q, Kᵀ, scale).
fn scores(g: &Graph, t: TensorId) -> Option<(Vec<usize>, TensorId, TensorId, f64)> {
    let (i, layer) = g.producer_any(t)?;
    let (layers, s, scale) = match layer.op.as_str() {
        "MatMul" if plain_matmul(layer) => {
            let (q, kt) = pattern::two_inputs(layer)?;
            return Some((vec![i], q, kt, 1.0));
        }
        "Div" => {
            let (s, c, first) = g.with_scalar(layer, false)?;
            (!first && c != 0.0).then_some((vec![i], s, 1.0 / c))?
        }
        "Mul" => {
            let (s, c, _) = g.with_scalar(layer, true)?;
            (vec![i], s, c)
        }
        _ => return None,
    };
    let (mi, mm) = g.producer(s, "MatMul").filter(|(_, l)| plain_matmul(l))?;
    let (q, kt) = pattern::two_inputs(mm)?;
    Some(([layers, vec![mi]].concat(), q, kt, scale))
}

/// A two-input MatMul without epilogue attributes.
fn plain_matmul(layer: &Layer) -> bool {
    layer.op == "MatMul" && layer.inputs.len() == 2 && layer.attrs.iter().all(|(k, _)| k == spec::FUSED_NODES_ATTR)
}

/// The packed (3-D) form: Q, K and V each `Transpose(Reshape(x, [b, s, h, d]), [0, 2, 1, 3])` of
/// a 3-D x, and the output `Reshape(Transpose(y, [0, 2, 1, 3]), [b, s, h·dv])`. Attention with
/// `q_num_heads` / `kv_num_heads` splits and merges heads itself, so all of these go.
struct Packed {
    xq: TensorId,
    xk: TensorId,
    xv: TensorId,
    q_heads: usize,
    kv_heads: usize,
    layers: Vec<usize>,
    out: TensorId,
}

/// `r = Reshape(x, target)` splitting the last dim of a 3-D x into [heads, head size] and
/// keeping the first two dims: (x, heads, reshape layer).
fn head_split(g: &Graph, r: TensorId) -> Option<(TensorId, usize, usize)> {
    let (ri, reshape) = g.producer(r, "Reshape")?;
    let x = reshape.inputs.first().copied().flatten()?;
    let target = g.constant(reshape.inputs.get(1).copied().flatten()?)?.to_i64_vec();
    let xs = g.shape(x)?;
    let [t0, t1, h, d] = target[..] else { return None };
    let keeps = |t: i64, dim: &Dim| t == 0 || (t > 0 && *dim == Dim::Known(t as usize));
    let ok = reshape.attrs.int("allowzero", 0).ok()? == 0
        && xs.len() == 3
        && keeps(t0, &xs[0])
        && keeps(t1, &xs[1])
        && h > 0
        && d > 0
        && xs[2] == Dim::Known((h * d) as usize);
    ok.then_some((x, h as usize, ri))
}

/// `t = Transpose(Reshape(x, [b, s, h, d]), [0, 2, 1, 3])`: (x, heads, layers).
fn packed_input(g: &Graph, t: TensorId) -> Option<(TensorId, usize, Vec<usize>)> {
    let (ti, transpose) = g.producer(t, "Transpose")?;
    if transpose.attrs.ints_opt("perm").ok()?? != [0, 2, 1, 3] {
        return None;
    }
    let (x, h, ri) = head_split(g, transpose.inputs.first().copied().flatten()?)?;
    Some((x, h, vec![ti, ri]))
}

fn packed(g: &Graph, q: TensorId, k: (TensorId, &[i64]), v: TensorId, y: TensorId) -> Option<Packed> {
    let (xq, q_heads, mut layers) = packed_input(g, q)?;
    let (xv, kv_heads, v_layers) = packed_input(g, v)?;
    if k.1 != [0, 2, 1, 3] {
        return None;
    }
    let (xk, k_heads, rk) = head_split(g, k.0)?;
    if k_heads != kv_heads {
        return None;
    }
    layers.extend(v_layers);
    layers.push(rk);
    // The output: merge the heads back into [b, s, h·dv].
    let [t] = g.readers(y) else { return None };
    let transpose = g.layer(*t);
    let merged = only_output(transpose)?;
    let [r] = g.readers(merged) else { return None };
    let reshape = g.layer(*r);
    let ys = g.shape(merged)?;
    let target = g.constant(reshape.inputs.get(1).copied().flatten()?)?.to_i64_vec();
    let keeps = |t: i64, dim: &Dim| t == 0 || (t > 0 && *dim == Dim::Known(t as usize));
    let ok = transpose.op == "Transpose"
        && transpose.attrs.ints_opt("perm").ok()?? == [0, 2, 1, 3]
        && reshape.op == "Reshape"
        && reshape.attrs.int("allowzero", 0).ok()? == 0
        && reshape.inputs.first().copied().flatten() == Some(merged)
        && ys.len() == 4
        && target.len() == 3
        && keeps(target[0], &ys[0])
        && keeps(target[1], &ys[1])
        && match (&ys[2], &ys[3]) {
            (Dim::Known(h), Dim::Known(dv)) => target[2] == -1 || target[2] == (h * dv) as i64,
            _ => false,
        };
    if !ok {
        return None;
    }
    layers.extend([*t, *r]);
    Some(Packed { xq, xk, xv, q_heads, kv_heads, layers, out: only_output(reshape)? })
}

fn matched(g: &Graph, root: usize) -> Option<Rewrite> {
    let layer = g.layer(root);
    if !plain_matmul(layer) {
        return None;
    }
    let (p, v) = pattern::two_inputs(layer)?;
    let (smi, softmax) = g.producer(p, "Softmax")?;
    let logits = softmax.inputs.first().copied().flatten()?;
    let rank4 = |id| g.shape(id).filter(|s| s.len() == 4);
    let axis = softmax.attrs.int("axis", -1).ok()?;
    if axis != -1 && axis != 3 || rank4(logits).is_none() {
        return None;
    }
    // Scores, with the mask added to them (either operand order).
    let (mut covered, q, kt, scale, mask) = match scores(g, logits) {
        Some((layers, q, kt, scale)) => (layers, q, kt, scale, None),
        None => {
            let (ai, add) = g.producer(logits, "Add")?;
            let (a, b) = pattern::two_inputs(add)?;
            let ((layers, q, kt, scale), mask) =
                scores(g, a).map(|s| (s, b)).or_else(|| scores(g, b).map(|s| (s, a)))?;
            ([layers, vec![ai]].concat(), q, kt, scale, Some(mask))
        }
    };
    covered.extend([smi, root]);

    let (qs, kts, vs) = (rank4(q)?, rank4(kt)?, rank4(v)?);
    let dtype = g.dtype(q)?;
    if !dtype.is_float() || g.dtype(kt)? != dtype || g.dtype(v)? != dtype {
        return None;
    }
    // MatMul broadcasts batch and head dims, Attention does not: they must be equal. The
    // contracted dims (Q's and Kᵀ's head size, Kᵀ's and V's key length) need no check: both
    // forms fail at run time when they differ.
    let dims_ok =
        [(&qs[0], &kts[0]), (&qs[0], &vs[0]), (&qs[1], &kts[1]), (&qs[1], &vs[1])].iter().all(|(a, b)| same_dim(a, b));
    if !dims_ok {
        return None;
    }
    if let Some(m) = mask {
        // Attention broadcasts the mask as the Add did (kiln_mask_broadcast) and fails where the
        // Add would have grown the scores; reject what is known to grow them now.
        let ms = g.shape(m)?;
        let full = [&qs[0], &qs[1], &qs[2], &kts[3]];
        let grows = |d: &Dim, f: &Dim| matches!((d, f), (Dim::Known(n), Dim::Known(k)) if n != k && *n != 1);
        let fits = g.dtype(m)? == dtype
            && (1..=4).contains(&ms.len())
            && !ms.iter().rev().zip(full.iter().rev()).any(|(d, f)| grows(d, f));
        if !fits {
            return None;
        }
    }

    // K = [b, h, skv, d]: undo Kᵀ's Transpose when only this product reads it.
    let qk = *covered.iter().find(|&&i| g.layer(i).op == "MatMul")?;
    let k_source = match g.producer(kt, "Transpose") {
        Some((ti, t)) if g.readers(kt) == [qk] && !g.is_output(kt) => {
            let perm = t.attrs.ints_opt("perm").ok()??;
            if perm.len() != 4 {
                return None;
            }
            covered.push(ti);
            let swapped = vec![perm[0], perm[1], perm[3], perm[2]];
            let input = t.inputs.first().copied().flatten()?;
            Some((input, swapped, Some(t.name.clone())))
        }
        _ => None,
    };
    let (k_in, k_perm, k_name) = k_source.unwrap_or((kt, vec![0, 1, 3, 2], None));

    let out = only_output(layer)?;
    let name = layer.name.clone();
    let mut attrs = Attributes::new().with("scale", scale as f32);
    if mask.is_some() {
        attrs.set(spec::ATTENTION_MASK_BROADCAST_ATTR, 1i64);
    }
    // The packed form when the heads are split and merged by Reshape + Transpose around it.
    if let Some(p) = packed(g, q, (k_in, &k_perm), v, out) {
        let all: Vec<usize> = covered.iter().chain(&p.layers).copied().collect();
        if g.sealed(&all, &[p.out]) {
            attrs.set("q_num_heads", p.q_heads as i64);
            attrs.set("kv_num_heads", p.kv_heads as i64);
            attrs.set(spec::FUSED_NODES_ATTR, fused_attr(g.net, &all));
            let at = *all.iter().max()?;
            let Packed { xq, xk, xv, out, .. } = p;
            return Some(Rewrite {
                covered: all,
                at,
                emit: Box::new(move |rb| {
                    let ins =
                        [Some(rb.map(xq)?), Some(rb.map(xk)?), Some(rb.map(xv)?), mask.map(|m| rb.map(m)).transpose()?];
                    rb.add_layer(&name, "Attention", attrs, &ins, &[Some(out)])?;
                    Ok(())
                }),
            });
        }
    }
    if !g.sealed(&covered, &[out]) {
        return None;
    }
    attrs.set(spec::FUSED_NODES_ATTR, fused_attr(g.net, &covered));
    Some(Rewrite {
        covered,
        at: root,
        emit: Box::new(move |rb| {
            let mut k = rb.map(k_in)?;
            if k_perm != [0, 1, 2, 3] {
                let base = k_name.unwrap_or_else(|| format!("{name}::k_transpose"));
                let tname = pattern::fresh_layer_name(rb, &base);
                let out = pattern::fresh_name(rb, &format!("{tname}_output_k"));
                let perm = Attributes::new().with("perm", k_perm);
                k = rb.add_new_layer(&tname, "Transpose", perm, &[Some(k)], &[&out])?[0].expect("named output");
            }
            let ins = [Some(rb.map(q)?), Some(k), Some(rb.map(v)?), mask.map(|m| rb.map(m)).transpose()?];
            rb.add_layer(&name, "Attention", attrs, &ins, &[Some(out)])?;
            Ok(())
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::dead_layers::DeadLayerElimination;
    use crate::passes::pattern::testing::*;
    use crate::passes::test_support::layer;
    use kiln_ir::Tensor;

    const B: usize = 2;
    const H: usize = 3;
    const S: usize = 5;
    const D: usize = 4;

    fn sym(s: &str) -> Dim {
        Dim::Symbol(s.into())
    }

    #[derive(Clone, Copy)]
    enum KForm {
        /// BERT: Kᵀ = Transpose([b, s, h, d], perm [0, 2, 3, 1]).
        Bert,
        /// Kᵀ = Transpose(K, perm [0, 1, 3, 2]).
        Swap,
        /// Kᵀ is an input.
        Given,
    }

    struct Opts {
        k: KForm,
        scale: Option<(&'static str, f32)>,
        mask: Option<[usize; 4]>,
        axis: i64,
    }

    const BERT: Opts = Opts { k: KForm::Bert, scale: Some(("Div", 2.0)), mask: Some([B, 1, 1, S]), axis: -1 };

    fn build(o: &Opts) -> (Network, Vec<(&'static str, Tensor)>) {
        let mut net = Network::new("t");
        let (b, s) = (sym("batch"), sym("seq"));
        let bhsd = [b.clone(), Dim::Known(H), s.clone(), Dim::Known(D)];
        let q = sym_input(&mut net, "q", &bhsd);
        let v = sym_input(&mut net, "v", &bhsd);
        let mut inputs = vec![("q", random(&[B, H, S, D], 1, 1.0)), ("v", random(&[B, H, S, D], 2, 1.0))];
        let kt = match o.k {
            KForm::Bert => {
                let k = sym_input(&mut net, "k", &[b.clone(), s.clone(), Dim::Known(H), Dim::Known(D)]);
                inputs.push(("k", random(&[B, S, H, D], 3, 1.0)));
                layer(&mut net, "kt", "Transpose", Attributes::new().with("perm", vec![0i64, 2, 3, 1]), &[k])
            }
            KForm::Swap => {
                let k = sym_input(&mut net, "k", &bhsd);
                inputs.push(("k", random(&[B, H, S, D], 3, 1.0)));
                layer(&mut net, "kt", "Transpose", Attributes::new().with("perm", vec![0i64, 1, 3, 2]), &[k])
            }
            KForm::Given => {
                let kt = sym_input(&mut net, "kt", &[b.clone(), Dim::Known(H), Dim::Known(D), s.clone()]);
                inputs.push(("kt", random(&[B, H, D, S], 3, 1.0)));
                kt
            }
        };
        let mut x = layer(&mut net, "qk", "MatMul", Attributes::new(), &[q, kt]);
        if let Some((op, c)) = o.scale {
            let c = net.add_constant("c", Tensor::scalar(c)).unwrap();
            x = layer(&mut net, "scale", op, Attributes::new(), &[x, c]);
        }
        if let Some(ms) = o.mask {
            let dims: Vec<Dim> = ms
                .iter()
                .map(|&d| match d {
                    B => b.clone(),
                    S => s.clone(),
                    n => Dim::Known(n),
                })
                .collect();
            let m = sym_input(&mut net, "mask", &dims);
            let mut mv = random(&ms, 4, 1.0).to_f64_vec();
            // Some keys masked out the way BERT does (-10000).
            mv.iter_mut().step_by(3).for_each(|x| *x = -10000.0);
            let mv = Tensor::from_vec(ms.to_vec(), mv.iter().map(|&x| x as f32).collect()).unwrap();
            inputs.push(("mask", mv));
            x = layer(&mut net, "add_mask", "Add", Attributes::new(), &[m, x]);
        }
        let p = layer(&mut net, "softmax", "Softmax", Attributes::new().with("axis", o.axis), &[x]);
        let y = layer(&mut net, "pv", "MatMul", Attributes::new(), &[p, v]);
        net.mark_output(y).unwrap();
        (net, inputs)
    }

    fn check(o: &Opts, expect: &[&str], scale: f32) {
        let (net, inputs) = build(o);
        let out = FuseAttention.run(&net).unwrap().expect("fused");
        let out = DeadLayerElimination.run(&out).unwrap().unwrap_or(out);
        assert_eq!(ops(&out), expect);
        let att = out.layers().last().unwrap();
        assert_eq!(att.attrs.float("scale", 0.0).unwrap(), scale);
        assert_close(&net, &out, &inputs, 1e-5);
    }

    #[test]
    fn berts_attention_becomes_one_attention() {
        check(&BERT, &["Transpose", "Attention"], 0.5);
        let (net, _) = build(&BERT);
        let out = FuseAttention.run(&net).unwrap().unwrap();
        let t = out.layers().iter().find(|l| l.op == "Transpose").unwrap();
        assert_eq!(t.attrs.ints("perm", vec![]).unwrap(), vec![0, 2, 1, 3]);
        let att = out.layers().iter().find(|l| l.op == "Attention").unwrap();
        assert_eq!(spec::fused_nodes(att), vec!["kt", "qk", "scale", "add_mask", "softmax", "pv"]);
    }

    #[test]
    fn variants_of_scale_mask_and_k() {
        check(&Opts { scale: Some(("Mul", 0.25)), ..BERT }, &["Transpose", "Attention"], 0.25);
        check(&Opts { scale: None, mask: None, ..BERT }, &["Transpose", "Attention"], 1.0);
        check(&Opts { k: KForm::Swap, ..BERT }, &["Attention"], 0.5);
        check(&Opts { k: KForm::Given, ..BERT }, &["Transpose", "Attention"], 0.5);
        check(&Opts { mask: Some([1, 1, S, S]), ..BERT }, &["Transpose", "Attention"], 0.5);
        check(&Opts { mask: Some([1, 1, 1, S]), axis: 3, ..BERT }, &["Transpose", "Attention"], 0.5);
    }

    #[test]
    fn a_mask_broadcast_along_the_keys_stays_a_broadcast() {
        // ONNX Attention would pad this mask with -inf; the fused layer broadcasts it like Add.
        check(&Opts { mask: Some([B, 1, 1, 1]), ..BERT }, &["Transpose", "Attention"], 0.5);
    }

    /// BERT's whole self-attention from the 3-D projections: split heads, attention, merge.
    fn packed_net(out_target: &[i64]) -> (Network, Vec<(&'static str, Tensor)>) {
        let mut net = Network::new("t");
        let (b, s) = (sym("batch"), sym("seq"));
        let hidden = [b.clone(), s.clone(), Dim::Known(H * D)];
        let split = |net: &mut Network, name: &str, x: TensorId, perm: Vec<i64>| {
            let t = Tensor::from_vec(vec![4], vec![0i64, 0, H as i64, D as i64]).unwrap();
            let t = net.add_constant(&format!("{name}_shape"), t).unwrap();
            let r = layer(net, &format!("{name}_reshape"), "Reshape", Attributes::new(), &[x, t]);
            layer(net, &format!("{name}_transpose"), "Transpose", Attributes::new().with("perm", perm), &[r])
        };
        let xq = sym_input(&mut net, "xq", &hidden);
        let xk = sym_input(&mut net, "xk", &hidden);
        let xv = sym_input(&mut net, "xv", &hidden);
        let m = sym_input(&mut net, "mask", &[b.clone(), Dim::Known(1), Dim::Known(1), s.clone()]);
        let q = split(&mut net, "q", xq, vec![0, 2, 1, 3]);
        let kt = split(&mut net, "k", xk, vec![0, 2, 3, 1]);
        let v = split(&mut net, "v", xv, vec![0, 2, 1, 3]);
        let x = layer(&mut net, "qk", "MatMul", Attributes::new(), &[q, kt]);
        let c = net.add_constant("c", Tensor::scalar(2.0f32)).unwrap();
        let x = layer(&mut net, "scale", "Div", Attributes::new(), &[x, c]);
        let x = layer(&mut net, "add_mask", "Add", Attributes::new(), &[x, m]);
        let p = layer(&mut net, "softmax", "Softmax", Attributes::new().with("axis", -1i64), &[x]);
        let y = layer(&mut net, "pv", "MatMul", Attributes::new(), &[p, v]);
        let y = layer(&mut net, "merge", "Transpose", Attributes::new().with("perm", vec![0i64, 2, 1, 3]), &[y]);
        let t = Tensor::from_vec(vec![out_target.len()], out_target.to_vec()).unwrap();
        let t = net.add_constant("out_shape", t).unwrap();
        let y = layer(&mut net, "out", "Reshape", Attributes::new(), &[y, t]);
        net.mark_output(y).unwrap();
        let mut mask = random(&[B, 1, 1, S], 4, 1.0).to_f64_vec();
        mask[S - 1] = -10000.0;
        let mask = Tensor::from_vec(vec![B, 1, 1, S], mask.iter().map(|&x| x as f32).collect()).unwrap();
        let inputs = vec![
            ("xq", random(&[B, S, H * D], 1, 1.0)),
            ("xk", random(&[B, S, H * D], 2, 1.0)),
            ("xv", random(&[B, S, H * D], 3, 1.0)),
            ("mask", mask),
        ];
        (net, inputs)
    }

    #[test]
    fn split_heads_and_merge_around_it_give_the_packed_form() {
        for target in [vec![0i64, 0, (H * D) as i64], vec![0, 0, -1]] {
            let (net, inputs) = packed_net(&target);
            let out = FuseAttention.run(&net).unwrap().expect("fused");
            let out = DeadLayerElimination.run(&out).unwrap().unwrap_or(out);
            assert_eq!(ops(&out), vec!["Attention"]);
            let att = &out.layers()[0];
            assert_eq!(att.attrs.int("q_num_heads", 0).unwrap(), H as i64);
            assert_eq!(att.attrs.int("kv_num_heads", 0).unwrap(), H as i64);
            assert_eq!(spec::fused_nodes(att).len(), 13);
            assert_eq!(out.tensor(out.outputs()[0]).ty.as_ref().unwrap().to_string(), "f32[batch, seq, 12]");
            assert_close(&net, &out, &inputs, 1e-5);
        }
    }

    #[test]
    fn dead_shape_readers_do_not_block_the_packed_form() {
        // Before dead-layer elimination runs, the exporter's Shape of the merged tensor still
        // reads it (its Reshape target was just folded to a constant).
        let (mut net, inputs) = packed_net(&[0, 0, (H * D) as i64]);
        let merged = net.tensor_by_name("merge_out").unwrap();
        layer(&mut net, "dead_shape", "Shape", Attributes::new(), &[merged]);
        let out = FuseAttention.run(&net).unwrap().expect("fused");
        assert_eq!(ops(&out), vec!["Attention"]);
        assert_close(&net, &out, &inputs, 1e-5);
    }

    #[test]
    fn an_output_that_is_not_merged_keeps_the_4d_form() {
        let (net, inputs) = packed_net(&[0, 0, 2, 6]);
        let out = FuseAttention.run(&net).unwrap().expect("fused");
        let out = DeadLayerElimination.run(&out).unwrap().unwrap_or(out);
        let att = out.layers().iter().find(|l| l.op == "Attention").unwrap();
        assert!(!att.attrs.contains("q_num_heads"));
        assert_eq!(out.layers().iter().filter(|l| l.op == "Transpose").count(), 4);
        assert_close(&net, &out, &inputs, 1e-5);
    }

    #[test]
    fn softmax_over_another_axis_blocks_it() {
        let (net, _) = build(&Opts { axis: 2, ..BERT });
        assert!(FuseAttention.run(&net).unwrap().is_none());
    }

    #[test]
    fn a_mask_that_grows_the_scores_blocks_it() {
        // One query row, a mask with five: Add broadcasts the scores to five rows.
        let mut net = Network::new("t");
        let q = sym_input(&mut net, "q", &[Dim::Known(1), Dim::Known(3), Dim::Known(1), Dim::Known(4)]);
        let kt = sym_input(&mut net, "kt", &[Dim::Known(1), Dim::Known(3), Dim::Known(4), Dim::Known(5)]);
        let v = sym_input(&mut net, "v", &[Dim::Known(1), Dim::Known(3), Dim::Known(5), Dim::Known(4)]);
        let m = sym_input(&mut net, "m", &[Dim::Known(1), Dim::Known(1), Dim::Known(5), Dim::Known(5)]);
        let x = layer(&mut net, "qk", "MatMul", Attributes::new(), &[q, kt]);
        let x = layer(&mut net, "add", "Add", Attributes::new(), &[x, m]);
        let p = layer(&mut net, "softmax", "Softmax", Attributes::new().with("axis", -1i64), &[x]);
        let y = layer(&mut net, "pv", "MatMul", Attributes::new(), &[p, v]);
        net.mark_output(y).unwrap();
        assert!(FuseAttention.run(&net).unwrap().is_none());
    }

    #[test]
    fn unknown_sequence_dims_still_fuse() {
        // What symbolic exports give: the key length unknown, the mask's a named symbol.
        let mut net = Network::new("t");
        let (b, u) = (sym("batch"), Dim::Unknown);
        let q = sym_input(&mut net, "q", &[b.clone(), Dim::Known(H), u.clone(), Dim::Known(D)]);
        let kt = sym_input(&mut net, "kt", &[b.clone(), Dim::Known(H), Dim::Known(D), u.clone()]);
        let v = sym_input(&mut net, "v", &[b.clone(), Dim::Known(H), u.clone(), Dim::Known(D)]);
        let m = sym_input(&mut net, "m", &[b.clone(), Dim::Known(1), Dim::Known(1), sym("seq")]);
        let x = layer(&mut net, "qk", "MatMul", Attributes::new(), &[q, kt]);
        let x = layer(&mut net, "add", "Add", Attributes::new(), &[x, m]);
        let p = layer(&mut net, "softmax", "Softmax", Attributes::new().with("axis", -1i64), &[x]);
        let y = layer(&mut net, "pv", "MatMul", Attributes::new(), &[p, v]);
        net.mark_output(y).unwrap();
        let out = FuseAttention.run(&net).unwrap().expect("fused");
        assert_eq!(ops(&out), vec!["Transpose", "Attention"]);
        let inputs = [
            ("q", random(&[B, H, S, D], 1, 1.0)),
            ("kt", random(&[B, H, D, S], 2, 1.0)),
            ("v", random(&[B, H, S, D], 3, 1.0)),
            ("m", random(&[B, 1, 1, S], 4, 1.0)),
        ];
        assert_close(&net, &out, &inputs, 1e-5);
        // A mask that covers only some keys fails in both forms (Attention would pad it).
        let short = [("m", random(&[B, 1, 1, S - 1], 4, 1.0))];
        let bind = |n: &Network| {
            let m = inputs[..3].iter().chain(&short).map(|(k, t)| (k.to_string(), kiln_ir::Value::Tensor(t.clone())));
            kiln_cpu::execute_named(n, m.collect())
        };
        assert!(bind(&net).is_err());
        assert!(bind(&out).is_err());
    }

    #[test]
    fn a_second_reader_of_the_probabilities_blocks_it() {
        let (mut net, _) = build(&BERT);
        let p = net.tensor_by_name("softmax_out").unwrap();
        net.mark_output(p).unwrap();
        assert!(FuseAttention.run(&net).unwrap().is_none());
    }

    #[test]
    fn broadcast_heads_are_not_attention() {
        // K with one head broadcast by MatMul against Q's three: Attention would need GQA.
        let mut net = Network::new("t");
        let q = sym_input(&mut net, "q", &[Dim::Known(1), Dim::Known(3), Dim::Known(5), Dim::Known(4)]);
        let kt = sym_input(&mut net, "kt", &[Dim::Known(1), Dim::Known(1), Dim::Known(4), Dim::Known(5)]);
        let v = sym_input(&mut net, "v", &[Dim::Known(1), Dim::Known(3), Dim::Known(5), Dim::Known(4)]);
        let x = layer(&mut net, "qk", "MatMul", Attributes::new(), &[q, kt]);
        let p = layer(&mut net, "softmax", "Softmax", Attributes::new().with("axis", -1i64), &[x]);
        let y = layer(&mut net, "pv", "MatMul", Attributes::new(), &[p, v]);
        net.mark_output(y).unwrap();
        assert!(FuseAttention.run(&net).unwrap().is_none());
    }
}
