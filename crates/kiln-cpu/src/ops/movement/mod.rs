//! CPU kernels for the data-movement family: ops that reshape, reorder, select, scatter or
//! generate elements without arithmetic on them (Reshape, Transpose, Slice, Gather, Scatter*,
//! Pad, TopK, Unique, ...).
//!
//! Almost every kernel here is generic over the element type and serves all dtypes through
//! `dispatch!`/`map_data!`. Most layout ops reduce to [`gather_axes`]: per output axis a table
//! of input offsets, summed while walking the output in row-major order, so one routine
//! implements Transpose, Slice (any step sign), Expand, Tile, Pad (every mode), CenterCropPad
//! and DepthToSpace/SpaceToDepth without per-element index arithmetic.

mod index;
mod layout;
mod shape;
mod sort;

use crate::util::numel;
use crate::KernelFn;
use kiln_ir::{bf16, f16, DType, Element, Tensor, TensorData, Value};

pub(crate) fn kernel(op: &str) -> Option<KernelFn> {
    shape::kernel(op).or_else(|| layout::kernel(op)).or_else(|| index::kernel(op)).or_else(|| sort::kernel(op))
}

/// Offset-table entry meaning "no input element: use the fill value" (constant padding).
const FILL: usize = usize::MAX;

/// Builds a row-major tensor of `out_shape` where the element at index `(i0, .., in)` is
/// `src[tables[0][i0] + .. + tables[n][in]]`, or `fill` if any table entry is [`FILL`].
/// Tables must hold in-range offsets (callers build them from validated indices); the caller
/// has checked `out_shape`'s element count.
fn gather_axes<T: Copy + Default>(src: &[T], out_shape: &[usize], tables: &[Vec<usize>], fill: Option<T>) -> Vec<T> {
    let total: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(total);
    if total == 0 {
        return out;
    }
    let rank = out_shape.len();
    if rank == 0 {
        out.push(src[0]);
        return out;
    }
    let inner = &tables[rank - 1];
    // Odometer over the outer axes; `base` is the summed offset of the outer index, or FILL.
    let mut idx = vec![0usize; rank - 1];
    let outer_total: usize = out_shape[..rank - 1].iter().product();
    // Fast path: the innermost axis reads contiguous input (a plain copy of a row).
    let contiguous = inner.windows(2).all(|w| w[1] == w[0].wrapping_add(1)) && inner[0] != FILL;
    for _ in 0..outer_total {
        let mut base = 0usize;
        let mut filled = false;
        for (ax, &i) in idx.iter().enumerate() {
            let t = tables[ax][i];
            if t == FILL {
                filled = true;
                break;
            }
            base += t;
        }
        if filled {
            // Tables hold FILL only for constant padding, which always passes a fill value.
            out.extend(std::iter::repeat_n(fill.unwrap_or_default(), inner.len()));
        } else if contiguous {
            let start = base + inner[0];
            out.extend_from_slice(&src[start..start + inner.len()]);
        } else {
            for &t in inner {
                out.push(if t == FILL { fill.unwrap_or_default() } else { src[base + t] });
            }
        }
        for ax in (0..rank - 1).rev() {
            idx[ax] += 1;
            if idx[ax] < out_shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    out
}

/// `gather_axes` over any dtype; `fill` (constant padding) is converted to the data's dtype.
fn gather_axes_data(
    data: &TensorData,
    out_shape: &[usize],
    tables: &[Vec<usize>],
    fill: Option<&Tensor>,
) -> Result<TensorData, String> {
    fn go<T: Element>(
        v: &[T],
        out_shape: &[usize],
        tables: &[Vec<usize>],
        fill: Option<&Tensor>,
    ) -> Result<Vec<T>, String> {
        let f = match fill {
            None => None,
            Some(t) => Some(scalar_of::<T>(t, "the padding value")?),
        };
        Ok(gather_axes(v, out_shape, tables, f.or(Some(T::default()))))
    }
    Ok(kiln_ir::map_data!(data, v => go(v, out_shape, tables, fill)?))
}

/// The single value of a one-element tensor as `T` (same dtype required).
fn scalar_of<T: Element>(t: &Tensor, what: &str) -> Result<T, String> {
    let s = t.as_slice::<T>().map_err(|e| format!("{what}: {e}"))?;
    match s {
        [x] => Ok(*x),
        _ => Err(format!("{what} must have exactly one element, got shape {:?}", t.shape())),
    }
}

/// The values of an integer tensor (shapes, axes, indices, pads) as i64.
fn int_values(t: &Tensor, what: &str) -> Result<Vec<i64>, String> {
    if !t.dtype().is_int() {
        return Err(format!("{what} must be an integer tensor, got {}", t.dtype()));
    }
    Ok(t.to_i64_vec())
}

/// An integer tensor that must be 1-D (or a scalar, read as one value).
fn int_list(t: &Tensor, what: &str) -> Result<Vec<i64>, String> {
    if t.rank() > 1 {
        return Err(format!("{what} must be 1-D, got shape {:?}", t.shape()));
    }
    int_values(t, what)
}

/// A tensor from a shape and a buffer, checking that the sizes agree.
fn tensor(shape: Vec<usize>, data: TensorData) -> Result<Tensor, String> {
    Tensor::new(shape, data).map_err(|e| e.to_string())
}

/// Resolve an index that may be negative (counting from the end) against `dim`, or an error.
fn resolve_index(i: i64, dim: usize, what: &str) -> Result<usize, String> {
    let d = dim as i64;
    let r = if i < 0 { i + d } else { i };
    if r < 0 || r >= d {
        return Err(format!("{what} {i} is out of range for a dimension of size {dim}"));
    }
    Ok(r as usize)
}

/// Normalize a list of axes against `rank`, refusing duplicates.
fn normalize_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut seen = vec![false; rank];
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = crate::util::normalize_axis(a, rank)?;
        if rank == 0 || seen[n] {
            return Err(format!("axis {a} is repeated or out of range for rank {rank}"));
        }
        seen[n] = true;
        out.push(n);
    }
    Ok(out)
}

/// Element arithmetic for the scatter reductions (add/mul/max/min), per dtype with numpy's
/// semantics: integers wrap, bool add/mul are or/and, f16/bf16 compute in f32 and round once.
trait Reduce: Element {
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// numpy maximum/minimum: NaN propagates.
    fn max(self, o: Self) -> Self;
    fn min(self, o: Self) -> Self;
}

macro_rules! reduce_int {
    ($($t:ty),*) => {$(
        impl Reduce for $t {
            fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
            fn max(self, o: Self) -> Self { Ord::max(self, o) }
            fn min(self, o: Self) -> Self { Ord::min(self, o) }
        }
    )*};
}
reduce_int!(i8, u8, i16, u16, i32, u32, i64, u64);

macro_rules! reduce_float {
    ($t:ty, $to:expr, $from:expr) => {
        impl Reduce for $t {
            fn add(self, o: Self) -> Self {
                $from($to(self) + $to(o))
            }
            fn mul(self, o: Self) -> Self {
                $from($to(self) * $to(o))
            }
            fn max(self, o: Self) -> Self {
                if self.is_nan() || o.is_nan() {
                    <$t>::NAN
                } else if o > self {
                    o
                } else {
                    self
                }
            }
            fn min(self, o: Self) -> Self {
                if self.is_nan() || o.is_nan() {
                    <$t>::NAN
                } else if o < self {
                    o
                } else {
                    self
                }
            }
        }
    };
}
reduce_float!(f32, |x| x, |x| x);
reduce_float!(f64, |x| x, |x| x);
reduce_float!(f16, f16::to_f32, f16::from_f32);
reduce_float!(bf16, bf16::to_f32, bf16::from_f32);

impl Reduce for bool {
    fn add(self, o: Self) -> Self {
        self | o
    }
    fn mul(self, o: Self) -> Self {
        self & o
    }
    fn max(self, o: Self) -> Self {
        self | o
    }
    fn min(self, o: Self) -> Self {
        self & o
    }
}

/// A scatter reduction attribute value.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Reduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

impl Reduction {
    fn parse(s: &str) -> Result<Reduction, String> {
        Ok(match s {
            "none" => Reduction::None,
            "add" => Reduction::Add,
            "mul" => Reduction::Mul,
            "max" => Reduction::Max,
            "min" => Reduction::Min,
            other => return Err(format!("unknown reduction '{other}' (expected none, add, mul, max or min)")),
        })
    }

    fn apply<T: Reduce>(self, old: T, new: T) -> T {
        match self {
            Reduction::None => new,
            Reduction::Add => old.add(new),
            Reduction::Mul => old.mul(new),
            Reduction::Max => old.max(new),
            Reduction::Min => old.min(new),
        }
    }
}

/// Total order used by TopK and Unique: numpy's, where NaN sorts after every number.
fn total_cmp<T: Element>(a: &T, b: &T) -> std::cmp::Ordering {
    #[allow(clippy::eq_op)]
    a.partial_cmp(b).unwrap_or_else(|| (a != a).cmp(&(b != b)))
}

/// Wrap one tensor as the kernel's single output.
fn one(t: Tensor) -> Vec<Value> {
    vec![Value::Tensor(t)]
}

/// Is `dt` an integer dtype usable for indices (int32/int64 in the spec; any integer here)?
fn check_index_dtype(dt: DType, what: &str) -> Result<(), String> {
    if dt.is_int() {
        Ok(())
    } else {
        Err(format!("{what} must be an integer tensor, got {dt}"))
    }
}

#[cfg(test)]
mod tests;
