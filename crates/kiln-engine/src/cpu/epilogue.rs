//! What fused layers do after the product: add the bias and the residual, apply the
//! activation — in one pass over the output while it is still in cache.

use super::vecmath::multiversion;
use kiln_ir::Activation;

/// Bias indexed by output row (Conv: per channel, rows = channels) or by column (Gemm/MatMul:
/// per output feature).
pub(crate) enum Bias<'a> {
    None,
    PerRow(&'a [f32]),
    PerColumn(&'a [f32]),
    /// One value for all (a scalar C of Gemm).
    Scalar(f32),
    /// A full matrix of the output's shape (Gemm's C of shape [M, N]).
    Full(&'a [f32]),
}

/// ReLU and Clip as the clamp a store can fuse (`None` for no activation or any other one).
pub(crate) fn clamp_of(act: Option<Activation>) -> Option<(f32, f32)> {
    match act {
        Some(Activation::Relu) => Some((0.0, f32::INFINITY)),
        Some(Activation::Clip { min, max }) => Some((min, max)),
        _ => None,
    }
}

/// `out = act(out + bias + residual)` over a row-major `rows × cols` block; `residual` has
/// the block's layout.
pub(crate) fn apply(out: &mut [f32], cols: usize, bias: &Bias, residual: Option<&[f32]>, act: Option<Activation>) {
    if cols == 0 {
        return;
    }
    for (r, row) in out.chunks_mut(cols).enumerate() {
        // The common convolution epilogue — one bias value for the row, an optional residual,
        // ReLU / Clip / nothing — in one pass over the row instead of three.
        let row_bias = match bias {
            Bias::None => Some(0.0),
            Bias::PerRow(b) => Some(b[r]),
            Bias::Scalar(v) => Some(*v),
            _ => None,
        };
        let clamp = match act {
            None => Some(None),
            a => clamp_of(a).map(Some),
        };
        if let (Some(b), Some(clamp)) = (row_bias, clamp) {
            fused_row(row, b, residual.map(|res| &res[r * cols..(r + 1) * cols]), clamp);
            continue;
        }
        match bias {
            Bias::None => {}
            Bias::PerRow(b) => {
                let v = b[r];
                row.iter_mut().for_each(|x| *x += v);
            }
            Bias::PerColumn(b) => row.iter_mut().zip(b.iter()).for_each(|(x, v)| *x += v),
            Bias::Scalar(v) => row.iter_mut().for_each(|x| *x += v),
            Bias::Full(b) => row.iter_mut().zip(&b[r * cols..(r + 1) * cols]).for_each(|(x, v)| *x += v),
        }
        if let Some(res) = residual {
            row.iter_mut().zip(&res[r * cols..(r + 1) * cols]).for_each(|(x, v)| *x += v);
        }
        if let Some(a) = act {
            activate(row, a);
        }
    }
}

multiversion! {
    /// `x ← clamp(x + b + residual)`, the clamp as kiln-ir's ReLU and Clip (NaN stays NaN;
    /// min > max gives max).
    fn fused_row(row: &mut [f32], b: f32, residual: Option<&[f32]>, clamp: Option<(f32, f32)>) {
        match (residual, clamp) {
            (Some(res), Some((lo, hi))) => row.iter_mut().zip(res).for_each(|(x, r)| *x = clip(*x + b + r, lo, hi)),
            (Some(res), None) => row.iter_mut().zip(res).for_each(|(x, r)| *x = *x + b + r),
            (None, Some((lo, hi))) => row.iter_mut().for_each(|x| *x = clip(*x + b, lo, hi)),
            (None, None) => {
                if b != 0.0 {
                    row.iter_mut().for_each(|x| *x += b)
                }
            }
        }
    }
}

/// kiln-ir's ReLU/Clip on one value: NaN stays NaN; min > max gives max.
#[inline(always)]
pub(crate) fn clip(x: f32, lo: f32, hi: f32) -> f32 {
    let x = if x < lo { lo } else { x };
    if x > hi {
        hi
    } else {
        x
    }
}

/// `a` over `xs`: the vectorized polynomial forms for the transcendental activations, kiln-ir's
/// loops (already vectorizable) for the rest.
pub(crate) fn activate(xs: &mut [f32], a: Activation) {
    match a {
        Activation::GeluErf => super::vecmath::gelu_erf(xs),
        Activation::Tanh => super::vecmath::tanh(xs),
        other => other.apply_slice_f32(xs),
    }
}
