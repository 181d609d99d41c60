//! Index-driven ops: Gather, GatherElements, GatherND, ScatterElements, ScatterND,
//! TensorScatter, Compress, NonZero, OneHot. Every index read from data is resolved (negative
//! counts from the end) and range-checked before use; a bad index is an error, never a panic.

use super::{check_index_dtype, int_list, int_values, numel, one, resolve_index, tensor, Reduce, Reduction};
use crate::util::{normalize_axis, opt_tensor_arg, tensor_arg};
use crate::{KernelCtx, KernelFn};
use kiln_ir::{strides_of, Element, Tensor, TensorData, Value};

pub(super) fn kernel(op: &str) -> Option<KernelFn> {
    Some(match op {
        "Gather" => gather,
        "GatherElements" => gather_elements,
        "GatherND" => gather_nd,
        "ScatterElements" => scatter_elements,
        "ScatterND" => scatter_nd,
        "TensorScatter" => tensor_scatter,
        "Compress" => compress,
        "NonZero" => non_zero,
        "OneHot" => one_hot,
        _ => return None,
    })
}

/// Copy, for each outer index and each selected position, a contiguous block of `inner`
/// elements: `out[o][k] = src[o][picks[k]]` where `src[o]` has `dim` blocks.
pub(super) fn take_blocks<T: Element>(v: &[T], outer: usize, dim: usize, inner: usize, picks: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(outer * picks.len() * inner);
    for o in 0..outer {
        let base = o * dim * inner;
        for &p in picks {
            out.extend_from_slice(&v[base + p * inner..base + (p + 1) * inner]);
        }
    }
    out
}

fn gather(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let data = tensor_arg(inputs, 0)?;
    let indices = tensor_arg(inputs, 1)?;
    check_index_dtype(indices.dtype(), "indices")?;
    let axis = normalize_axis(ctx.attrs.int("axis", 0)?, data.rank())?;
    if data.rank() == 0 {
        return Err("cannot gather from a scalar".into());
    }
    let dim = data.shape()[axis];
    let picks: Vec<usize> =
        indices.to_i64_vec().into_iter().map(|i| resolve_index(i, dim, "index")).collect::<Result<_, _>>()?;
    let mut out_shape = data.shape()[..axis].to_vec();
    out_shape.extend_from_slice(indices.shape());
    out_shape.extend_from_slice(&data.shape()[axis + 1..]);
    numel(&out_shape)?;
    let outer: usize = data.shape()[..axis].iter().product();
    let inner: usize = data.shape()[axis + 1..].iter().product();
    let out = kiln_ir::map_data!(data.data(), v => take_blocks(v, outer, dim, inner, &picks));
    Ok(one(tensor(out_shape, out)?))
}

/// For GatherElements/ScatterElements: the flat data offset of every element of `indices`
/// (same rank as data, each dim at most data's), with the index replacing the `axis` coordinate.
fn element_offsets(data_shape: &[usize], indices: &Tensor, axis: usize) -> Result<Vec<usize>, String> {
    check_index_dtype(indices.dtype(), "indices")?;
    let ishape = indices.shape();
    if ishape.len() != data_shape.len() {
        return Err(format!("indices have rank {}, data has rank {}", ishape.len(), data_shape.len()));
    }
    for (a, (&i, &d)) in ishape.iter().zip(data_shape).enumerate() {
        if a != axis && i > d {
            return Err(format!("indices shape {ishape:?} exceeds data shape {data_shape:?} on axis {a}"));
        }
    }
    let strides = strides_of(data_shape);
    let idx = indices.to_i64_vec();
    let rank = ishape.len();
    let mut coord = vec![0usize; rank];
    let mut base = 0usize; // offset of `coord` with the axis coordinate left out
    let mut out = Vec::with_capacity(idx.len());
    for &i in &idx {
        out.push(base + resolve_index(i, data_shape[axis], "index")? * strides[axis]);
        for a in (0..rank).rev() {
            coord[a] += 1;
            if a != axis {
                base += strides[a];
            }
            if coord[a] < ishape[a] {
                break;
            }
            if a != axis {
                base -= strides[a] * coord[a];
            }
            coord[a] = 0;
        }
    }
    Ok(out)
}

fn gather_elements(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let data = tensor_arg(inputs, 0)?;
    let indices = tensor_arg(inputs, 1)?;
    if data.rank() == 0 {
        return Err("data must have rank at least 1".into());
    }
    let axis = normalize_axis(ctx.attrs.int("axis", 0)?, data.rank())?;
    let offs = element_offsets(data.shape(), indices, axis)?;
    let out = data.data().gather(&offs);
    Ok(one(tensor(indices.shape().to_vec(), out)?))
}

/// Apply `updates[k]` to `out[offs[k]]` with `reduction`, in order.
fn scatter_into<T: Reduce>(
    data: &[T],
    updates: &TensorData,
    offs: &[usize],
    block: usize,
    red: Reduction,
) -> Result<Vec<T>, String> {
    let upd =
        T::slice(updates).ok_or_else(|| format!("updates have dtype {}, data has {}", updates.dtype(), T::DTYPE))?;
    let mut out = data.to_vec();
    for (k, &o) in offs.iter().enumerate() {
        for j in 0..block {
            out[o + j] = red.apply(out[o + j], upd[k * block + j]);
        }
    }
    Ok(out)
}

fn scatter_elements(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let data = tensor_arg(inputs, 0)?;
    let indices = tensor_arg(inputs, 1)?;
    let updates = tensor_arg(inputs, 2)?;
    if data.rank() == 0 {
        return Err("data must have rank at least 1".into());
    }
    if updates.shape() != indices.shape() {
        return Err(format!("updates shape {:?} differs from indices shape {:?}", updates.shape(), indices.shape()));
    }
    let axis = normalize_axis(ctx.attrs.int("axis", 0)?, data.rank())?;
    let red = Reduction::parse(&ctx.attrs.string("reduction", "none".into())?)?;
    let offs = element_offsets(data.shape(), indices, axis)?;
    let out = kiln_ir::map_data!(data.data(), v => scatter_into(v, updates.data(), &offs, 1, red)?);
    Ok(one(tensor(data.shape().to_vec(), out)?))
}

/// Flat offsets addressed by the index tuples in the last axis of `indices` (length k) into
/// `shape` (a data shape, or a batch's slice of one); returns them and the block size
/// `prod(shape[k..])` each one addresses.
fn nd_offsets(shape: &[usize], idx: &[i64], k: usize) -> Result<(Vec<usize>, usize), String> {
    if k > shape.len() {
        return Err(format!("index tuples of length {k} exceed the data rank {}", shape.len()));
    }
    let strides = strides_of(shape);
    let block: usize = shape[k..].iter().product();
    let mut out = Vec::with_capacity(idx.len().checked_div(k).unwrap_or(0));
    if k == 0 {
        return Ok((out, block));
    }
    for tuple in idx.chunks_exact(k) {
        let mut off = 0;
        for (a, &i) in tuple.iter().enumerate() {
            off += resolve_index(i, shape[a], "index")? * strides[a];
        }
        out.push(off);
    }
    Ok((out, block))
}

fn gather_nd(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let data = tensor_arg(inputs, 0)?;
    let indices = tensor_arg(inputs, 1)?;
    let idx = int_values(indices, "indices")?;
    let b = usize::try_from(ctx.attrs.int("batch_dims", 0)?).map_err(|_| "batch_dims must be non-negative")?;
    let (ds, is) = (data.shape(), indices.shape());
    if is.is_empty() || b >= is.len() || b >= ds.len() || ds[..b] != is[..b] {
        return Err(format!("indices shape {is:?} does not fit data shape {ds:?} with batch_dims {b}"));
    }
    let k = is[is.len() - 1];
    if b + k > ds.len() {
        return Err(format!("index tuples of length {k} exceed data rank {} minus batch_dims {b}", ds.len()));
    }
    let mut out_shape = is[..is.len() - 1].to_vec();
    out_shape.extend_from_slice(&ds[b + k..]);
    numel(&out_shape)?;
    let batches: usize = ds[..b].iter().product();
    let batch_size: usize = ds[b..].iter().product();
    let per_batch = idx.len().checked_div(batches).unwrap_or(0);
    // Flat offsets into data: each batch's tuples index that batch's slice.
    let mut offs = Vec::new();
    let mut block = 1;
    for bi in 0..batches {
        let (o, bl) = nd_offsets(&ds[b..], &idx[bi * per_batch..(bi + 1) * per_batch], k)?;
        block = bl;
        offs.extend(o.into_iter().map(|x| x + bi * batch_size));
    }
    if k == 0 {
        // Empty tuples select the whole batch slice once per index position.
        let positions: usize = is[b..is.len() - 1].iter().product();
        block = batch_size;
        offs = (0..batches).flat_map(|bi| std::iter::repeat_n(bi * batch_size, positions)).collect();
    }
    fn copy<T: Element>(v: &[T], offs: &[usize], block: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(offs.len() * block);
        for &o in offs {
            out.extend_from_slice(&v[o..o + block]);
        }
        out
    }
    let out = kiln_ir::map_data!(data.data(), v => copy(v, &offs, block));
    Ok(one(tensor(out_shape, out)?))
}

fn scatter_nd(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let data = tensor_arg(inputs, 0)?;
    let indices = tensor_arg(inputs, 1)?;
    let updates = tensor_arg(inputs, 2)?;
    let idx = int_values(indices, "indices")?;
    let red = Reduction::parse(&ctx.attrs.string("reduction", "none".into())?)?;
    let is = indices.shape();
    let k = *is.last().ok_or("indices must have rank at least 1")?;
    if k > data.rank() {
        return Err(format!("index tuples of length {k} exceed the data rank {}", data.rank()));
    }
    let mut want = is[..is.len() - 1].to_vec();
    want.extend_from_slice(&data.shape()[k..]);
    if updates.shape() != want.as_slice() {
        return Err(format!("updates shape {:?} must be {want:?}", updates.shape()));
    }
    let (mut offs, block) = nd_offsets(data.shape(), &idx, k)?;
    if k == 0 {
        offs = vec![0; is[..is.len() - 1].iter().product()];
    }
    let out = kiln_ir::map_data!(data.data(), v => scatter_into(v, updates.data(), &offs, block, red)?);
    Ok(one(tensor(data.shape().to_vec(), out)?))
}

fn tensor_scatter(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let past = tensor_arg(inputs, 0)?;
    let update = tensor_arg(inputs, 1)?;
    let r = past.rank();
    if r < 2 {
        return Err(format!("past_cache must have rank at least 2, got shape {:?}", past.shape()));
    }
    let axis = normalize_axis(ctx.attrs.int("axis", -2)?, r)?;
    if axis == 0 {
        return Err("axis must not be the batch axis 0".into());
    }
    let circular = match ctx.attrs.string("mode", "linear".into())?.as_str() {
        "linear" => false,
        "circular" => true,
        other => return Err(format!("unknown mode '{other}' (expected linear or circular)")),
    };
    let (ps, us) = (past.shape(), update.shape());
    let fits = us.len() == r && (0..r).all(|a| if a == axis { us[a] <= ps[a] } else { us[a] == ps[a] });
    if !fits {
        return Err(format!("update shape {us:?} does not fit past_cache shape {ps:?} on axis {axis}"));
    }
    let batch = ps[0];
    let writes = match opt_tensor_arg(inputs, 2)? {
        Some(t) => {
            let w = int_list(t, "write_indices")?;
            if w.len() != batch {
                return Err(format!("write_indices has {} entries for a batch of {batch}", w.len()));
            }
            w
        }
        None => vec![0; batch],
    };
    let (max_len, seq) = (ps[axis], us[axis]);
    let inner: usize = ps[axis + 1..].iter().product();
    let prefix: usize = ps[..axis].iter().product();
    let per_batch = prefix.checked_div(batch).unwrap_or(0);
    // (destination, source) offsets of each `inner`-sized row that is overwritten.
    let mut moves = Vec::with_capacity(prefix * seq);
    for p in 0..prefix {
        let w = writes[p / per_batch.max(1)];
        for s in 0..seq {
            let pos = w.checked_add(s as i64).ok_or("write index overflows")?;
            let pos = if circular && max_len > 0 { pos.rem_euclid(max_len as i64) } else { pos };
            if pos < 0 || pos as usize >= max_len {
                return Err(format!(
                    "write index {w} + {s} is outside the cache length {max_len} (batch {})",
                    p / per_batch.max(1)
                ));
            }
            moves.push(((p * max_len + pos as usize) * inner, (p * seq + s) * inner));
        }
    }
    fn run<T: Element>(v: &[T], upd: &TensorData, moves: &[(usize, usize)], inner: usize) -> Result<Vec<T>, String> {
        let u =
            T::slice(upd).ok_or_else(|| format!("update has dtype {}, past_cache has {}", upd.dtype(), T::DTYPE))?;
        let mut out = v.to_vec();
        for &(d, s) in moves {
            out[d..d + inner].copy_from_slice(&u[s..s + inner]);
        }
        Ok(out)
    }
    let out = kiln_ir::map_data!(past.data(), v => run(v, update.data(), &moves, inner)?);
    Ok(one(tensor(ps.to_vec(), out)?))
}

fn compress(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    let cond = tensor_arg(inputs, 1)?;
    if cond.rank() != 1 {
        return Err(format!("condition must be 1-D, got shape {:?}", cond.shape()));
    }
    let cond = cond.as_slice::<bool>().map_err(|e| format!("condition: {e}"))?;
    let (outer, dim, inner, mut out_shape, axis) = match ctx.attrs.int_opt("axis")? {
        None => (1, x.len(), 1, vec![0], 0),
        Some(a) => {
            let axis = normalize_axis(a, x.rank())?;
            if x.rank() == 0 {
                return Err("cannot compress a scalar along an axis".into());
            }
            let s = x.shape();
            (s[..axis].iter().product(), s[axis], s[axis + 1..].iter().product(), s.to_vec(), axis)
        }
    };
    let picks: Vec<usize> = cond.iter().enumerate().filter(|(_, &c)| c).map(|(i, _)| i).collect();
    if let Some(&last) = picks.last() {
        if last >= dim {
            return Err(format!("condition selects index {last}, beyond the dimension {dim}"));
        }
    }
    out_shape[axis] = picks.len();
    let out = kiln_ir::map_data!(x.data(), v => take_blocks(v, outer, dim, inner, &picks));
    Ok(one(tensor(out_shape, out)?))
}

fn non_zero(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    fn flat_nonzero<T: Element>(v: &[T]) -> Vec<usize> {
        v.iter().enumerate().filter(|(_, x)| **x != T::default()).map(|(i, _)| i).collect()
    }
    let hits = kiln_ir::dispatch!(x.data(), v => flat_nonzero(v));
    // A scalar counts as 1-D (numpy's behaviour, followed by the reference).
    let shape: Vec<usize> = if x.rank() == 0 { vec![1] } else { x.shape().to_vec() };
    let strides = strides_of(&shape);
    let n = hits.len();
    let mut out = vec![0i64; shape.len() * n];
    for (j, &h) in hits.iter().enumerate() {
        for (a, &s) in strides.iter().enumerate() {
            out[a * n + j] = ((h / s) % shape[a]) as i64;
        }
    }
    Ok(one(tensor(vec![shape.len(), n], TensorData::I64(out))?))
}

fn one_hot(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let indices = tensor_arg(inputs, 0)?;
    let depth = tensor_arg(inputs, 1)?;
    let values = tensor_arg(inputs, 2)?;
    if depth.len() != 1 {
        return Err(format!("depth must be a scalar, got shape {:?}", depth.shape()));
    }
    if values.len() != 2 {
        return Err(format!("values must hold [off_value, on_value], got shape {:?}", values.shape()));
    }
    // Non-integer depth and indices are truncated to integers, as the spec says.
    let depth = depth.to_f64_vec()[0];
    if !(depth >= 1.0 && depth <= kiln_ir::MAX_ELEMENTS as f64) {
        return Err(format!("depth must be a positive integer, got {depth}"));
    }
    let depth = depth as usize;
    let r = indices.rank() as i64;
    let axis = ctx.attrs.int("axis", -1)?;
    if axis < -r - 1 || axis > r {
        return Err(format!("axis {axis} is out of range for an output of rank {}", r + 1));
    }
    let axis = if axis < 0 { axis + r + 1 } else { axis } as usize;
    let mut out_shape = indices.shape().to_vec();
    out_shape.insert(axis, depth);
    numel(&out_shape)?;
    let outer: usize = indices.shape()[..axis].iter().product();
    let inner: usize = indices.shape()[axis..].iter().product();
    let idx = indices.to_f64_vec();
    fn fill<T: Element>(v: &[T], idx: &[f64], outer: usize, inner: usize, depth: usize) -> Vec<T> {
        let (off, on) = (v[0], v[1]);
        let mut out = vec![off; outer * depth * inner];
        for o in 0..outer {
            for i in 0..inner {
                let mut d = idx[o * inner + i].trunc();
                if d < 0.0 {
                    d += depth as f64;
                }
                // Out-of-range indices leave the row all off_value.
                if d >= 0.0 && d < depth as f64 {
                    out[(o * depth + d as usize) * inner + i] = on;
                }
            }
        }
        out
    }
    let out = kiln_ir::map_data!(values.data(), v => fill(v, &idx, outer, inner, depth));
    Ok(one(tensor(out_shape, out)?))
}
