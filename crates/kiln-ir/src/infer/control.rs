//! Inference rules for control flow (If, Loop, Scan), sequences and optionals.
//!
//! Subgraph ops derive their output types from the subgraph's output tensor types. Where two
//! sources disagree (the two branches of an If, a loop-carried value before and after an
//! iteration) the types are merged: the dtype must agree, dims that differ become unknown.

use super::helpers::normalize_axis;
use super::{InferFn, Known};
use crate::{Attribute, DType, Dim, Network, Shape, TensorType, ValueType};

pub(super) fn rule(op: &str) -> Option<InferFn> {
    Some(match op {
        "If" => infer_if,
        "Loop" => infer_loop,
        "Scan" => infer_scan,
        "SequenceEmpty" => infer_sequence_empty,
        "SequenceConstruct" => infer_sequence_construct,
        "SequenceInsert" => infer_sequence_insert,
        "SequenceErase" => infer_sequence_erase,
        "SequenceAt" => infer_sequence_at,
        "SequenceLength" => infer_sequence_length,
        "SplitToSequence" => infer_split_to_sequence,
        "ConcatFromSequence" => infer_concat_from_sequence,
        "SequenceMap" => infer_sequence_map,
        "Optional" => infer_optional,
        "OptionalHasElement" => infer_optional_has_element,
        "OptionalGetElement" => infer_optional_get_element,
        _ => return None,
    })
}

fn infer_if(k: &Known) -> Result<Vec<ValueType>, String> {
    let cond = k.tensor(0)?;
    check_bool_scalar(cond, "cond")?;
    let then_g = k.attrs.graph("then_branch")?;
    let else_g = k.attrs.graph("else_branch")?;
    for (name, g) in [("then_branch", then_g), ("else_branch", else_g)] {
        if !g.inputs().is_empty() {
            return Err(format!("{name} must take no inputs, it declares {}", g.inputs().len()));
        }
        if g.outputs().len() != k.num_outputs {
            return Err(format!("{name} has {} outputs but the node has {}", g.outputs().len(), k.num_outputs));
        }
    }
    let then_t = output_types(then_g);
    let else_t = output_types(else_g);
    // A constant condition selects its branch statically, with that branch's exact types.
    if let Some(c) = k.const_input(0) {
        let taken = c.to_i64_vec().first().copied().unwrap_or(0) != 0;
        return Ok(known_prefix(if taken { then_t } else { else_t }));
    }
    let mut out = Vec::with_capacity(k.num_outputs);
    for (i, (t, e)) in then_t.into_iter().zip(else_t).enumerate() {
        out.push(match (t, e) {
            (Some(t), Some(e)) => Some(merge(&t, &e).map_err(|m| format!("output {i} differs between branches: {m}"))?),
            _ => None,
        });
    }
    Ok(known_prefix(out))
}

fn infer_loop(k: &Known) -> Result<Vec<ValueType>, String> {
    let body = k.attrs.graph("body")?;
    let trip = k.opt_tensor(0)?;
    if let Some(t) = trip {
        if t.dtype != DType::I64 {
            return Err(format!("trip count M must be int64, got {}", t.dtype));
        }
        check_single(t, "M")?;
    }
    let cond = k.opt_tensor(1)?;
    if let Some(c) = cond {
        check_bool_scalar(c, "cond")?;
    }
    let n = k.inputs.len().saturating_sub(2);
    if body.inputs().len() != n + 2 {
        return Err(format!(
            "the body must take 2 + {n} inputs (iteration number, condition, loop-carried values), it takes {}",
            body.inputs().len()
        ));
    }
    if body.outputs().len() < n + 1 {
        return Err(format!(
            "the body must produce 1 + {n} outputs (condition, loop-carried values) plus scan outputs, it produces {}",
            body.outputs().len()
        ));
    }
    let scans = body.outputs().len() - n - 1;
    if k.num_outputs != n + scans {
        return Err(format!(
            "the node has {} outputs but the body yields {n} loop-carried values and {scans} scan outputs",
            k.num_outputs
        ));
    }
    let body_t = output_types(body);
    let mut out = Vec::with_capacity(n + scans);
    for i in 0..n {
        let initial = k.inputs[2 + i].ok_or_else(|| format!("loop-carried input {} is missing", 2 + i))?;
        out.push(Some(carried_type(initial, body_t[1 + i].as_ref(), i)?));
    }
    // The trip count is static only when it is a constant and no condition can end the loop
    // early (without a `cond` input, the body's condition output is ignored).
    let trips = match (trip.and(k.const_input(0)), cond) {
        (Some(m), None) => m.to_i64_vec().first().map(|&m| Dim::Known(m.max(0) as usize)).unwrap_or(Dim::Unknown),
        _ => Dim::Unknown,
    };
    for (j, t) in body_t[1 + n..].iter().enumerate() {
        out.push(match t {
            Some(ValueType::Tensor(t)) => Some(ValueType::Tensor(insert_dim(t, 0, trips.clone()))),
            Some(other) => return Err(format!("scan output {j} must be a tensor, the body produces {other}")),
            None => None,
        });
    }
    Ok(known_prefix(out))
}

fn infer_scan(k: &Known) -> Result<Vec<ValueType>, String> {
    let body = k.attrs.graph("body")?;
    let m = k.attrs.req_int("num_scan_inputs")?;
    if m <= 0 || m as usize > k.inputs.len() {
        return Err(format!("num_scan_inputs must be in [1, {}], got {m}", k.inputs.len()));
    }
    let m = m as usize;
    let n = k.inputs.len() - m;
    if body.inputs().len() != n + m {
        return Err(format!(
            "the body must take {} inputs ({n} states, {m} scan slices), it takes {}",
            n + m,
            body.inputs().len()
        ));
    }
    if body.outputs().len() < n {
        return Err(format!("the body must produce at least the {n} states, it produces {}", body.outputs().len()));
    }
    let scans = body.outputs().len() - n;
    if k.num_outputs != n + scans {
        return Err(format!(
            "the node has {} outputs but the body yields {n} states and {scans} scan outputs",
            k.num_outputs
        ));
    }
    let in_axes = k.attrs.ints("scan_input_axes", vec![0; m])?;
    let in_dirs = k.attrs.ints("scan_input_directions", vec![0; m])?;
    let out_axes = k.attrs.ints("scan_output_axes", vec![0; scans])?;
    let out_dirs = k.attrs.ints("scan_output_directions", vec![0; scans])?;
    for (name, v, len) in [
        ("scan_input_axes", &in_axes, m),
        ("scan_input_directions", &in_dirs, m),
        ("scan_output_axes", &out_axes, scans),
        ("scan_output_directions", &out_dirs, scans),
    ] {
        if v.len() != len {
            return Err(format!("{name} must have {len} entries, it has {}", v.len()));
        }
    }
    if let Some(d) = in_dirs.iter().chain(&out_dirs).find(|&&d| d != 0 && d != 1) {
        return Err(format!("scan directions must be 0 (forward) or 1 (reverse), got {d}"));
    }
    // The sequence length, from whichever scan input has a static size along its axis.
    let mut seq_len = Dim::Unknown;
    for (j, &in_axis) in in_axes.iter().enumerate() {
        let t = k.tensor(n + j)?;
        if let Some(shape) = &t.shape {
            let axis = normalize_axis(in_axis, shape.len())
                .map_err(|e| format!("scan input {j}: {e}"))
                .and_then(|a| if shape.is_empty() { Err(format!("scan input {j} is a scalar")) } else { Ok(a) })?;
            match (&seq_len, &shape[axis]) {
                (Dim::Known(a), Dim::Known(b)) if a != b => {
                    return Err(format!("scan inputs disagree on the sequence length ({a} vs {b})"))
                }
                (Dim::Known(_), _) => {}
                (_, d) => seq_len = d.clone(),
            }
        }
    }
    let body_t = output_types(body);
    let mut out = Vec::with_capacity(n + scans);
    for (i, (initial, body_out)) in k.inputs[..n].iter().zip(&body_t).enumerate() {
        let initial = initial.ok_or_else(|| format!("state input {i} is missing"))?;
        out.push(Some(carried_type(initial, body_out.as_ref(), i)?));
    }
    for (j, t) in body_t[n..].iter().enumerate() {
        out.push(match t {
            Some(ValueType::Tensor(t)) => {
                let axis = match &t.shape {
                    Some(s) => normalize_axis(out_axes[j], s.len() + 1).map_err(|e| format!("scan output {j}: {e}"))?,
                    None => 0,
                };
                Some(ValueType::Tensor(insert_dim(t, axis, seq_len.clone())))
            }
            Some(other) => return Err(format!("scan output {j} must be a tensor, the body produces {other}")),
            None => None,
        });
    }
    Ok(known_prefix(out))
}

fn infer_sequence_empty(k: &Known) -> Result<Vec<ValueType>, String> {
    let dtype = match k.attrs.int_opt("dtype")? {
        None => DType::F32,
        Some(code) => DType::from_onnx_code(code as i32).map_err(|e| format!("dtype {code}: {e}"))?,
    };
    Ok(vec![seq_of(ValueType::Tensor(TensorType::unranked(dtype)))])
}

fn infer_sequence_construct(k: &Known) -> Result<Vec<ValueType>, String> {
    if k.inputs.is_empty() {
        return Err("SequenceConstruct needs at least one input".into());
    }
    let mut elem = ValueType::Tensor(k.tensor(0)?.clone());
    for i in 1..k.inputs.len() {
        let t = ValueType::Tensor(k.tensor(i)?.clone());
        elem = merge(&elem, &t).map_err(|m| format!("input {i}: {m}"))?;
    }
    Ok(vec![seq_of(elem)])
}

fn infer_sequence_insert(k: &Known) -> Result<Vec<ValueType>, String> {
    let elem = seq_elem(k, 0)?;
    let t = ValueType::Tensor(k.tensor(1)?.clone());
    check_position(k, 2)?;
    Ok(vec![seq_of(merge(elem, &t).map_err(|m| format!("inserted tensor: {m}"))?)])
}

fn infer_sequence_erase(k: &Known) -> Result<Vec<ValueType>, String> {
    let elem = seq_elem(k, 0)?;
    check_position(k, 1)?;
    Ok(vec![seq_of(elem.clone())])
}

fn infer_sequence_at(k: &Known) -> Result<Vec<ValueType>, String> {
    let elem = seq_elem(k, 0)?;
    if !k.has_input(1) {
        return Err("required input 1 (position) is missing".into());
    }
    check_position(k, 1)?;
    Ok(vec![elem.clone()])
}

fn infer_sequence_length(k: &Known) -> Result<Vec<ValueType>, String> {
    seq_elem(k, 0)?;
    Ok(vec![ValueType::tensor(DType::I64, vec![])])
}

fn infer_split_to_sequence(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = k.tensor(0)?;
    let keepdims = k.attrs.int("keepdims", 1)? != 0;
    let split = k.opt_tensor(1)?;
    if let Some(s) = split {
        if !matches!(s.dtype, DType::I32 | DType::I64) {
            return Err(format!("split must be int32 or int64, got {}", s.dtype));
        }
        if s.rank().is_some_and(|r| r > 1) {
            return Err("split must be a scalar or a 1-D tensor".into());
        }
    }
    let Some(shape) = &x.shape else {
        return Ok(vec![seq_of(ValueType::Tensor(TensorType::unranked(x.dtype)))]);
    };
    if shape.is_empty() {
        return Err("SplitToSequence needs an input of rank >= 1".into());
    }
    let axis = normalize_axis(k.attrs.int("axis", 0)?, shape.len())?;
    let mut elem: Shape = shape.clone();
    match split {
        None if keepdims => elem[axis] = Dim::Known(1),
        None => {
            elem.remove(axis);
        }
        Some(_) => {
            // Element sizes along the axis are static only when they are all alike.
            let sizes = k.const_input(1).map(|c| (c.rank(), c.to_i64_vec()));
            elem[axis] = match (sizes, shape[axis].known()) {
                (Some((0, v)), Some(d)) if v.first().is_some_and(|&s| s > 0 && d as i64 % s == 0) => {
                    Dim::Known(v[0] as usize)
                }
                (Some((1, v)), _) if !v.is_empty() && v.iter().all(|&s| s == v[0] && s >= 0) => {
                    Dim::Known(v[0] as usize)
                }
                _ => Dim::Unknown,
            };
        }
    }
    Ok(vec![seq_of(ValueType::tensor(x.dtype, elem))])
}

fn infer_concat_from_sequence(k: &Known) -> Result<Vec<ValueType>, String> {
    let elem = seq_elem(k, 0)?;
    let axis = k.attrs.req_int("axis")?;
    let new_axis = k.attrs.int("new_axis", 0)?;
    if new_axis != 0 && new_axis != 1 {
        return Err(format!("new_axis must be 0 or 1, got {new_axis}"));
    }
    let t = elem_tensor(elem)?;
    let Some(shape) = &t.shape else {
        return Ok(vec![ValueType::Tensor(TensorType::unranked(t.dtype))]);
    };
    let mut out = shape.clone();
    if new_axis == 1 {
        let a = normalize_axis(axis, shape.len() + 1)?;
        out.insert(a, Dim::Unknown);
    } else {
        if shape.is_empty() {
            return Err("cannot concatenate scalars without new_axis".into());
        }
        let a = normalize_axis(axis, shape.len())?;
        out[a] = Dim::Unknown;
    }
    Ok(vec![ValueType::tensor(t.dtype, out)])
}

fn infer_sequence_map(k: &Known) -> Result<Vec<ValueType>, String> {
    let body = k.attrs.graph("body")?;
    seq_elem(k, 0)?;
    for i in 1..k.inputs.len() {
        match k.inputs[i] {
            Some(ValueType::Tensor(_) | ValueType::Sequence(_)) => {}
            Some(other) => return Err(format!("input {i} must be a tensor or a sequence, found {other}")),
            None => return Err(format!("input {i} is missing")),
        }
    }
    if body.inputs().len() != k.inputs.len() {
        return Err(format!("the body takes {} inputs but the node has {}", body.inputs().len(), k.inputs.len()));
    }
    if body.outputs().len() != k.num_outputs {
        return Err(format!("the body has {} outputs but the node has {}", body.outputs().len(), k.num_outputs));
    }
    let mut out = Vec::with_capacity(k.num_outputs);
    for (j, t) in output_types(body).into_iter().enumerate() {
        out.push(match t {
            Some(t @ ValueType::Tensor(_)) => Some(seq_of(t)),
            Some(other) => return Err(format!("body output {j} must be a tensor, found {other}")),
            None => None,
        });
    }
    Ok(known_prefix(out))
}

fn infer_optional(k: &Known) -> Result<Vec<ValueType>, String> {
    let declared = match k.attrs.get("type") {
        None => None,
        Some(Attribute::Type(t)) => Some(t),
        Some(other) => return Err(format!("attribute 'type' must be a type but is {}", other.kind_name())),
    };
    match k.inputs.first().copied().flatten() {
        Some(ValueType::Optional(_)) => Err("the input of Optional must be a tensor or a sequence".into()),
        Some(t) => {
            if let Some(d) = declared {
                merge(d, t).map_err(|m| format!("input does not match attribute 'type': {m}"))?;
            }
            Ok(vec![ValueType::Optional(Box::new(t.clone()))])
        }
        None => match declared {
            Some(ValueType::Optional(_)) => Err("attribute 'type' must be a tensor or sequence type".into()),
            Some(t) => Ok(vec![ValueType::Optional(Box::new(t.clone()))]),
            None => Err("an Optional without input needs the 'type' attribute".into()),
        },
    }
}

fn infer_optional_has_element(_k: &Known) -> Result<Vec<ValueType>, String> {
    Ok(vec![ValueType::tensor(DType::Bool, vec![])])
}

fn infer_optional_get_element(k: &Known) -> Result<Vec<ValueType>, String> {
    match k.inputs.first().copied().flatten() {
        Some(ValueType::Optional(inner)) => Ok(vec![(**inner).clone()]),
        Some(t) => Ok(vec![t.clone()]),
        None => Err("required input 0 is missing".into()),
    }
}

/// Declared/inferred types of a subgraph's outputs.
fn output_types(g: &Network) -> Vec<Option<ValueType>> {
    g.outputs().iter().map(|&id| g.tensor(id).ty.clone()).collect()
}

/// The leading known types; a rule may return fewer types than outputs (the rest are unknown),
/// but cannot leave a gap.
fn known_prefix(types: Vec<Option<ValueType>>) -> Vec<ValueType> {
    types.into_iter().map_while(|t| t).collect()
}

/// Type of a loop-carried value after the loop: the initial type merged with what the body
/// produces. If the body changes its kind (e.g. an optional sequence in, a sequence out), the
/// body's type is what any iteration leaves behind.
fn carried_type(initial: &ValueType, body: Option<&ValueType>, i: usize) -> Result<ValueType, String> {
    match body {
        None => Ok(initial.clone()),
        Some(b) if std::mem::discriminant(b) == std::mem::discriminant(initial) => {
            merge(initial, b).map_err(|m| format!("loop-carried value {i}: {m}"))
        }
        Some(b) => Ok(b.clone()),
    }
}

/// The common type of two values that may flow along one edge: equal dtypes and kinds, dims
/// kept where they agree.
fn merge(a: &ValueType, b: &ValueType) -> Result<ValueType, String> {
    match (a, b) {
        (ValueType::Tensor(x), ValueType::Tensor(y)) => {
            if x.dtype != y.dtype {
                return Err(format!("dtype {} vs {}", x.dtype, y.dtype));
            }
            let shape = match (&x.shape, &y.shape) {
                (Some(s), Some(t)) if s.len() == t.len() => {
                    Some(s.iter().zip(t).map(|(p, q)| if p == q { p.clone() } else { Dim::Unknown }).collect())
                }
                _ => None,
            };
            Ok(ValueType::Tensor(TensorType { dtype: x.dtype, shape }))
        }
        (ValueType::Sequence(x), ValueType::Sequence(y)) => Ok(seq_of(merge(x, y)?)),
        (ValueType::Optional(x), ValueType::Optional(y)) => Ok(ValueType::Optional(Box::new(merge(x, y)?))),
        _ => Err(format!("{a} vs {b}")),
    }
}

fn seq_of(elem: ValueType) -> ValueType {
    ValueType::Sequence(Box::new(elem))
}

/// Element type of sequence input `i`.
fn seq_elem<'a>(k: &Known<'a>, i: usize) -> Result<&'a ValueType, String> {
    match k.inputs.get(i).copied().flatten() {
        Some(ValueType::Sequence(e)) => Ok(e),
        Some(other) => Err(format!("input {i} must be a sequence, found {other}")),
        None => Err(format!("required input {i} is missing")),
    }
}

fn elem_tensor(elem: &ValueType) -> Result<&TensorType, String> {
    elem.as_tensor().ok_or_else(|| format!("sequence elements must be tensors, found {elem}"))
}

/// An optional position input: an int32/int64 tensor of one element.
fn check_position(k: &Known, i: usize) -> Result<(), String> {
    if let Some(p) = k.opt_tensor(i)? {
        if !matches!(p.dtype, DType::I32 | DType::I64) {
            return Err(format!("position must be int32 or int64, got {}", p.dtype));
        }
        check_single(p, "position")?;
    }
    Ok(())
}

fn check_bool_scalar(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype != DType::Bool {
        return Err(format!("{what} must be bool, got {}", t.dtype));
    }
    check_single(t, what)
}

/// A tensor that must hold exactly one element (a scalar, or a shape of ones).
fn check_single(t: &TensorType, what: &str) -> Result<(), String> {
    if let Some(s) = &t.shape {
        if s.iter().any(|d| matches!(d, Dim::Known(n) if *n != 1)) {
            return Err(format!("{what} must hold a single element, its shape is {}", crate::format_shape(s)));
        }
    }
    Ok(())
}

/// `t` with `dim` inserted at `axis` (rank unknown stays unknown).
fn insert_dim(t: &TensorType, axis: usize, dim: Dim) -> TensorType {
    let shape = t.shape.as_ref().map(|s| {
        let mut s = s.clone();
        s.insert(axis.min(s.len()), dim);
        s
    });
    TensorType { dtype: t.dtype, shape }
}
