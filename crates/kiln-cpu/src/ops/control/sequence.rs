//! Sequence ops: construction, insertion/removal, indexing, split/concat, SequenceMap.

use super::tensors::{concat, int_scalar, resolve_position, slice_axis};
use crate::util::{normalize_axis, opt_tensor_arg, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{Tensor, Value};

pub(super) fn sequence_empty(_ctx: &KernelCtx, _inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    Ok(vec![Value::Sequence(Vec::new())])
}

pub(super) fn sequence_construct(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let mut items = Vec::with_capacity(inputs.len());
    for i in 0..inputs.len() {
        let t = tensor_arg(inputs, i)?;
        if let Some(first) = items.first().map(|f: &Tensor| f.dtype()) {
            if t.dtype() != first {
                return Err(format!("input {i} has dtype {}, input 0 has {first}", t.dtype()));
            }
        }
        items.push(t.clone());
    }
    Ok(vec![Value::Sequence(items)])
}

/// Insert a tensor at `position` (default: append); `position` may be one past the end.
pub(super) fn sequence_insert(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let seq = seq_arg(inputs, 0)?;
    let t = tensor_arg(inputs, 1)?;
    if let Some(first) = seq.first() {
        if first.dtype() != t.dtype() {
            return Err(format!("cannot insert a {} tensor into a sequence of {}", t.dtype(), first.dtype()));
        }
    }
    let at = match opt_tensor_arg(inputs, 2)? {
        Some(p) => resolve_position(int_scalar(p, "position")?, seq.len(), 1)?,
        None => seq.len(),
    };
    let mut out = Vec::with_capacity(seq.len() + 1);
    out.extend_from_slice(&seq[..at]);
    out.push(t.clone());
    out.extend_from_slice(&seq[at..]);
    Ok(vec![Value::Sequence(out)])
}

/// Remove the tensor at `position` (default: the last).
pub(super) fn sequence_erase(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let seq = seq_arg(inputs, 0)?;
    let pos = match opt_tensor_arg(inputs, 1)? {
        Some(p) => int_scalar(p, "position")?,
        None => -1,
    };
    if seq.is_empty() {
        return Err("cannot erase from an empty sequence".into());
    }
    let at = resolve_position(pos, seq.len(), 0)?;
    let out: Vec<Tensor> = seq[..at].iter().chain(&seq[at + 1..]).cloned().collect();
    Ok(vec![Value::Sequence(out)])
}

pub(super) fn sequence_at(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let seq = seq_arg(inputs, 0)?;
    let at = resolve_position(int_scalar(tensor_arg(inputs, 1)?, "position")?, seq.len(), 0)?;
    Ok(vec![Value::Tensor(seq[at].clone())])
}

pub(super) fn sequence_length(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let seq = seq_arg(inputs, 0)?;
    Ok(vec![Value::Tensor(Tensor::scalar(seq.len() as i64))])
}

/// Split a tensor along `axis` into a sequence: into pieces of size 1 without `split` (the axis
/// dropped unless `keepdims`), into equal pieces of a scalar `split` (the last one possibly
/// shorter), or into the sizes a 1-D `split` lists.
pub(super) fn split_to_sequence(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x = tensor_arg(inputs, 0)?;
    if x.rank() == 0 {
        return Err("SplitToSequence needs an input of rank >= 1".into());
    }
    let axis = normalize_axis(ctx.attrs.int("axis", 0)?, x.rank())?;
    let keepdims = ctx.attrs.int("keepdims", 1)? != 0;
    let dim = x.shape()[axis];
    let items = match opt_tensor_arg(inputs, 1)? {
        None => (0..dim).map(|i| slice_axis(x, axis, i, 1, keepdims)).collect::<Result<Vec<_>, _>>()?,
        Some(split) => {
            if !split.dtype().is_int() {
                return Err(format!("split must be int32 or int64, got {}", split.dtype()));
            }
            let sizes: Vec<usize> = match split.rank() {
                0 => {
                    let s = split.to_i64_vec()[0];
                    if s <= 0 {
                        return Err(format!("a scalar split must be positive, got {s}"));
                    }
                    let s = s as usize;
                    (0..dim.div_ceil(s)).map(|i| s.min(dim - i * s)).collect()
                }
                1 => {
                    let v = split.to_i64_vec();
                    if let Some(bad) = v.iter().find(|&&s| s < 0) {
                        return Err(format!("split sizes must be non-negative, got {bad}"));
                    }
                    let sum = v.iter().try_fold(0i64, |acc, &s| acc.checked_add(s));
                    if sum != Some(dim as i64) {
                        return Err(format!("split sizes {v:?} do not add up to dimension {axis}'s size {dim}"));
                    }
                    v.into_iter().map(|s| s as usize).collect()
                }
                r => return Err(format!("split must be a scalar or a 1-D tensor, got rank {r}")),
            };
            let mut start = 0;
            let mut items = Vec::with_capacity(sizes.len());
            for s in sizes {
                items.push(slice_axis(x, axis, start, s, true)?);
                start += s;
            }
            items
        }
    };
    Ok(vec![Value::Sequence(items)])
}

/// Concatenate a sequence's tensors along `axis`, or stack them along a new axis there.
pub(super) fn concat_from_sequence(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let seq = seq_arg(inputs, 0)?;
    let axis = ctx.attrs.req_int("axis")?;
    let new_axis = match ctx.attrs.int("new_axis", 0)? {
        0 => false,
        1 => true,
        v => return Err(format!("new_axis must be 0 or 1, got {v}")),
    };
    let first = seq.first().ok_or("cannot concatenate an empty sequence")?;
    if !new_axis && first.rank() == 0 {
        return Err("cannot concatenate scalars without new_axis".into());
    }
    let axis = normalize_axis(axis, first.rank() + new_axis as usize)?;
    let parts: Vec<&Tensor> = seq.iter().collect();
    Ok(vec![Value::Tensor(concat(&parts, axis, new_axis)?)])
}

/// Run the body once per element of the input sequences (all the same length); tensor inputs
/// are passed unchanged to every iteration. Each body output is gathered into a sequence.
pub(super) fn sequence_map(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let body = ctx.attrs.graph("body")?;
    let len = seq_arg(inputs, 0)?.len();
    for (i, v) in inputs.iter().enumerate() {
        match v {
            Some(Value::Sequence(s)) if s.len() != len => {
                return Err(format!("input sequence {i} has {} elements, input 0 has {len}", s.len()))
            }
            Some(Value::Sequence(_) | Value::Tensor(_)) => {}
            Some(other) => {
                return Err(format!("input {i} must be a tensor or a sequence, got a {}", other.kind_name()))
            }
            None => return Err(format!("input {i} is missing")),
        }
    }
    if body.inputs().len() != inputs.len() {
        return Err(format!("the body takes {} inputs but the node has {}", body.inputs().len(), inputs.len()));
    }
    let mut outs: Vec<Vec<Tensor>> = (0..ctx.num_outputs).map(|_| Vec::with_capacity(len)).collect();
    for e in 0..len {
        let args: Vec<Value> = inputs
            .iter()
            .flatten()
            .map(|v| match v {
                Value::Sequence(s) => Value::Tensor(s[e].clone()),
                other => (*other).clone(),
            })
            .collect();
        let results = ctx.run_subgraph(body, args).map_err(|m| format!("element {e}: {m}"))?;
        if results.len() != outs.len() {
            return Err(format!("the body produced {} outputs, the node has {}", results.len(), outs.len()));
        }
        for (j, (acc, r)) in outs.iter_mut().zip(results).enumerate() {
            match r {
                Value::Tensor(t) => acc.push(t),
                other => return Err(format!("body output {j} must be a tensor, got a {}", other.kind_name())),
            }
        }
    }
    Ok(outs.into_iter().map(Value::Sequence).collect())
}

/// Input `i` as a sequence.
fn seq_arg<'a>(inputs: &[Option<&'a Value>], i: usize) -> Result<&'a [Tensor], String> {
    match inputs.get(i).copied().flatten() {
        Some(Value::Sequence(s)) => Ok(s),
        Some(other) => Err(format!("input {i} must be a sequence, got a {}", other.kind_name())),
        None => Err(format!("required input {i} is missing")),
    }
}
