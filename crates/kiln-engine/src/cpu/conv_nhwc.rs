//! `conv-nhwc-packed`: a channels-last convolution (kiln_ir::channels_last; f32, constant
//! weights, one group) as kiln's packed matrix multiply, pixels as rows:
//! `out[pixels × cout] = patches[pixels × (kh·kw·cin)] · Wᵀ`.
//!
//! In NHWC the product needs no layout work on either side. A 1×1 stride-1 convolution's A is
//! the input itself, read in place by the register tile; otherwise each pixel's patch is one
//! contiguous run of kw·cin values per filter row (kh·kw runs of cin when dilated), copied in
//! masked vectors with zeros for padding, eight rows at a time just before their tiles when A
//! is large. The output tile is `cout` contiguous channels of 8 pixels: bias, residual
//! and ReLU/Clip are applied as it is stored, with no scatter back to planes. Pixels of all
//! images form one product, so a 7×7 late layer at batch 8 has 392 rows to share out. The
//! weight is packed once (at build time, stored so in the plan) as column panels of Wᵀ with
//! the depth in (kh, kw, cin) order, matching the patches.

use super::conv::{checked_nhwc_epilogue, Geometry};
use super::io::{f32_input, opt_f32_input, own_packed_weight, weight_panels, write_f32_output, OutPtr};
use super::microkernel;
use super::packed_gemm::{gemm, pack_columns, packed_columns_len, Epilogue, Operand, PatchRows};
use super::sgemm::Mat;
use crate::backend::{LayerDesc, LayerIo, LayerKernel};
use kiln_ir::{Activation, Attributes};

pub const TACTIC: &str = "conv-nhwc-packed";

/// Whether the tactic runs convolution `g` on this CPU.
pub(super) fn fits(g: &Geometry) -> bool {
    microkernel::available() && g.group == 1 && g.cout > 0 && g.cin * g.kh * g.kw > 0
}

/// The weight `[cout, cin, kh, kw]` as column panels of Wᵀ, depth in (kh, kw, cin) order.
pub(super) fn pack_weight(w: &[f32], shape: &[usize]) -> Result<Vec<f32>, String> {
    let [cout, cin, kh, kw] = *shape else { return Err(format!("weight of shape {shape:?} is not 4-D")) };
    let k = cin * kh * kw;
    if w.len() != cout * k {
        return Err(format!("weight of {} values for shape {shape:?}", w.len()));
    }
    let mut reordered = vec![0f32; cout * k];
    for (dst, src) in reordered.chunks_mut(k).zip(w.chunks(k)) {
        for c in 0..cin {
            for t in 0..kh * kw {
                dst[t * cin + c] = src[c * kh * kw + t];
            }
        }
    }
    Ok(pack_columns(Mat::col_major(&reordered, k), k, cout))
}

/// Values [`pack_weight`] makes.
pub(super) fn packed_len(shape: &[usize]) -> Result<usize, String> {
    let [cout, cin, kh, kw] = *shape else { return Err(format!("weight of shape {shape:?} is not 4-D")) };
    Ok(packed_columns_len(cin * kh * kw, cout))
}

/// A weight [`pack_weight`] made (or a plan claims it made): exactly its length for `shape`.
pub(super) fn check_packed(packed: &[f32], shape: &[usize]) -> Result<(), String> {
    if packed.len() != packed_len(shape)? {
        return Err(format!("packed weight of {} values, expected {}", packed.len(), packed_len(shape)?));
    }
    Ok(())
}

pub(crate) struct NhwcConvKernel {
    attrs: Attributes,
    activation: Option<Activation>,
    /// The packed weight, when the plan holds the ONNX layout (else the plan's packed bytes).
    packed: Option<Vec<f32>>,
}

impl NhwcConvKernel {
    pub fn new(desc: &LayerDesc) -> Result<Self, String> {
        let w = desc.weights.get(1).copied().flatten().ok_or("conv-nhwc-packed needs a constant weight")?;
        let packed = own_packed_weight(&w, packed_len(w.shape)?, |values| pack_weight(values, w.shape))?;
        Ok(NhwcConvKernel {
            attrs: desc.layer.attrs.clone(),
            activation: Activation::from_attrs(&desc.layer.attrs)?,
            packed,
        })
    }
}

impl LayerKernel for NhwcConvKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let (x, x_shape) = f32_input(io, 0)?;
        let (packed, w_shape) = weight_panels(io, 1, self.packed.as_deref())?;
        let bias = opt_f32_input(io, 2)?.map(|(b, _)| b);
        let residual = opt_f32_input(io, 3)?;
        let g = Geometry::from_nhwc(&self.attrs, x_shape, w_shape)?;
        if g.group != 1 {
            return Err("conv-nhwc-packed runs one group".into());
        }
        let (out_shape, residual) = checked_nhwc_epilogue(&g, bias, residual)?;
        check_packed(packed, w_shape)?;
        if x.len() < g.n * g.h * g.w * g.cin {
            return Err(format!("input of {} values for shape {x_shape:?}", x.len()));
        }
        if !microkernel::available() {
            return Err("conv-nhwc-packed needs AVX-512".into());
        }
        let (m, k) = (g.n * g.oh * g.ow, g.cin * g.kh * g.kw);
        let epilogue = Epilogue { col_bias: bias, residual, activation: self.activation, ..Default::default() };
        let pointwise = g.is_pointwise();
        // SAFETY: AVX-512 checked above.
        let fill = |r0: usize, r1: usize, rows: &mut [f32]| unsafe { unroll_rows(&g, x, r0, r1, rows) };
        let starts = |i0: usize, starts: &mut [usize]| patch_starts(&g, i0, starts);
        let patches = PatchRows {
            x,
            starts: &starts,
            run: g.kw * g.cin,
            stride: g.dilation[0] * g.w * g.cin,
            segments: g.kh,
            fill: &fill,
        };
        let a = if pointwise {
            Operand::Matrix(Mat::row_major(x, g.cin))
        } else if g.dilation[1] == 1 {
            Operand::Patches(&patches)
        } else {
            Operand::Rows(&fill)
        };
        write_f32_output(io, 0, out_shape, |out| {
            // SAFETY: AVX-512 checked above; `out` holds the m × cout output this call alone writes.
            unsafe {
                gemm(m, g.cout, k, &a, &Operand::Packed(packed), OutPtr(out.as_mut_ptr()), g.cout, &epilogue, true)
            }
        })
    }
}

/// Where the patches of output pixels `r0..r0 + starts.len()` (of the whole batch) start in
/// the NHWC input: each first filter row's run of kw·cin values, the others `dilation · w ·
/// cin` after it. False when a tap of one of them falls in the padding.
fn patch_starts(g: &Geometry, r0: usize, starts: &mut [usize]) -> bool {
    let mut pixel = Pixel::of(g, r0);
    for start in starts.iter_mut() {
        let Pixel { img, oy, ox } = pixel;
        let (Some(iy), Some(ix)) =
            ((oy * g.stride[0]).checked_sub(g.pad_begin[0]), (ox * g.stride[1]).checked_sub(g.pad_begin[1]))
        else {
            return false;
        };
        if img >= g.n || iy + (g.kh - 1) * g.dilation[0] >= g.h || ix + (g.kw - 1) * g.dilation[1] >= g.w {
            return false;
        }
        *start = ((img * g.h + iy) * g.w + ix) * g.cin;
        pixel.advance(g);
    }
    true
}

/// Output pixel r of the whole batch as (image, row, column), walked in order.
#[derive(Clone, Copy)]
struct Pixel {
    img: usize,
    oy: usize,
    ox: usize,
}

impl Pixel {
    fn of(g: &Geometry, r: usize) -> Pixel {
        Pixel { img: r / (g.oh * g.ow), oy: r % (g.oh * g.ow) / g.ow, ox: r % g.ow }
    }

    /// The next pixel (r + 1), without dividing.
    fn advance(&mut self, g: &Geometry) {
        self.ox += 1;
        if self.ox == g.ow {
            (self.ox, self.oy) = (0, self.oy + 1);
            if self.oy == g.oh {
                (self.oy, self.img) = (0, self.img + 1);
            }
        }
    }
}

/// Rows `[r0, r1)` of the patch matrix (output pixel r of the whole batch: its kh·kw input
/// pixels' channels, 0 where a tap falls in the padding) into `rows`, `kh·kw·cin` apart.
///
/// Runs are short (a stem's 9 values, a padded border's few), so they are copied and zeroed
/// in masked 16-lane vectors inline: a library call per run cost more than the run.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn unroll_rows(g: &Geometry, x: &[f32], r0: usize, r1: usize, rows: &mut [f32]) {
    let (c, k) = (g.cin, g.cin * g.kh * g.kw);
    let mut pixel = Pixel::of(g, r0);
    for row in rows.chunks_mut(k).take(r1 - r0) {
        let Pixel { img, oy, ox } = pixel;
        let image = &x[img * g.h * g.w * c..][..g.h * g.w * c];
        let left = (ox * g.stride[1]) as isize - g.pad_begin[1] as isize;
        for ky in 0..g.kh {
            let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pad_begin[0] as isize;
            let taps = &mut row[ky * g.kw * c..(ky + 1) * g.kw * c];
            if iy < 0 || iy >= g.h as isize {
                // SAFETY: AVX-512 (the caller).
                unsafe { fill(taps, None) };
                continue;
            }
            let line = &image[iy as usize * g.w * c..][..g.w * c];
            if g.dilation[1] == 1 {
                // The row's taps are kw neighbouring pixels: one run for the part inside the
                // image (a 3-channel stem's 3 taps are one 9-value run).
                let (lo, hi) = (left.max(0), (left + g.kw as isize).min(g.w as isize).max(left.max(0)));
                let (skip, len) = ((lo - left) as usize * c, (hi - lo) as usize * c);
                // SAFETY: AVX-512 (the caller).
                unsafe {
                    fill(&mut taps[..skip], None);
                    fill(&mut taps[skip..skip + len], Some(&line[lo as usize * c..][..len]));
                    fill(&mut taps[skip + len..], None);
                }
                continue;
            }
            for (kx, tap) in taps.chunks_mut(c).enumerate() {
                let ix = left + (kx * g.dilation[1]) as isize;
                let src = (ix >= 0 && ix < g.w as isize).then(|| &line[ix as usize * c..][..c]);
                // SAFETY: AVX-512 (the caller).
                unsafe { fill(tap, src) };
            }
        }
        pixel.advance(g);
    }
}

/// `dst` ← `src` (same length), or zeros, in 16-lane vectors, the last one masked.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn fill(dst: &mut [f32], src: Option<&[f32]>) {
    use std::arch::x86_64::*;
    assert!(src.is_none_or(|s| s.len() == dst.len()), "fill: lengths differ");
    let mut i = 0;
    while i < dst.len() {
        let lanes = (dst.len() - i).min(16);
        let mask: __mmask16 = if lanes == 16 { 0xffff } else { (1u16 << lanes) - 1 };
        // SAFETY: lanes i..i + lanes of both slices (the mask covers no more).
        unsafe {
            let v = match src {
                Some(s) => _mm512_maskz_loadu_ps(mask, s.as_ptr().add(i)),
                None => _mm512_setzero_ps(),
            };
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), mask, v);
        }
        i += lanes;
    }
}
