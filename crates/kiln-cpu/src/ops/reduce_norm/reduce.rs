//! Reduce* (axes as input 1, `keepdims`, `noop_with_empty_axes`) and ArgMax/ArgMin.
//!
//! A reduction walks the input once in row-major order, folding each element into the
//! accumulator of its output position (`ReducePlan::walk`), so every input is read
//! sequentially whatever the reduced axes are. Reducing over an empty set yields the
//! operation's identity (0 for sums, 1 for products, -inf/+inf or the integer limits for
//! max/min, -inf for the logarithmic forms, NaN for a mean), as the ONNX reference does.

use super::{with_float, with_numeric, Arith};
use crate::util::{make, normalize_axis, opt_tensor_arg, single, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{Element, Tensor, TensorData, Value};

type Out = Result<Vec<Value>, String>;

pub(super) fn reduce_sum(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let (x, plan) = prepare(ctx, inputs)?;
    with_numeric!(x, ctx.op, v => fold_arith(&plan, v, ArithOp::Sum))
}

pub(super) fn reduce_prod(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let (x, plan) = prepare(ctx, inputs)?;
    with_numeric!(x, ctx.op, v => fold_arith(&plan, v, ArithOp::Prod))
}

pub(super) fn reduce_sum_square(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let (x, plan) = prepare(ctx, inputs)?;
    with_numeric!(x, ctx.op, v => fold_arith(&plan, v, ArithOp::SumSquare))
}

pub(super) fn reduce_l1(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let (x, plan) = prepare(ctx, inputs)?;
    with_numeric!(x, ctx.op, v => fold_arith(&plan, v, ArithOp::L1))
}

pub(super) fn reduce_mean(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let (x, plan) = prepare(ctx, inputs)?;
    let n = plan.count as f64;
    with_numeric!(x, ctx.op, v => fold_f64(&plan, v, 0.0, |a, x| a + x, |s| s / n))
}

pub(super) fn reduce_l2(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let (x, plan) = prepare(ctx, inputs)?;
    with_numeric!(x, ctx.op, v => fold_f64(&plan, v, 0.0, |a, x| a + x * x, f64::sqrt))
}

pub(super) fn reduce_log_sum(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let (x, plan) = prepare(ctx, inputs)?;
    with_float!(x, ctx.op, v => fold_f64(&plan, v, 0.0, |a, x| a + x, f64::ln))
}

pub(super) fn reduce_log_sum_exp(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let (x, plan) = prepare(ctx, inputs)?;
    with_float!(x, ctx.op, v => log_sum_exp(&plan, v))
}

pub(super) fn reduce_max(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let (x, plan) = prepare(ctx, inputs)?;
    kiln_ir::dispatch!(x.data(), v => fold_extreme(&plan, v, true))
}

pub(super) fn reduce_min(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    let (x, plan) = prepare(ctx, inputs)?;
    kiln_ir::dispatch!(x.data(), v => fold_extreme(&plan, v, false))
}

pub(super) fn arg_max(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    arg_extreme(ctx, inputs, true)
}

pub(super) fn arg_min(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    arg_extreme(ctx, inputs, false)
}

/// Where each input element's accumulator lives, for one reduction.
pub(super) struct ReducePlan {
    /// Input dims after dropping size-1 dims and merging neighbours that are both reduced or
    /// both kept (the walk is the same, with longer inner runs).
    dims: Vec<usize>,
    /// Per coalesced dim: the output stride (0 for reduced dims).
    out_strides: Vec<usize>,
    /// Output shape (with `keepdims` applied).
    pub(super) out_shape: Vec<usize>,
    pub(super) out_len: usize,
    in_len: usize,
    /// Input elements folded into each output element.
    pub(super) count: usize,
}

impl ReducePlan {
    pub(super) fn new(shape: &[usize], reduced: &[bool], keepdims: bool) -> Result<ReducePlan, String> {
        let mut out_shape = Vec::with_capacity(shape.len());
        for (&d, &r) in shape.iter().zip(reduced) {
            if !r {
                out_shape.push(d);
            } else if keepdims {
                out_shape.push(1);
            }
        }
        let out_len = kiln_ir::checked_numel(&out_shape).map_err(|e| e.to_string())?;
        let in_len: usize = shape.iter().product();
        let count = shape.iter().zip(reduced).filter(|(_, &r)| r).map(|(&d, _)| d).product();
        let mut dims: Vec<usize> = Vec::new();
        let mut kinds: Vec<bool> = Vec::new();
        for (&d, &r) in shape.iter().zip(reduced) {
            if d == 1 {
                continue;
            }
            match kinds.last() {
                Some(&k) if k == r => *dims.last_mut().expect("kinds and dims grow together") *= d,
                _ => {
                    dims.push(d);
                    kinds.push(r);
                }
            }
        }
        let mut out_strides = vec![0; dims.len()];
        let mut stride = 1;
        for i in (0..dims.len()).rev() {
            if !kinds[i] {
                out_strides[i] = stride;
                stride *= dims[i];
            }
        }
        Ok(ReducePlan { dims, out_strides, out_shape, out_len, in_len, count })
    }

    /// Calls `f(input_index, output_index)` for every input element, in input order.
    pub(super) fn walk(&self, mut f: impl FnMut(usize, usize)) {
        if self.in_len == 0 {
            return;
        }
        let Some((&inner, outer_dims)) = self.dims.split_last() else {
            f(0, 0);
            return;
        };
        let os = self.out_strides[outer_dims.len()];
        let mut idx = vec![0usize; outer_dims.len()];
        let mut obase = 0;
        let mut i = 0;
        for _ in 0..self.in_len / inner {
            let mut o = obase;
            for _ in 0..inner {
                f(i, o);
                i += 1;
                o += os;
            }
            for ax in (0..outer_dims.len()).rev() {
                idx[ax] += 1;
                obase += self.out_strides[ax];
                if idx[ax] < outer_dims[ax] {
                    break;
                }
                obase -= self.out_strides[ax] * outer_dims[ax];
                idx[ax] = 0;
            }
        }
    }
}

/// The data input and the reduction plan from `axes` (input 1), `keepdims` and
/// `noop_with_empty_axes`. A no-op reduction is a reduction over no axes: each output is the
/// operation applied to one element (ReduceSumSquare squares, ReduceL1 takes |x|, ...).
fn prepare<'a>(ctx: &KernelCtx, inputs: &[Option<&'a Value>]) -> Result<(&'a Tensor, ReducePlan), String> {
    let x = tensor_arg(inputs, 0)?;
    let keepdims = ctx.attrs.int("keepdims", 1)? != 0;
    let noop = ctx.attrs.int("noop_with_empty_axes", 0)? != 0;
    let rank = x.rank();
    let axes = match opt_tensor_arg(inputs, 1)? {
        Some(a) if !a.is_empty() => {
            if !a.dtype().is_int() {
                return Err(format!("axes must be an integer tensor, got {}", a.dtype()));
            }
            a.to_i64_vec()
        }
        _ => Vec::new(),
    };
    let reduced = kiln_ir::spec::reduction_mask(&axes, rank, noop)?;
    Ok((x, ReducePlan::new(x.shape(), &reduced, keepdims)?))
}

/// The reductions computed in the element type's accumulator (exact wrapping for integers).
#[derive(Clone, Copy)]
enum ArithOp {
    Sum,
    Prod,
    SumSquare,
    L1,
}

fn fold_arith<T: Arith>(plan: &ReducePlan, v: &[T], op: ArithOp) -> Out {
    match op {
        ArithOp::Sum => fold_with(plan, v, T::ZERO, |a, x| T::add(a, x)),
        ArithOp::Prod => fold_with(plan, v, T::ONE, |a, x| T::mul(a, x)),
        ArithOp::SumSquare => fold_with(plan, v, T::ZERO, |a, x| T::add(a, T::mul(x, x))),
        ArithOp::L1 => fold_with(plan, v, T::ZERO, |a, x| T::add(a, T::abs(x))),
    }
}

fn fold_with<T: Arith>(plan: &ReducePlan, v: &[T], init: T::Acc, f: impl Fn(T::Acc, T::Acc) -> T::Acc) -> Out {
    let mut acc = vec![init; plan.out_len];
    plan.walk(|i, o| acc[o] = f(acc[o], v[i].load()));
    Ok(single(make(plan.out_shape.clone(), acc.into_iter().map(T::store).collect())?))
}

/// Fold in f64 from `init`, then `finish` each accumulator.
fn fold_f64<T: Element>(
    plan: &ReducePlan,
    v: &[T],
    init: f64,
    f: impl Fn(f64, f64) -> f64,
    finish: impl Fn(f64) -> f64,
) -> Out {
    let mut acc = vec![init; plan.out_len];
    plan.walk(|i, o| acc[o] = f(acc[o], v[i].to_f64()));
    Ok(single(make(plan.out_shape.clone(), acc.into_iter().map(|a| T::from_f64(finish(a))).collect())?))
}

/// log(sum(exp(x))), shifted by the largest finite element for stability (an all-infinite or
/// empty set gives log of the plain sum: -inf, +inf or NaN as the mathematics says).
fn log_sum_exp<T: Element>(plan: &ReducePlan, v: &[T]) -> Out {
    let mut max = vec![f64::NEG_INFINITY; plan.out_len];
    plan.walk(|i, o| {
        let x = v[i].to_f64();
        if x.is_finite() && x > max[o] {
            max[o] = x;
        }
    });
    for m in &mut max {
        if *m == f64::NEG_INFINITY {
            *m = 0.0;
        }
    }
    let mut sum = vec![0.0f64; plan.out_len];
    plan.walk(|i, o| sum[o] += (v[i].to_f64() - max[o]).exp());
    let out: Vec<T> = sum.iter().zip(&max).map(|(&s, &m)| T::from_f64(s.ln() + m)).collect();
    Ok(single(make(plan.out_shape.clone(), out)?))
}

/// Max (or min) in the element type itself, NaN-propagating like numpy's maximum.reduce.
fn fold_extreme<T: Element>(plan: &ReducePlan, v: &[T], max: bool) -> Out {
    // Identity: the lowest (highest) value of the type; bool is ordered false < true.
    let init = match (T::DTYPE == kiln_ir::DType::Bool, max) {
        (true, true) => T::from_f64(0.0),
        (true, false) => T::from_f64(1.0),
        (false, true) => T::from_f64(f64::NEG_INFINITY),
        (false, false) => T::from_f64(f64::INFINITY),
    };
    let mut acc = vec![init; plan.out_len];
    #[allow(clippy::eq_op)]
    plan.walk(|i, o| {
        let x = v[i];
        let a = acc[o];
        // `a != a` holds only for NaN: once NaN, stay NaN; a NaN element always wins.
        if a == a && (x != x || if max { x > a } else { x < a }) {
            acc[o] = x;
        }
    });
    Ok(single(make(plan.out_shape.clone(), acc)?))
}

fn arg_extreme(ctx: &KernelCtx, inputs: &[Option<&Value>], max: bool) -> Out {
    let x = tensor_arg(inputs, 0)?;
    if x.rank() == 0 {
        return Err(format!("{} needs an input of rank >= 1", ctx.op));
    }
    let axis = normalize_axis(ctx.attrs.int("axis", 0)?, x.rank())?;
    let keepdims = ctx.attrs.int("keepdims", 1)? != 0;
    let last = ctx.attrs.int("select_last_index", 0)? != 0;
    let (outer, n, inner) = super::split_at_axis(x.shape(), axis);
    if n == 0 {
        return Err(format!("{} over an empty axis {axis} has no result", ctx.op));
    }
    let mut out_shape = x.shape().to_vec();
    if keepdims {
        out_shape[axis] = 1;
    } else {
        out_shape.remove(axis);
    }
    let idx = match x.data() {
        TensorData::Bool(_) => return Err(format!("{} does not support bool tensors", ctx.op)),
        d => kiln_ir::dispatch!(d, v => arg_index(v, outer, n, inner, max, last)),
    };
    Ok(single(make(out_shape, idx)?))
}

/// Index of the first (or last) extreme along the middle dim of an (outer, n, inner) layout.
/// NaN counts as the extreme, as in numpy's argmax/argmin. Scans the axis in the outer loop
/// so that the inner loop reads contiguous memory.
fn arg_index<T: Element>(v: &[T], outer: usize, n: usize, inner: usize, max: bool, last: bool) -> Vec<i64> {
    let mut out = vec![0i64; outer * inner];
    let mut best: Vec<T> = Vec::with_capacity(inner);
    #[allow(clippy::eq_op)]
    for o in 0..outer {
        let base = o * n * inner;
        best.clear();
        best.extend_from_slice(&v[base..base + inner]);
        let idx = &mut out[o * inner..(o + 1) * inner];
        for k in 1..n {
            let row = &v[base + k * inner..base + (k + 1) * inner];
            for ((b, i), &x) in best.iter_mut().zip(idx.iter_mut()).zip(row) {
                let (bn, xn) = (*b != *b, x != x);
                let better = if bn {
                    last && xn
                } else if xn {
                    true
                } else if max {
                    x > *b || last && x == *b
                } else {
                    x < *b || last && x == *b
                };
                if better {
                    *b = x;
                    *i = k as i64;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(shape: &[usize], reduced: &[bool], keep: bool) -> ReducePlan {
        ReducePlan::new(shape, reduced, keep).unwrap()
    }

    #[test]
    fn walk_maps_middle_axis() {
        // x[2,3,2] summed over axis 1.
        let p = plan(&[2, 3, 2], &[false, true, false], false);
        let x: Vec<f64> = (0..12).map(|i| i as f64).collect();
        let mut acc = vec![0.0; p.out_len];
        p.walk(|i, o| acc[o] += x[i]);
        assert_eq!(p.out_shape, vec![2, 2]);
        assert_eq!(acc, vec![0.0 + 2.0 + 4.0, 1.0 + 3.0 + 5.0, 6.0 + 8.0 + 10.0, 7.0 + 9.0 + 11.0]);
    }

    #[test]
    fn extremes_propagate_nan_and_handle_empty() {
        let p = plan(&[3], &[true], true);
        let out = fold_extreme(&p, &[1.0f32, f32::NAN, 3.0], true).unwrap();
        assert!(out[0].as_tensor().unwrap().as_slice::<f32>().unwrap()[0].is_nan());
        let p = plan(&[0, 2], &[true, false], false);
        let out = fold_extreme::<i32>(&p, &[], false).unwrap();
        assert_eq!(out[0].as_tensor().unwrap().as_slice::<i32>().unwrap(), &[i32::MAX, i32::MAX]);
    }

    #[test]
    fn arg_max_last_index_and_nan() {
        assert_eq!(arg_index(&[1.0f32, 3.0, 3.0, 2.0], 1, 4, 1, true, true), vec![2]);
        assert_eq!(arg_index(&[1.0f32, 3.0, 3.0, 2.0], 1, 4, 1, true, false), vec![1]);
        assert_eq!(arg_index(&[1.0f32, f32::NAN, 3.0], 1, 3, 1, false, false), vec![1]);
    }

    #[test]
    fn int_sum_wraps_like_numpy() {
        let p = plan(&[2], &[true], false);
        let out = fold_arith(&p, &[100i8, 100], ArithOp::Sum).unwrap();
        assert_eq!(out[0].as_tensor().unwrap().as_slice::<i8>().unwrap(), &[-56]);
    }
}
