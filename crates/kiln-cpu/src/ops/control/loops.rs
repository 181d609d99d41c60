//! Loop and Scan: run a body subgraph repeatedly, threading loop-carried values through the
//! iterations and stacking the per-iteration scan outputs along a new axis.

use super::tensors::{bool_scalar, concat, int_scalar, slice_axis};
use crate::util::{normalize_axis, opt_tensor_arg};
use crate::KernelCtx;
use kiln_ir::{checked_numel, Dim, Network, Tensor, TensorId, Value, ValueType};

/// Loop(M?, cond?, v_initial...) → (v_final..., scan_outputs...).
///
/// The body takes (iteration number, condition, loop-carried values...) and returns
/// (condition, loop-carried values..., scan outputs...). The loop runs while the condition
/// holds and fewer than M iterations have run; without a `cond` input, the body's condition
/// output is ignored and exactly M iterations run.
pub(super) fn loop_op(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let body = ctx.attrs.graph("body")?;
    let max_trips = opt_tensor_arg(inputs, 0)?.map(|m| int_scalar(m, "trip count M")).transpose()?;
    let has_cond = inputs.get(1).copied().flatten().is_some();
    let mut cond = match inputs.get(1).copied().flatten() {
        Some(c) => bool_scalar(c, "cond")?,
        None => true,
    };
    if max_trips.is_none() && !has_cond {
        return Err("a Loop with neither a trip count nor a condition never terminates".into());
    }
    let n = inputs.len().saturating_sub(2);
    let mut carried: Vec<Value> = Vec::with_capacity(n);
    for i in 0..n {
        carried.push(inputs[2 + i].ok_or_else(|| format!("loop-carried input {} is missing", 2 + i))?.clone());
    }
    if body.inputs().len() != n + 2 {
        return Err(format!("the body takes {} inputs, expected 2 + {n}", body.inputs().len()));
    }
    let k = body
        .outputs()
        .len()
        .checked_sub(n + 1)
        .ok_or_else(|| format!("the body has {} outputs, expected at least 1 + {n}", body.outputs().len()))?;
    if ctx.num_outputs != n + k {
        return Err(format!("the node has {} outputs, the body yields {n} + {k}", ctx.num_outputs));
    }

    let mut scans: Vec<Vec<Tensor>> = vec![Vec::new(); k];
    let mut iter = 0i64;
    while cond && max_trips.is_none_or(|m| iter < m) {
        let mut args = Vec::with_capacity(n + 2);
        args.push(Value::Tensor(Tensor::scalar(iter)));
        args.push(Value::Tensor(Tensor::scalar(cond)));
        args.append(&mut carried);
        let mut outs = ctx.run_subgraph(body, args).map_err(|e| format!("iteration {iter}: {e}"))?;
        if outs.len() != n + k + 1 {
            return Err(format!("iteration {iter}: the body produced {} outputs, expected {}", outs.len(), n + k + 1));
        }
        let scan_vals = outs.split_off(n + 1);
        carried = outs.split_off(1);
        if has_cond {
            cond = bool_scalar(&outs[0], "the body's condition output")?;
        }
        for (j, (acc, v)) in scans.iter_mut().zip(scan_vals).enumerate() {
            acc.push(scan_tensor(v, j, iter)?);
        }
        iter += 1;
    }

    let mut results = carried;
    for (j, parts) in scans.into_iter().enumerate() {
        let stacked = if parts.is_empty() {
            empty_scan_output(body, body.outputs()[n + 1 + j], 0)?
        } else {
            let refs: Vec<&Tensor> = parts.iter().collect();
            concat(&refs, 0, true).map_err(|e| format!("scan output {j}: {e}"))?
        };
        results.push(Value::Tensor(stacked));
    }
    Ok(results)
}

/// Scan(state_initial..., scan_inputs...) → (state_final..., scan_outputs...).
///
/// Iteration t feeds the body the states and slice t of every scan input (taken along its
/// `scan_input_axes` entry, from the end when its direction is 1); the body returns the new
/// states and one slice per scan output, stacked along `scan_output_axes` (in reverse order
/// when the output's direction is 1).
pub(super) fn scan_op(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let body = ctx.attrs.graph("body")?;
    let m = ctx.attrs.req_int("num_scan_inputs")?;
    if m <= 0 || m as usize > inputs.len() {
        return Err(format!("num_scan_inputs must be in [1, {}], got {m}", inputs.len()));
    }
    let m = m as usize;
    let n = inputs.len() - m;
    if body.inputs().len() != n + m {
        return Err(format!("the body takes {} inputs, expected {n} states + {m} scan inputs", body.inputs().len()));
    }
    let k =
        body.outputs().len().checked_sub(n).ok_or_else(|| {
            format!("the body has {} outputs, expected at least the {n} states", body.outputs().len())
        })?;
    if ctx.num_outputs != n + k {
        return Err(format!("the node has {} outputs, the body yields {n} states + {k} scan outputs", ctx.num_outputs));
    }
    let in_axes = attr_list(ctx, "scan_input_axes", m)?;
    let in_rev = directions(ctx, "scan_input_directions", m)?;
    let out_axes = attr_list(ctx, "scan_output_axes", k)?;
    let out_rev = directions(ctx, "scan_output_directions", k)?;

    let mut states: Vec<Value> = Vec::with_capacity(n);
    for (i, v) in inputs[..n].iter().enumerate() {
        states.push(v.ok_or_else(|| format!("state input {i} is missing"))?.clone());
    }
    let mut xs: Vec<(&Tensor, usize)> = Vec::with_capacity(m);
    let mut seq_len = None;
    for j in 0..m {
        let x = match inputs[n + j] {
            Some(Value::Tensor(t)) => t,
            Some(other) => return Err(format!("scan input {j} must be a tensor, got a {}", other.kind_name())),
            None => return Err(format!("scan input {j} is missing")),
        };
        if x.rank() == 0 {
            return Err(format!("scan input {j} is a scalar; it needs an axis to scan along"));
        }
        let axis = normalize_axis(in_axes[j], x.rank()).map_err(|e| format!("scan input {j}: {e}"))?;
        let len = x.shape()[axis];
        match seq_len {
            Some(l) if l != len => {
                return Err(format!("scan input {j} has {len} entries along axis {axis}, scan input 0 has {l}"))
            }
            _ => seq_len = Some(len),
        }
        xs.push((x, axis));
    }
    let seq_len = seq_len.unwrap_or(0);

    let mut scans: Vec<Vec<Tensor>> = (0..k).map(|_| Vec::with_capacity(seq_len)).collect();
    for t in 0..seq_len {
        let mut args = Vec::with_capacity(n + m);
        args.append(&mut states);
        for (j, &(x, axis)) in xs.iter().enumerate() {
            let idx = if in_rev[j] { seq_len - 1 - t } else { t };
            args.push(Value::Tensor(slice_axis(x, axis, idx, 1, false)?));
        }
        let mut outs = ctx.run_subgraph(body, args).map_err(|e| format!("iteration {t}: {e}"))?;
        if outs.len() != n + k {
            return Err(format!("iteration {t}: the body produced {} outputs, expected {}", outs.len(), n + k));
        }
        let scan_vals = outs.split_off(n);
        states = outs;
        for (j, (acc, v)) in scans.iter_mut().zip(scan_vals).enumerate() {
            acc.push(scan_tensor(v, j, t as i64)?);
        }
    }

    let mut results = states;
    for (j, mut parts) in scans.into_iter().enumerate() {
        let stacked = if parts.is_empty() {
            let id = body.outputs()[n + j];
            let rank = body.tensor(id).ty.as_ref().and_then(ValueType::as_tensor).and_then(|t| t.rank()).unwrap_or(0);
            let axis = normalize_axis(out_axes[j], rank + 1).map_err(|e| format!("scan output {j}: {e}"))?;
            empty_scan_output(body, id, axis)?
        } else {
            if out_rev[j] {
                parts.reverse();
            }
            let axis = normalize_axis(out_axes[j], parts[0].rank() + 1).map_err(|e| format!("scan output {j}: {e}"))?;
            let refs: Vec<&Tensor> = parts.iter().collect();
            concat(&refs, axis, true).map_err(|e| format!("scan output {j}: {e}"))?
        };
        results.push(Value::Tensor(stacked));
    }
    Ok(results)
}

/// A per-iteration scan output, which must be a tensor.
fn scan_tensor(v: Value, j: usize, iter: i64) -> Result<Tensor, String> {
    match v {
        Value::Tensor(t) => Ok(t),
        other => Err(format!("iteration {iter}: scan output {j} must be a tensor, got a {}", other.kind_name())),
    }
}

/// The scan output of a loop that ran zero times: no iteration produced a slice, so its dtype
/// and shape come from the body output's static type, with a 0-sized axis inserted at `axis`
/// (dims unknown statically are taken as 0; the result is empty either way).
fn empty_scan_output(body: &Network, id: TensorId, axis: usize) -> Result<Tensor, String> {
    let info = body.tensor(id);
    let tt = info.ty.as_ref().and_then(ValueType::as_tensor).ok_or_else(|| {
        format!("the loop ran zero times and the type of scan output '{}' is not known statically", info.name)
    })?;
    let mut shape: Vec<usize> = tt
        .shape
        .as_ref()
        .map(|s| s.iter().map(|d| if let Dim::Known(n) = d { *n } else { 0 }).collect())
        .unwrap_or_default();
    shape.insert(axis.min(shape.len()), 0);
    checked_numel(&shape).map_err(|e| e.to_string())?;
    Tensor::zeros(tt.dtype, shape).map_err(|e| e.to_string())
}

/// An ints attribute with one entry per scan input/output, all 0 when absent.
fn attr_list(ctx: &KernelCtx, name: &str, len: usize) -> Result<Vec<i64>, String> {
    let v = ctx.attrs.ints(name, vec![0; len])?;
    if v.len() != len {
        return Err(format!("{name} must have {len} entries, it has {}", v.len()));
    }
    Ok(v)
}

/// Scan directions: 0 = forward, 1 = reverse.
fn directions(ctx: &KernelCtx, name: &str, len: usize) -> Result<Vec<bool>, String> {
    attr_list(ctx, name, len)?
        .into_iter()
        .map(|d| match d {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(format!("{name} entries must be 0 (forward) or 1 (reverse), got {d}")),
        })
        .collect()
}
