//! Layout ops: reorder, cut, join, repeat or pad elements along axes. Transpose, Concat, Split,
//! Slice, Expand, Tile, Pad, CenterCropPad, DepthToSpace, SpaceToDepth, Trilu, ReverseSequence.

use super::{gather_axes_data, int_list, int_values, normalize_axes, numel, one, tensor, FILL};
use crate::util::{broadcast_shape, normalize_axis, opt_tensor_arg, tensor_arg};
use crate::{KernelCtx, KernelFn};
use kiln_ir::spec::slice_axis;
use kiln_ir::{strides_of, Element, Tensor, TensorData, Value};

pub(super) fn kernel(op: &str) -> Option<KernelFn> {
    Some(match op {
        "Transpose" => transpose,
        "Concat" => concat,
        "Split" => split,
        "Slice" => slice,
        "Expand" => expand,
        "Tile" => tile,
        "Pad" => pad,
        "CenterCropPad" => center_crop_pad,
        "DepthToSpace" => depth_to_space,
        "SpaceToDepth" => space_to_depth,
        "Trilu" => trilu,
        "ReverseSequence" => reverse_sequence,
        _ => return None,
    })
}

/// A tensor of `out_shape` whose element at `(i0, .., in)` is `x`'s element at flat offset
/// `offset(0, i0) + .. + offset(n, in)`, or the fill value (`fill`, else zero) where an
/// offset is [`FILL`]. The output size is checked before the offset tables are built, so
/// huge dims from data are refused instead of allocated.
fn gather_with(
    x: &Tensor,
    out_shape: Vec<usize>,
    fill: Option<&Tensor>,
    offset: impl Fn(usize, usize) -> usize,
) -> Result<Tensor, String> {
    if numel(&out_shape)? == 0 {
        return tensor(out_shape, TensorData::zeros(x.dtype(), 0));
    }
    let tables: Vec<Vec<usize>> =
        out_shape.iter().enumerate().map(|(a, &n)| (0..n).map(|i| offset(a, i)).collect()).collect();
    let data = gather_axes_data(x.data(), &out_shape, &tables, fill)?;
    tensor(out_shape, data)
}

/// Transpose `x` by `perm` (a validated permutation of its axes).
pub(super) fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor, String> {
    let strides = x.strides();
    let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    gather_with(x, out_shape, None, |a, i| i * strides[perm[a]])
}

fn transpose(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let r = x.rank();
    let perm = match ctx.attrs.ints_opt("perm")? {
        None => (0..r).rev().collect(),
        Some(p) => {
            if p.len() != r {
                return Err(format!("perm {p:?} has {} entries for an input of rank {r}", p.len()));
            }
            normalize_axes(&p, r)?
        }
    };
    Ok(one(permute(x, &perm)?))
}

/// The typed slices of all `parts`, which must share `first`'s dtype.
fn typed_parts<'a, T: Element>(_first: &[T], parts: &[&'a Tensor]) -> Result<Vec<&'a [T]>, String> {
    parts.iter().enumerate().map(|(i, t)| t.as_slice::<T>().map_err(|e| format!("input {i}: {e}"))).collect()
}

fn concat(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let parts: Vec<&Tensor> = (0..inputs.len()).map(|i| tensor_arg(inputs, i)).collect::<Result<_, _>>()?;
    let first = *parts.first().ok_or("Concat needs at least one input")?;
    let r = first.rank();
    if r == 0 {
        return Err("Concat inputs must have rank at least 1".into());
    }
    let axis = normalize_axis(ctx.attrs.req_int("axis")?, r)?;
    let mut out_shape = first.shape().to_vec();
    out_shape[axis] = 0;
    for (i, p) in parts.iter().enumerate() {
        let same = p.rank() == r && (0..r).all(|a| a == axis || p.shape()[a] == first.shape()[a]);
        if !same {
            return Err(format!(
                "input {i} has shape {:?}, incompatible with {:?} on axis {axis}",
                p.shape(),
                first.shape()
            ));
        }
        out_shape[axis] += p.shape()[axis];
    }
    let n = numel(&out_shape)?;
    let outer: usize = first.shape()[..axis].iter().product();
    let inner: usize = first.shape()[axis + 1..].iter().product();
    // Each input contributes one contiguous block of `dim * inner` per outer index.
    fn join<T: Element>(srcs: &[&[T]], blocks: &[usize], outer: usize, n: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(n);
        for o in 0..outer {
            for (s, &b) in srcs.iter().zip(blocks) {
                out.extend_from_slice(&s[o * b..(o + 1) * b]);
            }
        }
        out
    }
    let blocks: Vec<usize> = parts.iter().map(|p| p.shape()[axis] * inner).collect();
    let data = kiln_ir::map_data!(first.data(), v => join(&typed_parts(v, &parts)?, &blocks, outer, n));
    Ok(one(tensor(out_shape, data)?))
}

fn split(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let axis = normalize_axis(ctx.attrs.int("axis", 0)?, x.rank())?;
    if x.rank() == 0 {
        return Err("cannot split a scalar".into());
    }
    let dim = x.shape()[axis];
    let n_out = ctx.num_outputs;
    let sizes = split_sizes(dim, opt_tensor_arg(inputs, 1)?, ctx.attrs.int_opt("num_outputs")?, n_out)?;
    let outer: usize = x.shape()[..axis].iter().product();
    let inner: usize = x.shape()[axis + 1..].iter().product();
    let mut outs = Vec::with_capacity(n_out);
    let mut offset = 0;
    for &s in &sizes {
        let mut shape = x.shape().to_vec();
        shape[axis] = s;
        fn piece<T: Element>(v: &[T], outer: usize, row: usize, off: usize, len: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(outer * len);
            for o in 0..outer {
                out.extend_from_slice(&v[o * row + off..o * row + off + len]);
            }
            out
        }
        let data = kiln_ir::map_data!(x.data(), v => piece(v, outer, dim * inner, offset * inner, s * inner));
        outs.push(Value::Tensor(tensor(shape, data)?));
        offset += s;
    }
    Ok(outs)
}

/// The sizes of Split's outputs: the `split` input, or `num_outputs` chunks of
/// `ceil(dim / num_outputs)` (the last one smaller), or an even split into the layer's outputs.
fn split_sizes(
    dim: usize,
    split: Option<&Tensor>,
    num_outputs: Option<i64>,
    n_out: usize,
) -> Result<Vec<usize>, String> {
    if let Some(s) = split {
        if num_outputs.is_some() {
            return Err("Split takes either the 'split' input or the 'num_outputs' attribute, not both".into());
        }
        let sizes: Vec<usize> = int_list(s, "split")?
            .into_iter()
            .map(|v| usize::try_from(v).map_err(|_| format!("split sizes must be non-negative, got {v}")))
            .collect::<Result<_, _>>()?;
        if sizes.len() != n_out {
            return Err(format!("split has {} entries but the layer has {n_out} outputs", sizes.len()));
        }
        if sizes.iter().try_fold(0usize, |a, &b| a.checked_add(b)) != Some(dim) {
            return Err(format!("split sizes {sizes:?} do not sum to the axis dimension {dim}"));
        }
        return Ok(sizes);
    }
    let n = match num_outputs {
        Some(n) if n <= 0 => return Err(format!("num_outputs must be positive, got {n}")),
        Some(n) if n as usize != n_out => return Err(format!("num_outputs is {n} but the layer has {n_out} outputs")),
        _ => n_out,
    };
    if n == 0 {
        return Err("Split needs at least one output".into());
    }
    Ok(chunk_sizes(dim, n))
}

/// `n` chunks of `ceil(dim / n)`, the last ones smaller (possibly empty when `n` does not fit,
/// e.g. 5 into 4 gives 2, 2, 1, 0), as the reference implementation slices them. Opset 13's
/// even split (no `split`, no `num_outputs`) is the divisible case of the same rule.
fn chunk_sizes(dim: usize, n: usize) -> Vec<usize> {
    let chunk = dim.div_ceil(n);
    (0..n).map(|i| chunk.min(dim.saturating_sub(i * chunk))).collect()
}

fn slice(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let r = x.rank();
    let starts = int_list(tensor_arg(inputs, 1)?, "starts")?;
    let ends = int_list(tensor_arg(inputs, 2)?, "ends")?;
    if starts.len() != ends.len() {
        return Err(format!("starts has {} entries, ends has {}", starts.len(), ends.len()));
    }
    let axes = match opt_tensor_arg(inputs, 3)? {
        Some(t) => normalize_axes(&int_list(t, "axes")?, r)?,
        None if starts.len() <= r => (0..starts.len()).collect(),
        None => return Err(format!("starts has {} entries for an input of rank {r}", starts.len())),
    };
    let steps = match opt_tensor_arg(inputs, 4)? {
        Some(t) => int_list(t, "steps")?,
        None => vec![1; starts.len()],
    };
    if axes.len() != starts.len() || steps.len() != starts.len() {
        return Err("starts, ends, axes and steps must have the same length".into());
    }
    let strides = x.strides();
    let mut out_shape = x.shape().to_vec();
    // Per axis: first index and step (axes not sliced read 0, 1, 2, ...).
    let mut start_step = vec![(0i64, 1i64); r];
    for (i, &a) in axes.iter().enumerate() {
        let (s, step, n) = slice_axis(starts[i], ends[i], steps[i], x.shape()[a])?;
        out_shape[a] = n;
        start_step[a] = (s, step);
    }
    let t = gather_with(x, out_shape, None, |a, i| {
        let (s, step) = start_step[a];
        (s + i as i64 * step) as usize * strides[a]
    })?;
    Ok(one(t))
}

fn expand(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let target: Vec<usize> = int_list(tensor_arg(inputs, 1)?, "shape")?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| format!("shape has a negative dimension {d}")))
        .collect::<Result<_, _>>()?;
    let out_shape = broadcast_shape(x.shape(), &target)?;
    // Broadcast axes (new leading ones, or size 1 in the input) read with stride 0.
    let pad = out_shape.len() - x.rank();
    let strides: Vec<usize> = (0..out_shape.len())
        .map(|a| if a < pad || x.shape()[a - pad] == 1 { 0 } else { x.strides()[a - pad] })
        .collect();
    Ok(one(gather_with(x, out_shape, None, |a, i| i * strides[a])?))
}

fn tile(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let reps = int_list(tensor_arg(inputs, 1)?, "repeats")?;
    if reps.len() != x.rank() {
        return Err(format!("repeats has {} entries for an input of rank {}", reps.len(), x.rank()));
    }
    let strides = x.strides();
    let mut out_shape = Vec::with_capacity(reps.len());
    for (a, &r) in reps.iter().enumerate() {
        let r = usize::try_from(r).map_err(|_| format!("repeats must be non-negative, got {r}"))?;
        out_shape.push(x.shape()[a].checked_mul(r).ok_or("Tile output is too large")?);
    }
    // Non-empty output: every input dim is non-zero, so the modulo is defined.
    let shape = x.shape();
    Ok(one(gather_with(x, out_shape, None, |a, i| (i % shape[a]) * strides[a])?))
}

#[derive(Clone, Copy, PartialEq)]
enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

/// Input index read by output index `o` of an axis of size `dim` padded by `begin` in front,
/// or `None` for the constant value. Negative pads crop, which the shift by `begin` covers.
fn pad_source(o: usize, begin: i64, dim: usize, mode: PadMode) -> Option<usize> {
    let i = o as i64 - begin;
    let d = dim as i64;
    if (0..d).contains(&i) {
        return Some(i as usize);
    }
    Some(match mode {
        PadMode::Constant => return None,
        PadMode::Edge => i.clamp(0, d - 1) as usize,
        PadMode::Wrap => i.rem_euclid(d) as usize,
        // numpy's 'reflect': mirror about the edge elements, periodic for pads beyond dim - 1.
        PadMode::Reflect if d == 1 => 0,
        PadMode::Reflect => {
            let period = 2 * (d - 1);
            let m = i.rem_euclid(period);
            (if m >= d { period - m } else { m }) as usize
        }
    })
}

fn pad(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let r = x.rank();
    let mode = match ctx.attrs.string("mode", "constant".into())?.as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" => PadMode::Wrap,
        other => return Err(format!("unknown pad mode '{other}'")),
    };
    let pads = int_list(tensor_arg(inputs, 1)?, "pads")?;
    let value = opt_tensor_arg(inputs, 2)?.filter(|t| !t.is_empty());
    if let Some(v) = value {
        if v.dtype() != x.dtype() {
            return Err(format!("constant_value has dtype {}, data has {}", v.dtype(), x.dtype()));
        }
    }
    let axes = match opt_tensor_arg(inputs, 3)? {
        Some(t) => normalize_axes(&int_list(t, "axes")?, r)?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(format!("pads has {} entries, expected {} (2 per axis)", pads.len(), 2 * axes.len()));
    }
    let mut begins = vec![0i64; r];
    let mut ends = vec![0i64; r];
    for (i, &a) in axes.iter().enumerate() {
        begins[a] = pads[i];
        ends[a] = pads[axes.len() + i];
    }
    let strides = x.strides();
    let mut out_shape = Vec::with_capacity(r);
    for a in 0..r {
        let d = x.shape()[a];
        let n = d as i128 + begins[a] as i128 + ends[a] as i128;
        if n < 0 || n > kiln_ir::MAX_ELEMENTS as i128 {
            return Err(format!("pads {} and {} give axis {a} (size {d}) an invalid size {n}", begins[a], ends[a]));
        }
        let n = n as usize;
        if d == 0 && n > 0 && mode != PadMode::Constant {
            return Err(format!("cannot pad the empty axis {a} in a non-constant mode"));
        }
        out_shape.push(n);
    }
    let shape = x.shape();
    let t = gather_with(x, out_shape, value, |a, o| {
        pad_source(o, begins[a], shape[a], mode).map_or(FILL, |i| i * strides[a])
    })?;
    Ok(one(t))
}

fn center_crop_pad(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let r = x.rank();
    let shape = int_list(tensor_arg(inputs, 1)?, "shape")?;
    let axes = match ctx.attrs.ints_opt("axes")? {
        Some(a) => normalize_axes(&a, r)?,
        None => (0..r).collect(),
    };
    if shape.len() != axes.len() {
        return Err(format!("shape has {} entries for {} axes", shape.len(), axes.len()));
    }
    let strides = x.strides();
    let mut out_shape = x.shape().to_vec();
    for (&a, &target) in axes.iter().zip(&shape) {
        out_shape[a] = usize::try_from(target).map_err(|_| format!("shape has a negative dimension {target}"))?;
    }
    // Crop takes the centered window (the odd element dropped at the end); pad centers the
    // input (the odd padding element at the end). Output index o reads input o + d/2 - t/2.
    let shape = x.shape();
    let t = gather_with(x, out_shape.clone(), None, |a, o| {
        let (d, t) = (shape[a], out_shape[a]);
        let i = if t <= d { o + (d - t) / 2 } else { o.wrapping_sub((t - d) / 2) };
        if i < d {
            i * strides[a]
        } else {
            FILL
        }
    })?;
    Ok(one(t))
}

/// `blocksize` and the 4-D shape of a DepthToSpace/SpaceToDepth input, and whether mode is CRD.
fn block_args(ctx: &KernelCtx, x: &Tensor) -> Result<(usize, [usize; 4], bool), String> {
    let b = ctx.attrs.req_int("blocksize")?;
    if b <= 0 {
        return Err(format!("blocksize must be positive, got {b}"));
    }
    let crd = match ctx.attrs.string("mode", "DCR".into())?.as_str() {
        "DCR" => false,
        "CRD" => true,
        other => return Err(format!("unknown mode '{other}' (expected DCR or CRD)")),
    };
    match x.shape() {
        &[n, c, h, w] => Ok((b as usize, [n, c, h, w], crd)),
        s => Err(format!("input must be 4-D, got shape {s:?}")),
    }
}

/// Reshape `x` to `view` (same element count), permute by `perm`, and return the result
/// reshaped to `out`.
fn reshape_permute(x: &Tensor, view: &[usize], perm: &[usize], out: Vec<usize>) -> Result<Tensor, String> {
    let strides = strides_of(view);
    let shape: Vec<usize> = perm.iter().map(|&p| view[p]).collect();
    gather_with(x, shape, None, |a, i| i * strides[perm[a]])?.reshape(out).map_err(|e| e.to_string())
}

fn depth_to_space(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let (b, [n, c, h, w], crd) = block_args(ctx, x)?;
    if b.checked_mul(b).is_none_or(|bb| c % bb != 0) {
        return Err(format!("channels {c} are not divisible by blocksize² ({b}²)"));
    }
    let c2 = c / (b * b);
    let too_large = || "DepthToSpace output is too large".to_string();
    let out = vec![n, c2, h.checked_mul(b).ok_or_else(too_large)?, w.checked_mul(b).ok_or_else(too_large)?];
    let t = if crd {
        reshape_permute(x, &[n, c2, b, b, h, w], &[0, 1, 4, 2, 5, 3], out)?
    } else {
        reshape_permute(x, &[n, b, b, c2, h, w], &[0, 3, 4, 1, 5, 2], out)?
    };
    Ok(one(t))
}

fn space_to_depth(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let (b, [n, c, h, w], crd) = block_args(ctx, x)?;
    if h % b != 0 || w % b != 0 {
        return Err(format!("spatial dims {h}x{w} are not divisible by blocksize {b}"));
    }
    let view = [n, c, h / b, b, w / b, b];
    let c_out = b.checked_mul(b).and_then(|bb| c.checked_mul(bb)).ok_or("SpaceToDepth output is too large")?;
    let out = vec![n, c_out, h / b, w / b];
    let perm: &[usize] = if crd { &[0, 1, 3, 5, 2, 4] } else { &[0, 3, 5, 1, 2, 4] };
    Ok(one(reshape_permute(x, &view, perm, out)?))
}

fn trilu(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let r = x.rank();
    if r < 2 {
        return Err(format!("input must have rank at least 2, got shape {:?}", x.shape()));
    }
    let k = match opt_tensor_arg(inputs, 1)? {
        Some(t) => match int_values(t, "k")?.as_slice() {
            [k] => *k,
            _ => return Err(format!("k must be a scalar, got shape {:?}", t.shape())),
        },
        None => 0,
    };
    let upper = ctx.attrs.int("upper", 1)? != 0;
    let (rows, cols) = (x.shape()[r - 2], x.shape()[r - 1]);
    // Keep (i, j) where j - i >= k (upper) or j - i <= k (lower); zero the rest.
    fn mask<T: Element>(v: &[T], rows: usize, cols: usize, k: i64, upper: bool) -> Vec<T> {
        let mut out = v.to_vec();
        for (e, x) in out.iter_mut().enumerate() {
            let j = (e % cols) as i64;
            let i = ((e / cols) % rows) as i64;
            let keep = if upper { j - i >= k } else { j - i <= k };
            if !keep {
                *x = T::default();
            }
        }
        out
    }
    if rows == 0 || cols == 0 {
        return Ok(one(x.clone()));
    }
    let data = kiln_ir::map_data!(x.data(), v => mask(v, rows, cols, k, upper));
    Ok(one(tensor(x.shape().to_vec(), data)?))
}

fn reverse_sequence(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let lens = int_list(tensor_arg(inputs, 1)?, "sequence_lens")?;
    let batch_axis = ctx.attrs.int("batch_axis", 1)?;
    let time_axis = ctx.attrs.int("time_axis", 0)?;
    if x.rank() < 2 {
        return Err(format!("input must have rank at least 2, got shape {:?}", x.shape()));
    }
    let (ba, ta) = match (batch_axis, time_axis) {
        (0, 1) => (0usize, 1usize),
        (1, 0) => (1, 0),
        _ => return Err(format!("batch_axis {batch_axis} and time_axis {time_axis} must be 0 and 1 in some order")),
    };
    let (batch, time) = (x.shape()[ba], x.shape()[ta]);
    if lens.len() != batch {
        return Err(format!("sequence_lens has {} entries for a batch of {batch}", lens.len()));
    }
    let strides = x.strides();
    let inner: usize = x.shape()[2..].iter().product();
    let mut moves = Vec::with_capacity(batch * time);
    for (b, &len) in lens.iter().enumerate() {
        if len < 0 || len as usize > time {
            return Err(format!("sequence_lens[{b}] = {len} is outside [0, {time}]"));
        }
        let len = len as usize;
        for t in 0..time {
            let src = if t < len { len - 1 - t } else { t };
            moves.push((b * strides[ba] + t * strides[ta], b * strides[ba] + src * strides[ta]));
        }
    }
    fn run<T: Element>(v: &[T], moves: &[(usize, usize)], inner: usize) -> Vec<T> {
        let mut out = v.to_vec();
        for &(dst, src) in moves {
            out[dst..dst + inner].copy_from_slice(&v[src..src + inner]);
        }
        out
    }
    let data = kiln_ir::map_data!(x.data(), v => run(v, &moves, inner));
    Ok(one(tensor(x.shape().to_vec(), data)?))
}
