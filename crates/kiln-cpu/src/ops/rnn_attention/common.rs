//! Numeric plumbing shared by this family's kernels: a small float trait so one kernel body
//! serves f32 (also used for f16/bf16) and f64, loading/storing tensors in the compute type,
//! rounding to the storage type where the ONNX reference rounds, and a cache-friendly GEMM.

use half::{bf16, f16};
use kiln_ir::{DType, Tensor, TensorData};
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub};

/// The compute type of a kernel: f32 for f32/f16/bf16 tensors, f64 for f64 tensors.
pub(super) trait Real:
    Copy
    + Default
    + PartialOrd
    + Send
    + Sync
    + std::fmt::Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + MulAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INF: Self;
    fn from_f64(v: f64) -> Self;
    fn from_f32(v: f32) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn tanh(self) -> Self;
    fn is_nan(self) -> bool;
    /// Rounding to the storage dtype `dt` (identity when the compute type already is it).
    /// The ONNX reference computes f16/bf16 ops in that dtype, i.e. rounds after each op;
    /// kernels call this at the same points so results match it bit for bit where possible.
    fn rounder(dt: DType) -> fn(Self) -> Self;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f32::NEG_INFINITY;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn rounder(dt: DType) -> fn(Self) -> Self {
        match dt {
            DType::F16 => |x| f16::from_f32(x).to_f32(),
            DType::BF16 => |x| bf16::from_f32(x).to_f32(),
            _ => |x| x,
        }
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f64::NEG_INFINITY;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    fn rounder(dt: DType) -> fn(Self) -> Self {
        match dt {
            DType::F32 => |x| x as f32 as f64,
            DType::F16 => |x| f16::from_f64(x).to_f64(),
            DType::BF16 => |x| bf16::from_f64(x).to_f64(),
            _ => |x| x,
        }
    }
}

/// The elements of a float tensor in the compute type `F`.
pub(super) fn load<F: Real>(t: &Tensor, what: &str) -> Result<Vec<F>, String> {
    Ok(match t.data() {
        TensorData::F32(v) => v.iter().map(|&x| F::from_f32(x)).collect(),
        TensorData::F16(v) => v.iter().map(|&x| F::from_f32(x.to_f32())).collect(),
        TensorData::BF16(v) => v.iter().map(|&x| F::from_f32(x.to_f32())).collect(),
        TensorData::F64(v) => v.iter().map(|&x| F::from_f64(x)).collect(),
        _ => return Err(format!("{what} must be a float tensor, got {}", t.dtype())),
    })
}

/// A tensor of dtype `dt` from compute-type values (rounding each once).
pub(super) fn store<F: Real>(dt: DType, shape: Vec<usize>, v: &[F]) -> Result<Tensor, String> {
    let data = match dt {
        DType::F32 => TensorData::F32(v.iter().map(|&x| x.to_f64() as f32).collect()),
        DType::F64 => TensorData::F64(v.iter().map(|&x| x.to_f64()).collect()),
        // Widening f32 → f64 is exact, so this rounds once.
        DType::F16 => TensorData::F16(v.iter().map(|&x| f16::from_f64(x.to_f64())).collect()),
        DType::BF16 => TensorData::BF16(v.iter().map(|&x| bf16::from_f64(x.to_f64())).collect()),
        other => return Err(format!("cannot store a {other} result")),
    };
    Tensor::new(shape, data).map_err(|e| e.to_string())
}

pub(super) use crate::util::numel;

/// `c[m×n] += a[m×k] · b[k×n]`, all row-major and contiguous. The i-k-j loop order streams
/// rows of `b` and `c`, so the inner loop is a contiguous axpy the compiler vectorizes.
pub(super) fn gemm_acc<F: Real>(a: &[F], b: &[F], c: &mut [F], m: usize, k: usize, n: usize) {
    for i in 0..m {
        let crow = &mut c[i * n..(i + 1) * n];
        let arow = &a[i * k..(i + 1) * k];
        for (p, &av) in arow.iter().enumerate() {
            let brow = &b[p * n..(p + 1) * n];
            for (cv, &bv) in crow.iter_mut().zip(brow) {
                *cv += av * bv;
            }
        }
    }
}

/// Transpose a row-major `rows×cols` matrix into `cols×rows`.
pub(super) fn transpose<F: Copy + Default>(a: &[F], rows: usize, cols: usize) -> Vec<F> {
    let mut out = vec![F::default(); rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = a[r * cols + c];
        }
    }
    out
}

/// `(B, S, H·D)` → `(B, H, S, D)`: splits a packed 3-D activation into heads.
pub(super) fn split_heads<F: Copy + Default>(x: &[F], b: usize, s: usize, h: usize, d: usize) -> Vec<F> {
    let mut out = vec![F::default(); b * h * s * d];
    for bi in 0..b {
        for si in 0..s {
            for hi in 0..h {
                let src = ((bi * s + si) * h + hi) * d;
                let dst = ((bi * h + hi) * s + si) * d;
                out[dst..dst + d].copy_from_slice(&x[src..src + d]);
            }
        }
    }
    out
}

/// `(B, H, S, D)` → `(B, S, H·D)`: the inverse of [`split_heads`].
pub(super) fn merge_heads<F: Copy + Default>(x: &[F], b: usize, h: usize, s: usize, d: usize) -> Vec<F> {
    let mut out = vec![F::default(); b * h * s * d];
    for bi in 0..b {
        for hi in 0..h {
            for si in 0..s {
                let src = ((bi * h + hi) * s + si) * d;
                let dst = ((bi * s + si) * h + hi) * d;
                out[dst..dst + d].copy_from_slice(&x[src..src + d]);
            }
        }
    }
    out
}
