//! Softmax, LogSoftmax and Hardmax along one axis, and the scans CumSum / CumProd.
//!
//! All of them work on an (outer, n, inner) view of the input: `n` is the axis, `inner` the
//! stride between its elements. Loops run over the axis in the middle and over `inner` in the
//! innermost position, so memory is read contiguously.

use super::{scalar_int, split_at_axis, with_float, with_numeric, Arith, COERCE_2D_ATTR};
use crate::util::{make, normalize_axis, single, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{Element, Tensor, Value};

type Out = Result<Vec<Value>, String>;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Softmax,
    LogSoftmax,
    Hardmax,
}

pub(super) fn softmax(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    normalize(ctx, inputs, Kind::Softmax)
}

pub(super) fn log_softmax(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    normalize(ctx, inputs, Kind::LogSoftmax)
}

pub(super) fn hardmax(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    normalize(ctx, inputs, Kind::Hardmax)
}

pub(super) fn cum_sum(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    scan(ctx, inputs, false)
}

pub(super) fn cum_prod(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Out {
    scan(ctx, inputs, true)
}

fn normalize(ctx: &KernelCtx, inputs: &[Option<&Value>], kind: Kind) -> Out {
    let x = tensor_arg(inputs, 0)?;
    let shape = x.shape();
    let (outer, n, inner) = if x.rank() == 0 {
        (1, 1, 1)
    } else {
        let axis = normalize_axis(ctx.attrs.int("axis", -1)?, x.rank())?;
        if ctx.attrs.int(COERCE_2D_ATTR, 0)? != 0 {
            // Opset < 13: the input is viewed as [prod(d[..axis]), prod(d[axis..])].
            (shape[..axis].iter().product(), shape[axis..].iter().product(), 1)
        } else {
            split_at_axis(shape, axis)
        }
    };
    let y = with_float!(x, ctx.op, v => normalize_typed(v, shape, outer, n, inner, kind))?;
    Ok(single(y))
}

fn normalize_typed<T: Element>(
    v: &[T],
    shape: &[usize],
    outer: usize,
    n: usize,
    inner: usize,
    kind: Kind,
) -> Result<Tensor, String> {
    let mut out = vec![T::default(); v.len()];
    // Per inner position: running max (or argmax for Hardmax) and sum of exponentials.
    let mut max = vec![0f64; inner];
    let mut arg = vec![0usize; inner];
    let mut sum = vec![0f64; inner];
    let mut exps = if kind == Kind::Hardmax { Vec::new() } else { vec![0f64; n * inner] };
    for o in 0..outer {
        let base = o * n * inner;
        let at = |k: usize, i: usize| v[base + k * inner + i].to_f64();
        max.fill(f64::NEG_INFINITY);
        arg.fill(0);
        for k in 0..n {
            for i in 0..inner {
                let x = at(k, i);
                // Hardmax takes the first maximum; a NaN element is taken as the maximum
                // (numpy's argmax) and poisons the softmax of its slice.
                if x > max[i] || x.is_nan() && !max[i].is_nan() {
                    max[i] = x;
                    arg[i] = k;
                }
            }
        }
        let slot = |k: usize, i: usize| base + k * inner + i;
        match kind {
            Kind::Hardmax => {
                for i in 0..inner {
                    for k in 0..n {
                        out[slot(k, i)] = T::from_f64(if k == arg[i] { 1.0 } else { 0.0 });
                    }
                }
            }
            Kind::Softmax | Kind::LogSoftmax => {
                // One exp per element: keep exp(x - max) of the block for the final pass.
                sum.fill(0.0);
                for k in 0..n {
                    for i in 0..inner {
                        let e = (at(k, i) - max[i]).exp();
                        exps[k * inner + i] = e;
                        sum[i] += e;
                    }
                }
                if kind == Kind::Softmax {
                    sum.iter_mut().for_each(|s| *s = 1.0 / *s);
                    for k in 0..n {
                        for i in 0..inner {
                            out[slot(k, i)] = T::from_f64(exps[k * inner + i] * sum[i]);
                        }
                    }
                } else {
                    sum.iter_mut().for_each(|s| *s = s.ln());
                    for k in 0..n {
                        for i in 0..inner {
                            out[slot(k, i)] = T::from_f64(at(k, i) - max[i] - sum[i]);
                        }
                    }
                }
            }
        }
    }
    make(shape.to_vec(), out)
}

/// CumSum / CumProd with `exclusive` (each output omits its own element) and `reverse`.
fn scan(ctx: &KernelCtx, inputs: &[Option<&Value>], product: bool) -> Out {
    let x = tensor_arg(inputs, 0)?;
    let axis_t = tensor_arg(inputs, 1)?;
    let axis = scalar_int(axis_t, "axis")?;
    if x.rank() == 0 {
        return Err(format!("{} needs an input of rank >= 1", ctx.op));
    }
    let axis = normalize_axis(axis, x.rank())?;
    let exclusive = ctx.attrs.int("exclusive", 0)? != 0;
    let reverse = ctx.attrs.int("reverse", 0)? != 0;
    let (outer, n, inner) = split_at_axis(x.shape(), axis);
    let y = with_numeric!(x, ctx.op, v => scan_typed(v, x.shape(), outer, n, inner, product, exclusive, reverse))?;
    Ok(single(y))
}

#[allow(clippy::too_many_arguments)]
fn scan_typed<T: Arith>(
    v: &[T],
    shape: &[usize],
    outer: usize,
    n: usize,
    inner: usize,
    product: bool,
    exclusive: bool,
    reverse: bool,
) -> Result<Tensor, String> {
    let identity = if product { T::ONE } else { T::ZERO };
    let combine = |a: T::Acc, b: T::Acc| if product { T::mul(a, b) } else { T::add(a, b) };
    let mut out = vec![T::default(); v.len()];
    let mut acc = vec![identity; inner];
    for o in 0..outer {
        acc.fill(identity);
        for step in 0..n {
            let k = if reverse { n - 1 - step } else { step };
            let row = o * n * inner + k * inner;
            for i in 0..inner {
                let x = v[row + i].load();
                if exclusive {
                    out[row + i] = T::store(acc[i]);
                    acc[i] = combine(acc[i], x);
                } else {
                    acc[i] = combine(acc[i], x);
                    out[row + i] = T::store(acc[i]);
                }
            }
        }
    }
    make(shape.to_vec(), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_middle_axis() {
        // x[1,2,2], softmax over axis 1.
        let x = [1.0f32, 2.0, 3.0, 5.0];
        let t = normalize_typed(&x, &[1, 2, 2], 1, 2, 2, Kind::Softmax).unwrap();
        let y = t.as_slice::<f32>().unwrap();
        let e = |a: f64, b: f64| (a.exp() / (a.exp() + b.exp())) as f32;
        let want = [e(1.0, 3.0), e(2.0, 5.0), e(3.0, 1.0), e(5.0, 2.0)];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn hardmax_first_max() {
        let t = normalize_typed(&[2.0f32, 7.0, 7.0, 1.0], &[4], 1, 4, 1, Kind::Hardmax).unwrap();
        assert_eq!(t.as_slice::<f32>().unwrap(), &[0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn cumsum_exclusive_reverse() {
        let t = scan_typed(&[1i32, 2, 3, 4], &[4], 1, 4, 1, false, true, true).unwrap();
        assert_eq!(t.as_slice::<i32>().unwrap(), &[9, 7, 4, 0]);
        let t = scan_typed(&[1.5f64, 2.0, 3.0], &[3], 1, 3, 1, true, false, false).unwrap();
        assert_eq!(t.as_slice::<f64>().unwrap(), &[1.5, 3.0, 9.0]);
    }
}
