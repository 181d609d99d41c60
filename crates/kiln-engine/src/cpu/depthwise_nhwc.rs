//! `conv-depthwise-nhwc`: a channels-last depthwise convolution (kiln_ir::channels_last),
//! computed straight from the NHWC input.
//!
//! In NHWC the 16 channels of a pixel are one contiguous vector, so each tap of an output
//! pixel is one 16-lane multiply-add read in place: no padded copy, no transposes (the NCHW
//! kernel, depthwise_c16.rs, transposes every block into a padded buffer and back, which
//! costs more than the arithmetic). Padding is handled by the tap ranges: per output row the
//! valid filter rows, per output pixel the valid filter columns; runs of pixels whose taps all
//! lie inside the image (nearly all) go up to eight at a time, eight independent FMA chains.
//! Bias, residual and ReLU/Clip are applied in registers before each pixel is stored. CPUs
//! without AVX-512 run a portable loop.

use super::conv::Geometry;
use super::epilogue::{activate, clamp_of, clip};
use super::io::OutPtr;
use super::vecmath::multiversion;
use kiln_ir::Activation;
use rayon::prelude::*;

pub const TACTIC: &str = "conv-depthwise-nhwc";

/// Channels per vector.
const L: usize = 16;
type Lanes = [f32; L];

/// A depthwise layer's filter as the kernel reads it: taps as `[tap][block]` vectors and the
/// bias as vectors (lanes past the last channel 0), the activation split into the clamp the
/// store applies and any other, applied after.
pub(super) struct Filter {
    taps: Vec<Lanes>,
    bias: Vec<Lanes>,
    clamp: Option<(f32, f32)>,
    act: Option<Activation>,
}

impl Filter {
    /// The filter of depthwise `g` from the ONNX `[C, 1, kh, kw]` weight `w` (at least
    /// C·kh·kw values: the caller checks).
    pub(super) fn new(g: &Geometry, w: &[f32], bias: Option<&[f32]>, act: Option<Activation>) -> Filter {
        let (c, taps) = (g.cout, g.kh * g.kw);
        let blocks = c.div_ceil(L);
        let mut tap_vectors = vec![[0f32; L]; taps * blocks];
        for ch in 0..c {
            for t in 0..taps {
                tap_vectors[t * blocks + ch / L][ch % L] = w[ch * taps + t];
            }
        }
        let mut bias_vectors = vec![[0f32; L]; blocks];
        if let Some(b) = bias {
            for (ch, &v) in b.iter().enumerate().take(c) {
                bias_vectors[ch / L][ch % L] = v;
            }
        }
        Filter { taps: tap_vectors, bias: bias_vectors, clamp: clamp_of(act), act }
    }
}

/// What every output row of the layer shares.
struct Layer<'a> {
    g: &'a Geometry,
    x: &'a [f32],
    taps: &'a [Lanes],
    bias: &'a [Lanes],
    residual: Option<&'a [f32]>,
    clamp: Option<(f32, f32)>,
}

/// `out = act(depthwise(x, w) + bias + residual)` for a depthwise `g` on NHWC `x` and `out`
/// (`residual` NHWC too); `w` is the ONNX `[C, 1, kh, kw]` filter.
#[allow(clippy::too_many_arguments)]
pub(super) fn depthwise_nhwc(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<Activation>,
) {
    run(&Filter::new(g, w, bias, act), g, x, out, residual, true);
}

/// [`depthwise_nhwc`] with a prepared filter: across the pool when `parallel`, else on the
/// calling thread (a fused block's band).
pub(super) fn run(filter: &Filter, g: &Geometry, x: &[f32], out: &mut [f32], residual: Option<&[f32]>, parallel: bool) {
    let out = &mut out[..g.n * g.oh * g.ow * g.cout];
    if out.is_empty() {
        return;
    }
    let layer = Layer { g, x, taps: &filter.taps, bias: &filter.bias, residual, clamp: filter.clamp };
    let out_ptr = OutPtr(out.as_mut_ptr());
    let rows = g.n * g.oh;
    if parallel {
        // Tasks: bands of output rows, enough to go round the pool.
        let band = rows.div_ceil(8 * rayon::current_num_threads()).max(1);
        (0..rows.div_ceil(band)).into_par_iter().for_each(|b| {
            for row in b * band..((b + 1) * band).min(rows) {
                output_row(&layer, row, out_ptr);
            }
        });
    } else {
        for row in 0..rows {
            output_row(&layer, row, out_ptr);
        }
    }
    if let Some(a) = filter.act.filter(|_| filter.clamp.is_none()) {
        activate(out, a);
    }
}

multiversion! {
    /// Output row `row` (image `row / oh`, row `row % oh`) of every channel.
    fn output_row(layer: &Layer, row: usize, out: OutPtr) {
        let g = layer.g;
        let (c, blocks) = (g.cout, g.cout.div_ceil(L));
        let (img, oy) = (row / g.oh, row % g.oh);
        let image = &layer.x[img * g.h * g.w * c..][..g.h * g.w * c];
        // Filter rows whose input row lies inside the image.
        let top = (oy * g.stride[0]) as isize - g.pad_begin[0] as isize;
        let ky: Vec<(usize, usize)> = (0..g.kh)
            .filter_map(|ky| {
                let iy = top + (ky * g.dilation[0]) as isize;
                (iy >= 0 && iy < g.h as isize).then_some((ky, iy as usize))
            })
            .collect();
        let left = |ox: usize| (ox * g.stride[1]) as isize - g.pad_begin[1] as isize;
        #[cfg(target_arch = "x86_64")]
        if super::microkernel::available() {
            let r = simd::Row { image, ky: &ky, first_pixel: row * g.ow };
            // SAFETY: AVX-512 checked; this row's pixels are this task's alone.
            unsafe { simd::output_row(layer, &r, out) };
            return;
        }
        for b in 0..blocks {
            let (c0, lanes) = (b * L, (c - b * L).min(L));
            for ox in 0..g.ow {
                // One pixel, its taps clipped to the image.
                let mut a = layer.bias[b];
                for &(ky, iy) in &ky {
                    let line = &image[iy * g.w * c..][..g.w * c];
                    for kx in 0..g.kw {
                        let ix = left(ox) + (kx * g.dilation[1]) as isize;
                        if ix < 0 || ix >= g.w as isize {
                            continue;
                        }
                        let wv = &layer.taps[(ky * g.kw + kx) * blocks + b];
                        let v = &line[ix as usize * c + c0..][..lanes];
                        for l in 0..lanes {
                            a[l] = wv[l].mul_add(v[l], a[l]);
                        }
                    }
                }
                store(layer, row * g.ow + ox, c0, lanes, &a, out);
            }
        }
    }
}

/// Channels `c0..c0 + lanes` of output pixel `pixel` (of the whole batch): `acc` plus the
/// residual, clamped.
#[inline(always)]
fn store(layer: &Layer, pixel: usize, c0: usize, lanes: usize, acc: &Lanes, out: OutPtr) {
    let at = pixel * layer.g.cout + c0;
    let mut v = *acc;
    if let Some(r) = layer.residual {
        for (v, r) in v.iter_mut().zip(&r[at..at + lanes]) {
            *v += r;
        }
    }
    if let Some((lo, hi)) = layer.clamp {
        for v in v.iter_mut() {
            *v = clip(*v, lo, hi);
        }
    }
    // SAFETY: pixel `pixel`'s channels c0..c0 + lanes, inside the output (sized by the
    // caller) and written by this row's task alone.
    unsafe {
        if lanes == L {
            (out.at(at) as *mut Lanes).write_unaligned(v);
        } else {
            std::ptr::copy_nonoverlapping(v.as_ptr(), out.at(at), lanes);
        }
    }
}

/// One output row in AVX-512: groups of 8, 4, 2 or 1
/// neighbouring pixels (independent FMA chains), each tap a 16-lane (masked for a last
/// partial block) load and FMA, the epilogue in registers.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{Layer, L};
    use crate::cpu::io::OutPtr;
    use std::arch::x86_64::*;

    /// How many output pixels ahead the input is prefetched.
    const AHEAD: usize = 16;

    /// Where one output row's taps are: the image, its valid filter rows ((filter row, image
    /// row)), and the output pixel index of column 0.
    pub(super) struct Row<'a> {
        pub image: &'a [f32],
        pub ky: &'a [(usize, usize)],
        pub first_pixel: usize,
    }

    /// Output row `row` into `out` (NHWC, the whole batch): per group of pixels every channel
    /// block, so the group's input pixels stay in L1 while all their channels are used.
    ///
    /// # Safety
    /// AVX-512F must be available; `out` must hold the layer's output, whose row pixels
    /// this call alone writes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output_row(layer: &Layer, row: &Row, out: OutPtr) {
        let g = layer.g;
        let c = g.cout;
        let blocks = c.div_ceil(L);
        let mask_of = |b: usize| -> __mmask16 {
            let lanes = (c - b * L).min(L);
            if lanes == L {
                0xffff
            } else {
                (1u16 << lanes) - 1
            }
        };
        let left = |ox: usize| (ox * g.stride[1]) as isize - g.pad_begin[1] as isize;
        let reach = ((g.kw - 1) * g.dilation[1]) as isize;
        let interior = |ox: usize| left(ox) >= 0 && left(ox) + reach < g.w as isize;
        let mut ox = 0;
        while ox < g.ow {
            // The next group's input columns, asked for now: at batch 8 the image streams from
            // memory, and each group reads kh rows of ten-odd pixels' channels.
            let (c0, c1) =
                (left(ox + AHEAD).max(0) as usize, (left(ox + AHEAD + 8) + reach + 1).clamp(0, g.w as isize) as usize);
            for &(_, iy) in row.ky {
                let (from, to) = ((iy * g.w + c0) * c, (iy * g.w + c1.max(c0)) * c);
                for at in (from..to).step_by(16) {
                    // A prefetch of an address inside the image: it never faults.
                    _mm_prefetch::<_MM_HINT_T0>(row.image[at..].as_ptr() as *const i8);
                }
            }
            // The longest run of interior pixels from here, in groups of 8, 4, 2; else one
            // pixel with its taps clipped.
            let mut run = 0;
            while run < 8 && ox + run < g.ow && interior(ox + run) {
                run += 1;
            }
            // Filter columns whose input column is inside the row, for a lone pixel.
            let valid = |kx: usize| {
                let ix = left(ox) + (kx * g.dilation[1]) as isize;
                ix >= 0 && ix < g.w as isize
            };
            let kx0 = (0..g.kw).find(|&k| valid(k)).unwrap_or(g.kw);
            let kx1 = (kx0..g.kw).rev().find(|&k| valid(k)).map_or(kx0, |k| k + 1);
            // Every read of the group, for every block, inside the image and the residual:
            // checked once here rather than per block.
            let n = match run {
                8 => 8,
                4..=7 => 4,
                2 | 3 => 2,
                _ => 1,
            };
            let (k0, k1) = if n == 1 { (kx0, kx1) } else { (0, g.kw) };
            if let (true, Some(&(_, iy_last))) = (k0 < k1, row.ky.last()) {
                let ix_first = left(ox) + (k0 * g.dilation[1]) as isize;
                let ix_last = left(ox) + ((k1 - 1) * g.dilation[1] + (n - 1) * g.stride[1]) as isize;
                assert!(
                    ix_first >= 0
                        && ix_last < g.w as isize
                        && (iy_last * g.w + ix_last as usize + 1) * c <= row.image.len(),
                    "depthwise-nhwc: taps outside the image"
                );
            }
            if let Some(r) = layer.residual {
                assert!((row.first_pixel + ox + n) * c <= r.len(), "depthwise-nhwc: residual too short");
            }
            for b in 0..blocks {
                let mask = mask_of(b);
                // SAFETY: forwarded; `pixels` checks its reads.
                unsafe {
                    match run {
                        8 => pixels::<8>(layer, row, b, ox, 0, g.kw, mask, out),
                        4..=7 => pixels::<4>(layer, row, b, ox, 0, g.kw, mask, out),
                        2 | 3 => pixels::<2>(layer, row, b, ox, 0, g.kw, mask, out),
                        _ => pixels::<1>(layer, row, b, ox, kx0, kx1, mask, out),
                    }
                }
            }
            ox += n;
        }
    }

    /// Pixels `ox..ox + N` of the row, filter columns `kx0..kx1`.
    ///
    /// # Safety
    /// AVX-512F; every tap of the N pixels (filter rows `row.ky`, columns `kx0..kx1`) inside
    /// the image, and their residual inside it.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pixels<const N: usize>(
        layer: &Layer,
        row: &Row,
        b: usize,
        ox: usize,
        kx0: usize,
        kx1: usize,
        mask: __mmask16,
        out: OutPtr,
    ) {
        let g = layer.g;
        let (c, blocks) = (g.cout, g.cout.div_ceil(L));
        let step = g.stride[1] * c;
        let left = (ox * g.stride[1]) as isize - g.pad_begin[1] as isize;
        // SAFETY: every load lies inside the image and the residual (the caller checked the
        // group's farthest reads); taps and bias hold `taps · blocks` and `blocks` vectors;
        // the output positions are pixels of this row, inside the batch's output.
        unsafe {
            let mut acc = [_mm512_loadu_ps(layer.bias[b].as_ptr()); N];
            for &(kr, iy) in row.ky {
                let line = row.image.as_ptr().add(iy * g.w * c + b * L);
                for kx in kx0..kx1 {
                    let wv = _mm512_loadu_ps(layer.taps[(kr * g.kw + kx) * blocks + b].as_ptr());
                    let base = line.offset((left + (kx * g.dilation[1]) as isize) * c as isize);
                    for (p, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mask, base.add(p * step)), *a);
                    }
                }
            }
            let (lo, hi) = layer.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
            let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
            for (p, a) in acc.iter().enumerate() {
                let at = (row.first_pixel + ox + p) * c + b * L;
                let mut v = *a;
                if let Some(r) = layer.residual {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, r.as_ptr().add(at)));
                }
                if layer.clamp.is_some() {
                    // vmaxps/vminps return their second operand when either is NaN: with v
                    // second, NaN stays NaN, as in the scalar clip.
                    v = _mm512_min_ps(hi, _mm512_max_ps(lo, v));
                }
                _mm512_mask_storeu_ps(out.at(at), mask, v);
            }
        }
    }
}
