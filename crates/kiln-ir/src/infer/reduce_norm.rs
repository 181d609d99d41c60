//! Inference rules for the reduction / normalization family: Reduce*, ArgMax/ArgMin,
//! Softmax/LogSoftmax/Hardmax, CumSum/CumProd, the normalization layers, the losses, Einsum
//! and Det.

use super::helpers::{normalize_axis, unranked};
use super::{InferFn, Known};
use crate::{DType, Dim, Shape, ValueType};

type Res = Result<Vec<ValueType>, String>;

pub(super) fn rule(op: &str) -> Option<InferFn> {
    Some(match op {
        "ReduceSum" | "ReduceMean" | "ReduceProd" | "ReduceL1" | "ReduceL2" | "ReduceSumSquare" => reduce_numeric,
        "ReduceMax" | "ReduceMin" => reduce_any,
        "ReduceLogSum" | "ReduceLogSumExp" => reduce_float,
        "ArgMax" | "ArgMin" => arg_extreme,
        "Softmax" | "LogSoftmax" | "Hardmax" => same_float,
        "CumSum" | "CumProd" => cumulative,
        "LayerNormalization" => layer_normalization,
        "RMSNormalization" => rms_normalization,
        "BatchNormalization" => batch_normalization,
        "InstanceNormalization" | "GroupNormalization" | "LRN" => channel_first_float,
        "LpNormalization" | "MeanVarianceNormalization" => same_float,
        "NegativeLogLikelihoodLoss" | "SoftmaxCrossEntropyLoss" => loss,
        "Einsum" => einsum,
        "Det" => det,
        _ => return None,
    })
}

fn reduce_numeric(k: &Known) -> Res {
    let t = k.tensor(0)?;
    if t.dtype == DType::Bool {
        return Err(format!("{} does not support bool tensors", k.op));
    }
    reduce_shape(k)
}

fn reduce_any(k: &Known) -> Res {
    reduce_shape(k)
}

fn reduce_float(k: &Known) -> Res {
    require_float(k, 0)?;
    reduce_shape(k)
}

/// Output of a Reduce*: the input's dtype; the shape follows from constant (or absent) axes.
fn reduce_shape(k: &Known) -> Res {
    let t = k.tensor(0)?;
    let keepdims = k.attrs.int("keepdims", 1)? != 0;
    let noop = k.attrs.int("noop_with_empty_axes", 0)? != 0;
    if let Some(a) = k.opt_tensor(1)? {
        if !a.dtype.is_int() {
            return Err(format!("axes must be an integer tensor, got {}", a.dtype));
        }
    }
    let axes = match (k.has_input(1), k.const_input(1)) {
        (false, _) => Vec::new(),
        (true, Some(c)) => c.to_i64_vec(),
        (true, None) => {
            // Which axes are reduced is only known at run time.
            return Ok(vec![match (&t.shape, keepdims) {
                (Some(s), true) => ValueType::tensor(t.dtype, vec![Dim::Unknown; s.len()]),
                _ => unranked(t.dtype),
            }]);
        }
    };
    let Some(shape) = &t.shape else { return Ok(vec![unranked(t.dtype)]) };
    let rank = shape.len();
    let reduced = crate::spec::reduction_mask(&axes, rank, noop)?;
    let mut out = Shape::new();
    for (d, &r) in shape.iter().zip(&reduced) {
        if !r {
            out.push(d.clone());
        } else if keepdims {
            out.push(Dim::Known(1));
        }
    }
    Ok(vec![ValueType::tensor(t.dtype, out)])
}

fn arg_extreme(k: &Known) -> Res {
    let t = k.tensor(0)?;
    if t.dtype == DType::Bool {
        return Err(format!("{} does not support bool tensors", k.op));
    }
    let keepdims = k.attrs.int("keepdims", 1)? != 0;
    let Some(shape) = &t.shape else { return Ok(vec![unranked(DType::I64)]) };
    if shape.is_empty() {
        return Err(format!("{} needs an input of rank >= 1", k.op));
    }
    let axis = normalize_axis(k.attrs.int("axis", 0)?, shape.len())?;
    let mut out = shape.clone();
    if keepdims {
        out[axis] = Dim::Known(1);
    } else {
        out.remove(axis);
    }
    Ok(vec![ValueType::tensor(DType::I64, out)])
}

/// Float ops whose output has the input's type (Softmax, LpNormalization, ...); checks `axis`
/// against the rank where there is one.
fn same_float(k: &Known) -> Res {
    let t = require_float(k, 0)?;
    if let (Some(shape), Some(axis)) = (&t.shape, k.attrs.int_opt("axis")?) {
        if !shape.is_empty() {
            normalize_axis(axis, shape.len())?;
        }
    }
    if k.op == "LpNormalization" {
        let p = k.attrs.int("p", 2)?;
        if p != 1 && p != 2 {
            return Err(format!("p must be 1 or 2, got {p}"));
        }
    }
    Ok(vec![ValueType::Tensor(t.clone())])
}

fn cumulative(k: &Known) -> Res {
    let t = k.tensor(0)?;
    if t.dtype == DType::Bool {
        return Err(format!("{} does not support bool tensors", k.op));
    }
    let a = k.tensor(1)?;
    if !matches!(a.dtype, DType::I32 | DType::I64) {
        return Err(format!("axis must be int32 or int64, got {}", a.dtype));
    }
    if let Some(s) = &a.shape {
        if s.len() > 1 || s.iter().any(|d| matches!(d, Dim::Known(n) if *n != 1)) {
            return Err(format!("axis must be a scalar, got shape {}", crate::format_shape(s)));
        }
    }
    if let (Some(c), Some(shape)) = (k.const_input(1), &t.shape) {
        if let Some(&axis) = c.to_i64_vec().first() {
            normalize_axis(axis, shape.len())?;
        }
    }
    Ok(vec![ValueType::Tensor(t.clone())])
}

fn layer_normalization(k: &Known) -> Res {
    let t = require_float(k, 0)?;
    let stash = stash_dtype(k)?;
    let mut out = vec![ValueType::Tensor(t.clone())];
    let stat = match &t.shape {
        Some(s) => {
            let axis = normalize_axis(k.attrs.int("axis", -1)?, s.len())?;
            let mut st = s.clone();
            st[axis..].fill(Dim::Known(1));
            ValueType::tensor(stash, st)
        }
        None => unranked(stash),
    };
    out.extend(std::iter::repeat_n(stat, k.num_outputs.saturating_sub(1).min(2)));
    Ok(out)
}

fn rms_normalization(k: &Known) -> Res {
    let t = require_float(k, 0)?;
    stash_dtype(k)?;
    if let Some(s) = &t.shape {
        normalize_axis(k.attrs.int("axis", -1)?, s.len())?;
    }
    Ok(vec![ValueType::Tensor(t.clone())])
}

fn batch_normalization(k: &Known) -> Res {
    let t = require_float(k, 0)?;
    check_channel_rank(k, t.shape.as_ref())?;
    let mean = k.tensor(3)?;
    let c = t.shape.as_ref().map_or(Dim::Unknown, |s| s[1].clone());
    let stat = ValueType::tensor(mean.dtype, vec![c]);
    let mut out = vec![ValueType::Tensor(t.clone())];
    out.extend(std::iter::repeat_n(stat, k.num_outputs.saturating_sub(1).min(2)));
    Ok(out)
}

fn channel_first_float(k: &Known) -> Res {
    let t = require_float(k, 0)?;
    check_channel_rank(k, t.shape.as_ref())?;
    if k.op == "GroupNormalization" && k.attrs.req_int("num_groups")? <= 0 {
        return Err("num_groups must be positive".into());
    }
    Ok(vec![ValueType::Tensor(t.clone())])
}

fn loss(k: &Known) -> Res {
    let t = require_float(k, 0)?;
    let target = k.tensor(1)?;
    if !target.dtype.is_int() {
        return Err(format!("target must be an integer tensor, got {}", target.dtype));
    }
    let reduction = k.attrs.string("reduction", "mean".into())?;
    let loss = match reduction.as_str() {
        "none" => match &t.shape {
            Some(s) if s.len() >= 2 => {
                let mut st = vec![s[0].clone()];
                st.extend_from_slice(&s[2..]);
                ValueType::tensor(t.dtype, st)
            }
            Some(s) => return Err(format!("input must have shape [N, C, ...], got {}", crate::format_shape(s))),
            None => unranked(t.dtype),
        },
        "sum" | "mean" => ValueType::tensor(t.dtype, vec![]),
        other => return Err(format!("reduction must be none, sum or mean, got '{other}'")),
    };
    let mut out = vec![loss];
    if k.num_outputs > 1 {
        out.push(ValueType::Tensor(t.clone()));
    }
    Ok(out)
}

fn det(k: &Known) -> Res {
    let t = require_float(k, 0)?;
    let Some(s) = &t.shape else { return Ok(vec![unranked(t.dtype)]) };
    if s.len() < 2 {
        return Err(format!("Det needs square matrices [..., M, M], got {}", crate::format_shape(s)));
    }
    if let (Dim::Known(a), Dim::Known(b)) = (&s[s.len() - 2], &s[s.len() - 1]) {
        if a != b {
            return Err(format!("Det needs square matrices, got {}", crate::format_shape(s)));
        }
    }
    Ok(vec![ValueType::tensor(t.dtype, s[..s.len() - 2].to_vec())])
}

/// Einsum: the output rank (and known sizes) follow from the equation and input ranks.
fn einsum(k: &Known) -> Res {
    let eq = k.attrs.string_opt("equation")?.ok_or("required attribute 'equation' is missing")?;
    let dtype = k.dtype(0)?;
    if dtype == DType::Bool {
        return Err("Einsum does not support bool tensors".into());
    }
    let mut shapes = Vec::new();
    for i in 0..k.inputs.len() {
        let t = k.tensor(i)?;
        if t.dtype != dtype {
            return Err(format!("Einsum inputs must share one dtype ({dtype} vs {})", t.dtype));
        }
        match &t.shape {
            Some(s) => shapes.push(s.clone()),
            None => return Ok(vec![unranked(dtype)]),
        }
    }
    Ok(vec![ValueType::tensor(dtype, einsum_shape(&eq, &shapes)?)])
}

/// Output shape of an einsum equation over inputs of the given static shapes.
fn einsum_shape(equation: &str, shapes: &[Shape]) -> Result<Shape, String> {
    let eq: String = equation.chars().filter(|c| *c != ' ').collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != shapes.len() {
        return Err(format!("equation '{equation}' has {} operands but {} inputs", terms.len(), shapes.len()));
    }
    let valid = |s: &str| s.bytes().all(|b| b.is_ascii_alphabetic());
    // Letter → dim, and the broadcast ellipsis dims (aligned to the right).
    let mut letters: Vec<(u8, Dim, usize)> = Vec::new();
    let mut ell: Vec<Dim> = Vec::new();
    for (term, shape) in terms.iter().zip(shapes) {
        let (head, tail) = match term.split_once("...") {
            Some((h, t)) => (h, t),
            None => (*term, ""),
        };
        if !valid(head) || !valid(tail) {
            return Err(format!("invalid term '{term}' in einsum equation '{equation}'"));
        }
        let n_letters = head.len() + tail.len();
        let has_ell = term.contains("...");
        if n_letters > shape.len() || !has_ell && n_letters != shape.len() {
            return Err(format!("term '{term}' of '{equation}' does not fit an input of rank {}", shape.len()));
        }
        let n_ell = shape.len() - n_letters;
        let dims_of_letters = shape[..head.len()].iter().chain(&shape[head.len() + n_ell..]);
        for (b, d) in head.bytes().chain(tail.bytes()).zip(dims_of_letters) {
            match letters.iter_mut().find(|(x, _, _)| *x == b) {
                Some((_, have, count)) => {
                    *have = merge_dim(have, d)?;
                    *count += 1;
                }
                None => letters.push((b, d.clone(), 1)),
            }
        }
        let e = &shape[head.len()..head.len() + n_ell];
        if e.len() > ell.len() {
            let mut grown = e[..e.len() - ell.len()].to_vec();
            grown.append(&mut ell);
            ell = grown;
        }
        let off = ell.len() - e.len();
        for (i, d) in e.iter().enumerate() {
            ell[off + i] = merge_dim(&ell[off + i], d)?;
        }
    }
    let dim_of = |b: u8| letters.iter().find(|(x, _, _)| *x == b).map(|(_, d, _)| d.clone());
    let mut out = Shape::new();
    match rhs {
        Some(r) => {
            let (head, tail) = match r.split_once("...") {
                Some((h, t)) => (h, Some(t)),
                None => (r, None),
            };
            if !valid(head) || !tail.is_none_or(valid) {
                return Err(format!("invalid output term '{r}' in einsum equation '{equation}'"));
            }
            let mut seen = Vec::new();
            for b in head.bytes().chain(tail.unwrap_or("").bytes()) {
                if seen.contains(&b) {
                    return Err(format!("output label '{}' repeats in '{equation}'", b as char));
                }
                seen.push(b);
            }
            let get =
                |b: u8| dim_of(b).ok_or_else(|| format!("output label '{}' does not occur in any input", b as char));
            for b in head.bytes() {
                out.push(get(b)?);
            }
            if let Some(tail) = tail {
                out.extend(ell.iter().cloned());
                for b in tail.bytes() {
                    out.push(get(b)?);
                }
            }
        }
        None => {
            out.extend(ell.iter().cloned());
            let mut once: Vec<u8> = letters.iter().filter(|(_, _, c)| *c == 1).map(|(b, _, _)| *b).collect();
            once.sort_unstable();
            out.extend(once.into_iter().filter_map(dim_of));
        }
    }
    Ok(out)
}

/// Two static sizes of one einsum label (1 broadcasts).
fn merge_dim(a: &Dim, b: &Dim) -> Result<Dim, String> {
    Ok(match (a, b) {
        (Dim::Known(1), d) | (d, Dim::Known(1)) => d.clone(),
        (Dim::Known(x), Dim::Known(y)) if x != y => return Err(format!("einsum label has sizes {x} and {y}")),
        (Dim::Known(x), _) | (_, Dim::Known(x)) => Dim::Known(*x),
        (Dim::Symbol(x), Dim::Symbol(y)) if x == y => a.clone(),
        _ => Dim::Unknown,
    })
}

fn require_float<'a>(k: &Known<'a>, i: usize) -> Result<&'a crate::TensorType, String> {
    let t = k.tensor(i)?;
    if !t.dtype.is_float() {
        return Err(format!("{} needs a floating-point input, got {}", k.op, t.dtype));
    }
    Ok(t)
}

fn check_channel_rank(k: &Known, shape: Option<&Shape>) -> Result<(), String> {
    match shape {
        Some(s) if s.len() < 2 => {
            Err(format!("{} needs an input of rank >= 2 ([N, C, ...]), got {}", k.op, crate::format_shape(s)))
        }
        _ => Ok(()),
    }
}

fn stash_dtype(k: &Known) -> Result<DType, String> {
    let code = k.attrs.int("stash_type", 1)?;
    match DType::from_onnx_code(code as i32) {
        Ok(d) if d.is_float() => Ok(d),
        _ => Err(format!("stash_type {code} is not a supported floating-point type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(dims: &[usize]) -> Shape {
        dims.iter().map(|&d| Dim::Known(d)).collect()
    }

    #[test]
    fn einsum_output_shapes() {
        let mm = einsum_shape("ij,jk->ik", &[known(&[2, 3]), known(&[3, 4])]).unwrap();
        assert_eq!(mm, known(&[2, 4]));
        // Implicit output: letters occurring once, sorted (upper case first).
        let imp = einsum_shape("bA,Ac", &[known(&[2, 3]), known(&[3, 5])]).unwrap();
        assert_eq!(imp, known(&[2, 5]));
        // Ellipsis dims broadcast, aligned to the right, and lead in implicit mode.
        let ell = einsum_shape("...ij,jk", &[known(&[7, 1, 2, 3]), known(&[3, 4])]).unwrap();
        assert_eq!(ell, known(&[7, 1, 2, 4]));
        let diag = einsum_shape("...ii ->...i", &[known(&[5, 3, 3])]).unwrap();
        assert_eq!(diag, known(&[5, 3]));
        assert!(einsum_shape("ij,jk->ik", &[known(&[2, 3]), known(&[4, 4])]).is_err());
        assert!(einsum_shape("ij->ii", &[known(&[2, 2])]).is_err());
    }
}
