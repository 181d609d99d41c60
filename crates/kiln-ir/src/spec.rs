//! ONNX semantics that both static inference and the kernels need, written once so the shapes
//! inferred at build time and the shapes computed at run time cannot disagree.

/// Internal attribute the importer sets on Softmax/LogSoftmax/Hardmax before opset 13: the
/// input is coerced to 2-D `[prod(d[..axis]), prod(d[axis..])]` and normalized along the
/// second dimension (the old semantics).
pub const COERCE_2D_ATTR: &str = "kiln_coerce_2d";

/// Internal attribute the importer sets on GroupNormalization opset 18, whose scale and bias
/// have one value per group instead of one per channel.
pub const PER_GROUP_SCALE_ATTR: &str = "kiln_per_group_scale";

/// Internal attribute a fusion pass sets on the layer it produces: the names of the original
/// (ONNX) layers it stands for, so `kiln inspect` and `kiln compare --per-layer` can say what a
/// fused layer computes. A layer without it stands for itself.
pub const FUSED_NODES_ATTR: &str = "kiln_fused_nodes";

/// Internal attribute (Int 0/1) the attention fusion sets on the `Attention` it produces: the
/// additive `attn_mask` broadcasts to [batch, heads, q_len, kv_len] exactly as the `Add` it came
/// from did (each dim 1 or equal, the key axis included), instead of ONNX's padding of a
/// shorter key axis with -inf.
pub const ATTENTION_MASK_BROADCAST_ATTR: &str = "kiln_mask_broadcast";

/// The original layers `layer` stands for (its own name when no pass fused it).
pub fn fused_nodes(layer: &crate::Layer) -> Vec<String> {
    match layer.attrs.get(FUSED_NODES_ATTR) {
        Some(crate::Attribute::Strings(names)) => names.clone(),
        _ => vec![layer.name.clone()],
    }
}

/// The fused-nodes list of a layer that replaces all of `layers` (in order, without repeats).
pub fn merged_fused_nodes<'a>(layers: impl IntoIterator<Item = &'a crate::Layer>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in layers {
        for n in fused_nodes(l) {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

/// Normalize a possibly negative axis against `rank` (ONNX: `-rank <= axis < rank`; a scalar
/// accepts axis 0).
pub fn normalize_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(a as usize)
}

/// One axis of a Slice after ONNX's clamping rules: (first index, step, element count).
pub fn slice_axis(start: i64, end: i64, step: i64, dim: usize) -> Result<(i64, i64, usize), String> {
    if step == 0 {
        return Err("slice step must not be zero".into());
    }
    if dim == 0 {
        return Ok((0, step, 0));
    }
    let d = dim as i128;
    let (mut s, mut e) = (start as i128, end as i128);
    if s < 0 {
        s += d;
    }
    if e < 0 {
        e += d;
    }
    let (s, e) = if step > 0 { (s.clamp(0, d), e.clamp(0, d)) } else { (s.clamp(0, d - 1), e.clamp(-1, d - 1)) };
    let st = step as i128;
    let n = if step > 0 { (e - s + st - 1).max(0) / st } else { (s - e - st - 1).max(0) / -st };
    Ok((s as i64, step, n as usize))
}

/// Which axes a Reduce* op reduces: all of them when `axes` is empty, unless
/// `noop_with_empty_axes` is set; a repeated or out-of-range axis is an error.
pub fn reduction_mask(axes: &[i64], rank: usize, noop_with_empty_axes: bool) -> Result<Vec<bool>, String> {
    let mut reduced = vec![axes.is_empty() && !noop_with_empty_axes; rank];
    for &a in axes {
        let ax = normalize_axis(a, rank)?;
        if rank == 0 || reduced[ax] {
            return Err(format!("axes {axes:?} repeat an axis or do not fit rank {rank}"));
        }
        reduced[ax] = true;
    }
    Ok(reduced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_clamp_like_onnx() {
        assert_eq!(slice_axis(1, 1000, 1, 10).unwrap(), (1, 1, 9));
        assert_eq!(slice_axis(-1, -1000, -1, 10).unwrap(), (9, -1, 10));
        assert_eq!(slice_axis(0, 10, 3, 10).unwrap(), (0, 3, 4));
        assert_eq!(slice_axis(20, 0, -2, 10).unwrap(), (9, -2, 5));
        assert!(slice_axis(0, 1, 0, 10).is_err());
    }

    #[test]
    fn axes_normalize_and_reduce() {
        assert_eq!(normalize_axis(-1, 3).unwrap(), 2);
        assert!(normalize_axis(3, 3).is_err());
        assert_eq!(normalize_axis(0, 0).unwrap(), 0);
        assert_eq!(reduction_mask(&[], 2, false).unwrap(), vec![true, true]);
        assert_eq!(reduction_mask(&[], 2, true).unwrap(), vec![false, false]);
        assert!(reduction_mask(&[1, -1], 2, false).is_err());
    }
}
