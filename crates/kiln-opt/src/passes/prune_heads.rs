//! Attention-head pruning on the fused form:
//!
//! ```text
//! P = MatMul(x, [Bq Bk Bv], [bq bk bv]);  q, k, v = Split(P)      (or three MatMuls)
//! y = Attention(q, k, v, mask?, q_num_heads = kv_num_heads = H)   (packed 3-D form)
//! o = MatMul(y, Wo, bo?)
//! ```
//!
//! Head `h` is dead when the rows of `Wo` it feeds are all zero (nothing it computes reaches
//! `o`), or when its V columns and V bias are all zero (its context is `softmax · 0 = 0`). A dead
//! head's columns go from the Q, K and V weights and biases, its rows from `Wo`, and the head
//! counts drop: the attention computes fewer, equally sized heads (its scale is explicit, so it
//! does not change).
//!
//! Why here, after `fuse_parallel_gemms` and `fuse_attention`: a head is then one column range
//! of one product, one count on one layer and one row range of the next product. Before them a
//! head is spread over three MatMuls, three Adds, Reshape targets computed by shape
//! sub-graphs, Transposes and a merge Reshape, all of which would have to agree.
//!
//! Heads whose Q or K slices alone are zero are not dead: their scores are uniform, and the head
//! still averages V.

use crate::passes::pattern::{live_layers, only_output, Graph};
use crate::passes::prune::{apply_edits, Edit, LayerChange, Replace};
use crate::Pass;
use kiln_ir::{DType, IrError, Layer, Network, Tensor, TensorId};

pub struct PruneHeads;

impl Pass for PruneHeads {
    fn name(&self) -> &'static str {
        "prune-heads"
    }

    fn run(&self, net: &Network) -> Result<Option<Network>, IrError> {
        Ok(prune_heads(net)?.map(|(n, _)| n))
    }
}

/// A column range `[offset, offset + width)` of a MatMul with constant f32 weights `[K, N]`.
#[derive(Clone, Copy)]
struct Cols {
    layer: usize,
    offset: usize,
    width: usize,
}

/// A MatMul with a constant f32 2-D B (and a constant 1-D bias, if any): (B, bias, N).
fn const_matmul<'a>(net: &'a Network, layer: &'a Layer) -> Option<(&'a Tensor, Option<&'a Tensor>, usize)> {
    if layer.op != "MatMul" || layer.inputs.len() > 3 {
        return None;
    }
    let b = net.tensor(layer.inputs.get(1).copied().flatten()?).constant()?;
    if b.dtype() != DType::F32 || b.rank() != 2 {
        return None;
    }
    let bias = match layer.inputs.get(2).copied().flatten() {
        None => None,
        Some(id) => Some(net.tensor(id).constant().filter(|t| t.rank() == 1 && t.dtype() == DType::F32)?),
    };
    Some((b, bias, b.shape()[1]))
}

/// Where attention input `t` comes from: a column range of a MatMul read by nothing else
/// (directly, or through a Split along the last axis read only by the attention).
fn source(g: &Graph, t: TensorId, att: usize) -> Option<(Cols, Option<usize>)> {
    if g.is_output(t) || g.readers(t) != [att] {
        return None;
    }
    let (li, layer) = g.producer_any(t)?;
    if let Some((_, _, n)) = const_matmul(g.net, layer) {
        return Some((Cols { layer: li, offset: 0, width: n }, None));
    }
    if layer.op != "Split" || layer.outputs.iter().any(Option::is_none) {
        return None;
    }
    let x = layer.inputs.first().copied().flatten()?;
    let rank = g.shape(x)?.len();
    if kiln_ir::spec::normalize_axis(layer.attrs.int("axis", 0).ok()?, rank).ok()? != rank - 1 {
        return None;
    }
    let (pi, p) = g.producer_any(x)?;
    let (_, _, n) = const_matmul(g.net, p)?;
    if g.is_output(x) || g.readers(x) != [li] {
        return None;
    }
    let mut offset = 0;
    for o in layer.outputs.iter().flatten() {
        let w = match g.shape(*o)?.last()? {
            kiln_ir::Dim::Known(w) => *w,
            _ => return None,
        };
        if *o == t {
            return (offset + w <= n).then_some((Cols { layer: pi, offset, width: w }, Some(li)));
        }
        offset += w;
    }
    None
}

/// One prunable attention: its layers and the dead heads.
struct Match {
    att: usize,
    heads: usize,
    head_dim: usize,
    qkv: [Cols; 3],
    splits: Vec<usize>,
    out: usize,
    dead: Vec<bool>,
}

fn matched(g: &Graph, ai: usize) -> Option<Match> {
    let att = g.layer(ai);
    // Q, K, V and an optional mask; past keys/values (inputs 4, 5) would carry the old head count.
    if att.op != "Attention" || att.inputs.len() > 4 || att.outputs.iter().skip(1).any(Option::is_some) {
        return None;
    }
    let heads = att.attrs.int("q_num_heads", 0).ok()? as usize;
    if heads < 2 || att.attrs.int("kv_num_heads", 0).ok()? as usize != heads {
        return None;
    }
    let y = only_output(att)?;
    let [q, k, v] = [0, 1, 2].map(|i| att.inputs.get(i).copied().flatten());
    // Q, K, V and y are [B, S, heads · d] (the packed form).
    let dims = [q?, k?, v?, y].map(|t| g.shape(t).filter(|s| s.len() == 3).and_then(|s| s[2].known()));
    let [dq, dk, dv, dy] = dims.map(|d| d.unwrap_or(0));
    if dq == 0 || dq != dk || dq != dv || dv != dy || dq % heads != 0 {
        return None;
    }
    let head_dim = dq / heads;
    let mut qkv = Vec::new();
    let mut splits = Vec::new();
    for t in [q?, k?, v?] {
        let (cols, split) = source(g, t, ai)?;
        qkv.push(cols);
        splits.extend(split);
    }
    // The output goes into exactly one MatMul with constant weights [heads · d, N].
    if g.is_output(y) {
        return None;
    }
    let [oi] = g.readers(y) else { return None };
    let o = g.layer(*oi);
    let (wo, _, _) = const_matmul(g.net, o)?;
    if o.inputs.first().copied().flatten() != Some(y) || wo.shape()[0] != dy {
        return None;
    }
    let wo_v = wo.as_slice::<f32>().ok()?;
    let n_out = wo.shape()[1];
    let vc = qkv[2];
    let (bv, vbias, nv) = const_matmul(g.net, g.layer(vc.layer))?;
    let bv = bv.as_slice::<f32>().ok()?;
    let vbias = vbias.map(|b| b.as_slice::<f32>()).transpose().ok()?;
    let kv = bv.len() / nv;
    let dead: Vec<bool> = (0..heads)
        .map(|h| {
            let rows = h * head_dim..(h + 1) * head_dim;
            let out_dead = rows.clone().all(|r| wo_v[r * n_out..][..n_out].iter().all(|&x| x == 0.0));
            let cols = vc.offset + h * head_dim..vc.offset + (h + 1) * head_dim;
            let v_dead = (0..kv).all(|r| cols.clone().all(|c| bv[r * nv + c] == 0.0))
                && vbias.is_none_or(|b| cols.clone().all(|c| b[c] == 0.0));
            out_dead || v_dead
        })
        .collect();
    let n_dead = dead.iter().filter(|&&d| d).count();
    if n_dead == 0 || n_dead == heads {
        return None;
    }
    let qkv: [Cols; 3] = qkv.try_into().ok()?;
    // Three different products, or one product (split in three).
    let layers = [qkv[0].layer, qkv[1].layer, qkv[2].layer];
    let one = layers.iter().all(|&l| l == layers[0]);
    let distinct = layers[0] != layers[1] && layers[1] != layers[2] && layers[0] != layers[2];
    let packed = one && splits.len() == 3 && splits.iter().all(|&s| s == splits[0]);
    if !(packed || distinct && splits.is_empty()) {
        return None;
    }
    splits.dedup();
    Some(Match { att: ai, heads, head_dim, qkv, splits, out: *oi, dead })
}

/// Remove the dead heads of every matched attention.
pub(crate) fn prune_heads(net: &Network) -> Result<Option<(Network, Vec<LayerChange>)>, IrError> {
    let g = Graph::new(net);
    let live = live_layers(net);
    let matches: Vec<Match> = (0..net.layers().len()).filter(|&i| live[i]).filter_map(|i| matched(&g, i)).collect();
    if matches.is_empty() {
        return Ok(None);
    }
    let mut edits: Vec<Option<Replace>> = (0..net.layers().len()).map(|_| None).collect();
    let mut changes = Vec::new();
    for m in &matches {
        let kept_heads: Vec<usize> = (0..m.heads).filter(|&h| !m.dead[h]).collect();
        let kept_in = |offset: usize| -> Vec<usize> {
            kept_heads.iter().flat_map(|&h| (0..m.head_dim).map(move |d| offset + h * m.head_dim + d)).collect()
        };
        // Q/K/V products: drop the dead heads' columns (per product, all of its ranges).
        let mut by_layer: Vec<(usize, Vec<Cols>)> = Vec::new();
        for c in m.qkv {
            match by_layer.iter_mut().find(|(l, _)| *l == c.layer) {
                Some((_, v)) => v.push(c),
                None => by_layer.push((c.layer, vec![c])),
            }
        }
        for (li, ranges) in by_layer {
            let layer = &net.layers()[li];
            let (b, bias, n) = const_matmul(net, layer).expect("matched");
            let mut drop = vec![false; n];
            for c in &ranges {
                drop[c.offset..c.offset + c.width].iter_mut().for_each(|d| *d = true);
                for col in kept_in(c.offset) {
                    drop[col] = false;
                }
            }
            let keep: Vec<usize> = (0..n).filter(|&c| !drop[c]).collect();
            let bv = b.as_slice::<f32>()?;
            let k = b.shape()[0];
            let w: Vec<f32> = (0..k).flat_map(|r| keep.iter().map(move |&c| bv[r * n + c])).collect();
            let mut e = Edit::of(layer);
            e.inputs[1] = Some(Tensor::from_vec(vec![k, keep.len()], w)?);
            if let Some(bias) = bias {
                let bb = bias.as_slice::<f32>()?;
                e.inputs[2] = Some(Tensor::from_vec(vec![keep.len()], keep.iter().map(|&c| bb[c]).collect())?);
            }
            edits[li] = Some(Replace::Edit(e));
            changes.push(LayerChange::new(&layer.name, "output columns", n, keep.len()));
        }
        // The Split: each part shrinks by the dead heads' columns.
        let width = kept_heads.len() * m.head_dim;
        for &si in &m.splits {
            let split = &net.layers()[si];
            let sizes = Tensor::from_vec(vec![3], vec![width as i64; 3])?;
            let mut e = Edit::of(split);
            e.attrs.remove("num_outputs");
            e.attrs.remove("split");
            if split.inputs.len() > 1 {
                e.inputs[1] = Some(sizes);
            } else {
                e.extra.push(sizes);
            }
            edits[si] = Some(Replace::Edit(e));
        }
        let att = &net.layers()[m.att];
        let mut e = Edit::of(att);
        e.attrs.set("q_num_heads", kept_heads.len() as i64);
        e.attrs.set("kv_num_heads", kept_heads.len() as i64);
        edits[m.att] = Some(Replace::Edit(e));
        changes.push(LayerChange::new(&att.name, "heads", m.heads, kept_heads.len()));
        // The output projection: drop the dead heads' rows.
        let o = &net.layers()[m.out];
        let (wo, _, n) = const_matmul(net, o).expect("matched");
        let wv = wo.as_slice::<f32>()?;
        let rows = kept_in(0);
        let w: Vec<f32> = rows.iter().flat_map(|&r| wv[r * n..][..n].iter().copied()).collect();
        let mut e = Edit::of(o);
        e.inputs[1] = Some(Tensor::from_vec(vec![rows.len(), n], w)?);
        edits[m.out] = Some(Replace::Edit(e));
        changes.push(LayerChange::new(&o.name, "input channels", m.heads * m.head_dim, rows.len()));
    }
    Ok(Some((apply_edits(net, edits)?, changes)))
}

#[cfg(test)]
mod tests;
