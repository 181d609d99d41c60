//! `conv-depthwise-c16`: depthwise convolution vectorized across channels, on NCHW tensors.
//!
//! The plane-at-a-time kernel (`conv-depthwise`) vectorizes along an output row, which wastes
//! most of a 16-lane register on MobileNet's 7- and 14-column planes and pays a padded copy
//! and a tap table per plane; it measured ~3 GMAC/s, under half the network's time for 3 % of
//! its arithmetic. Here each task takes 16 channels of one image and transposes them into a
//! zero-padded, channel-interleaved buffer (`[row][column][16 channels]`, the NCHW16c block
//! layout onnxruntime keeps between layers): every tap of every output pixel is then one
//! 16-lane multiply-add with no bounds logic and no lanes wasted, whatever the plane size or
//! stride. Each output row is transposed back to the 16 NCHW planes with the residual and
//! ReLU/Clip fused, while it is in L1.

use super::conv::Geometry;
use super::epilogue::{activate, clamp_of, clip};
use super::io::OutPtr;
use super::vecmath::multiversion;
#[cfg(target_arch = "x86_64")]
use super::vecmath::{level, Level};
use kiln_ir::Activation;
use rayon::prelude::*;

pub const TACTIC: &str = "conv-depthwise-c16";

/// Channels per block: one AVX-512 register (two AVX2 registers) of f32.
const L: usize = 16;

/// Output pixels computed together: independent accumulator chains keep the FMA units busy.
const PIXELS: usize = 4;

type Lanes = [f32; L];

thread_local! {
    /// Per thread: the padded, channel-interleaved input block and one staged output row, kept
    /// between runs (a fresh allocation would page-fault on every call).
    static SCRATCH: std::cell::RefCell<(Vec<Lanes>, Vec<Lanes>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// `out = act(depthwise(x, w) + bias + residual)` for a depthwise `g` (`g.cout == g.cin`, one
/// filter per channel); `residual` has the output's layout.
pub(super) fn depthwise_c16(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<Activation>,
) {
    let (in_plane, out_plane, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    if out_plane == 0 || g.cout == 0 {
        return;
    }
    // ReLU and Clip are applied in the store; any other activation after it.
    let clamp = clamp_of(act);
    let other_act = act.filter(|_| clamp.is_none());
    let out = &mut out[..g.n * g.cout * out_plane];
    let out_ptr = OutPtr(out.as_mut_ptr());
    let blocks = g.cout.div_ceil(L);
    // Tasks: 16 channels of one image × a band of output rows whose padded input rows stay
    // in L2 (a whole 112 × 112 plane block is 800 KiB), enough of them to go round the pool.
    let (_, width) = padded_extent(g);
    let fit = (BAND_BYTES / (width * L * 4)).saturating_sub(g.kh) / g.stride[0];
    let spread = (4 * rayon::current_num_threads()).div_ceil(g.n * blocks);
    let band_rows = fit.max(1).min(g.oh.div_ceil(spread)).max(1);
    let bands = g.oh.div_ceil(band_rows);
    (0..g.n * blocks * bands).into_par_iter().for_each(|task| {
        let (n, c0) = (task / (blocks * bands), task / bands % blocks * L);
        let oh0 = task % bands * band_rows;
        let rows = (oh0, (oh0 + band_rows).min(g.oh));
        let lanes = (g.cout - c0).min(L);
        // Filter taps and bias as 16-lane vectors; lanes past the last channel stay 0.
        let mut wt = vec![[0f32; L]; taps];
        for l in 0..lanes {
            for (t, v) in wt.iter_mut().enumerate() {
                v[l] = w[(c0 + l) * taps + t];
            }
        }
        let mut bv = [0f32; L];
        if let Some(bias) = bias {
            bv[..lanes].copy_from_slice(&bias[c0..c0 + lanes]);
        }
        let image = &x[n * g.cin * in_plane..][..g.cin * in_plane];
        let res = residual.map(|r| &r[n * g.cout * out_plane..][..g.cout * out_plane]);
        let block = Block { x: image, c0, lanes, wt: &wt, bias: &bv, res, clamp };
        let dst = OutPtr(out_ptr.at(n * g.cout * out_plane));
        SCRATCH.with(|s| {
            let (padded, staged) = &mut *s.borrow_mut();
            channel_block(g, &block, rows, padded, staged, dst);
        });
    });
    if let Some(a) = other_act {
        activate(out, a);
    }
}

/// Padded input one task holds at most (a band of rows of 16-lane pixels).
const BAND_BYTES: usize = 64 << 10;

/// Rows and columns of the zero-padded input: as far as the taps reach, and at least the
/// input's own extent past its top/left padding.
fn padded_extent(g: &Geometry) -> (usize, usize) {
    let rows = ((g.oh - 1) * g.stride[0] + (g.kh - 1) * g.dilation[0] + 1).max(g.pad_begin[0] + g.h);
    let cols = ((g.ow - 1) * g.stride[1] + (g.kw - 1) * g.dilation[1] + 1).max(g.pad_begin[1] + g.w);
    (rows, cols)
}

/// One task's channels: `lanes` ≤ 16 of them from channel `c0` of one image (`x`), filter
/// taps and bias as 16-lane vectors (0 past the last channel), the image's residual, and the
/// ReLU/Clip bounds.
struct Block<'a> {
    x: &'a [f32],
    c0: usize,
    lanes: usize,
    wt: &'a [Lanes],
    bias: &'a Lanes,
    res: Option<&'a [f32]>,
    clamp: Option<(f32, f32)>,
}

multiversion! {
    /// One block of channels into `dst`, the image's output (only this block's channels
    /// are written).
    fn channel_block(g: &Geometry, b: &Block, rows: (usize, usize), padded: &mut Vec<Lanes>, staged: &mut Vec<Lanes>, dst: OutPtr) {
        let Block { x, c0, lanes, wt, bias, res, clamp } = *b;
        let (oh0, oh1) = rows;
        let (_, width) = padded_extent(g);
        let (pt, pl) = (g.pad_begin[0], g.pad_begin[1]);
        let (in_plane, out_plane) = (g.h * g.w, g.oh * g.ow);
        let zero = [0f32; L];
        // The padded rows the taps of output rows oh0..oh1 reach, from padded row `top0`.
        let top0 = oh0 * g.stride[0];
        let band = (oh1 - 1) * g.stride[0] + (g.kh - 1) * g.dilation[0] + 1 - top0;
        padded.resize(band * width, zero);
        for (r, row) in padded[..band * width].chunks_mut(width).enumerate() {
            let i = (top0 + r) as isize - pt as isize;
            // Zero what the input does not overwrite: padding rows and columns, and every
            // lane past the last channel of a partial block (then simply the whole row).
            if i < 0 || i >= g.h as isize || lanes < L {
                row.fill(zero);
            } else {
                row[..pl].fill(zero);
                row[pl + g.w..].fill(zero);
            }
            if i < 0 || i >= g.h as isize {
                continue;
            }
            fill_row(&x[c0 * in_plane..], in_plane, i as usize * g.w, lanes, &mut row[pl..pl + g.w]);
        }
        // Back to NCHW, one plane row per channel, with the residual and clamp.
        let store = |staged: &[Lanes], oh: usize| {
            // SAFETY: this block's output planes (channels c0.., contiguous in NCHW) are
            // written by this task alone.
            let planes = unsafe { std::slice::from_raw_parts_mut(dst.at(c0 * out_plane), lanes * out_plane) };
            let res = res.map(|r| &r[c0 * out_plane..][..lanes * out_plane]);
            store_row(staged, lanes, planes, out_plane, oh * g.ow, res, clamp);
        };
        staged.resize(g.ow, zero);
        #[cfg(target_arch = "x86_64")]
        let simd = level() != Level::Portable;
        for oh in oh0..oh1 {
            let top = oh * g.stride[0] - top0;
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: the CPU has AVX2 and FMA (checked); bounds are checked inside.
                unsafe { simd::output_row(g, padded, width, wt, bias, top, staged) };
                store(staged, oh);
                continue;
            }
            let mut ow = 0;
            while ow + PIXELS <= g.ow {
                let acc = pixels::<PIXELS>(g, padded, width, wt, bias, top, ow);
                staged[ow..ow + PIXELS].copy_from_slice(&acc);
                ow += PIXELS;
            }
            while ow < g.ow {
                staged[ow] = pixels::<1>(g, padded, width, wt, bias, top, ow)[0];
                ow += 1;
            }
            store(staged, oh);
        }
    }
}

/// Fill one padded row's interior (`row`, the input's width) from input row `at / width` of
/// each of the `lanes` channel planes in `x`: whole blocks of 8 columns as 8×8 register
/// transposes with AVX2, the rest (and other CPUs) element by element, row by row so the
/// padded row stays in L1 while its 16 source rows stream in.
fn fill_row(x: &[f32], in_plane: usize, at: usize, lanes: usize, row: &mut [Lanes]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if lanes == L && level() != Level::Portable {
        // SAFETY: the CPU has AVX2 and FMA (checked); bounds are checked inside.
        done = unsafe { simd::fill_row(x, in_plane, at, row) };
    }
    for l in 0..lanes {
        let src = &x[l * in_plane + at..][..row.len()];
        for (d, &v) in row[done..].iter_mut().zip(&src[done..]) {
            d[l] = v;
        }
    }
}

/// Write output row `at / ow` of the `lanes` channel planes in `dst` from the staged
/// channel-interleaved row: `clamp(staged + residual)`; whole blocks of 8 columns transposed
/// in registers with AVX2, the rest element by element.
fn store_row(
    staged: &[Lanes],
    lanes: usize,
    dst: &mut [f32],
    out_plane: usize,
    at: usize,
    res: Option<&[f32]>,
    clamp: Option<(f32, f32)>,
) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if lanes == L && level() != Level::Portable {
        // SAFETY: the CPU has AVX2 and FMA (checked); bounds are checked inside.
        done = unsafe { simd::store_row(staged, dst, out_plane, at, res, clamp) };
    }
    let ow = staged.len();
    for l in 0..lanes {
        let d = &mut dst[l * out_plane + at..][done..ow];
        let staged = &staged[done..];
        let r = res.map(|r| &r[l * out_plane + at..][done..ow]);
        match (r, clamp) {
            (None, None) => d.iter_mut().zip(staged).for_each(|(d, s)| *d = s[l]),
            (None, Some((lo, hi))) => d.iter_mut().zip(staged).for_each(|(d, s)| *d = clip(s[l], lo, hi)),
            (Some(r), None) => d.iter_mut().zip(staged).zip(r).for_each(|((d, s), r)| *d = s[l] + r),
            (Some(r), Some((lo, hi))) => {
                d.iter_mut().zip(staged).zip(r).for_each(|((d, s), r)| *d = clip(s[l] + r, lo, hi))
            }
        }
    }
}

/// Output pixels `ow .. ow + P` of the row whose taps start at padded row `top`: bias plus
/// the sum over taps of the tap's 16 weights times the input pixel under it.
#[inline(always)]
fn pixels<const P: usize>(
    g: &Geometry,
    padded: &[Lanes],
    width: usize,
    wt: &[Lanes],
    bias: &Lanes,
    top: usize,
    ow: usize,
) -> [Lanes; P] {
    let mut acc = [*bias; P];
    let sw = g.stride[1];
    for kh in 0..g.kh {
        let row = &padded[(top + kh * g.dilation[0]) * width..][..width];
        for kw in 0..g.kw {
            let wv = &wt[kh * g.kw + kw];
            let first = ow * sw + kw * g.dilation[1];
            for (q, a) in acc.iter_mut().enumerate() {
                let s = &row[first + q * sw];
                for i in 0..L {
                    a[i] += wv[i] * s[i];
                }
            }
        }
    }
    acc
}
/// The transposes between 16 channel planes and the channel-interleaved layout, as 8×8 register
/// transposes, and the multiply-adds as FMAs, in AVX2+FMA (intrinsics stable since Rust 1.27, so
/// within the MSRV; on Zen 4, whose AVX-512 runs as two 256-bit halves, as fast as 512-bit code).
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{Geometry, Lanes, L};
    use crate::cpu::vecmath::transpose8;
    use std::arch::x86_64::*;

    /// Half a 16-lane block: one 256-bit register.
    const H: usize = 8;

    /// One output row of [`super::channel_block`] into `staged` with fused multiply-adds
    /// (the portable body's separate multiply and add are not fused): blocks of 4, 2, then 1
    /// pixels, each pixel two independent accumulator chains.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn output_row(
        g: &Geometry,
        padded: &[Lanes],
        width: usize,
        wt: &[Lanes],
        bias: &Lanes,
        top: usize,
        staged: &mut [Lanes],
    ) {
        let ow_n = staged.len();
        if ow_n == 0 {
            return;
        }
        // The farthest tap of the last pixel lies inside `padded`; every other read is before it.
        let last = (top + (g.kh - 1) * g.dilation[0]) * width + (ow_n - 1) * g.stride[1] + (g.kw - 1) * g.dilation[1];
        assert!(last < padded.len() && wt.len() >= g.kh * g.kw, "depthwise-c16: padded block too small");
        let base = padded.as_ptr() as *const f32;
        let b = [_mm256_loadu_ps(bias.as_ptr()), _mm256_loadu_ps(bias.as_ptr().add(H))];
        let mut ow = 0;
        while ow + 4 <= ow_n {
            pixels::<4>(g, base, width, wt, b, top, ow, staged);
            ow += 4;
        }
        if ow + 2 <= ow_n {
            pixels::<2>(g, base, width, wt, b, top, ow, staged);
            ow += 2;
        }
        if ow < ow_n {
            pixels::<1>(g, base, width, wt, b, top, ow, staged);
        }
    }

    /// Pixels `ow .. ow + P` of the row (in bounds: checked by the caller).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pixels<const P: usize>(
        g: &Geometry,
        base: *const f32,
        width: usize,
        wt: &[Lanes],
        b: [__m256; 2],
        top: usize,
        ow: usize,
        staged: &mut [Lanes],
    ) {
        let mut acc = [b; P];
        let sw = g.stride[1];
        for kh in 0..g.kh {
            let row = (top + kh * g.dilation[0]) * width;
            for kw in 0..g.kw {
                let wv = &wt[kh * g.kw + kw];
                let w = [_mm256_loadu_ps(wv.as_ptr()), _mm256_loadu_ps(wv.as_ptr().add(H))];
                let first = row + ow * sw + kw * g.dilation[1];
                for (q, a) in acc.iter_mut().enumerate() {
                    let src = base.add((first + q * sw) * L);
                    a[0] = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(src), a[0]);
                    a[1] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(src.add(H)), a[1]);
                }
            }
        }
        for (s, a) in staged[ow..ow + P].iter_mut().zip(&acc) {
            _mm256_storeu_ps(s.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(s.as_mut_ptr().add(H), a[1]);
        }
    }

    /// [`super::fill_row`] for 16 channels: the whole 8-column blocks; returns how many
    /// columns it filled.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fill_row(x: &[f32], in_plane: usize, at: usize, row: &mut [Lanes]) -> usize {
        let whole = row.len() / H * H;
        if whole == 0 {
            return 0;
        }
        // Every read x[l·in_plane + at + j], l < 16, j < whole, lies inside x.
        assert!((L - 1) * in_plane + at + whole <= x.len(), "depthwise-c16: input block too small");
        let mut r = [_mm256_setzero_ps(); H];
        for j0 in (0..whole).step_by(H) {
            for half in 0..2 {
                for (l, v) in r.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(x.as_ptr().add((half * H + l) * in_plane + at + j0));
                }
                transpose8(&mut r);
                for (d, v) in row[j0..j0 + H].iter_mut().zip(&r) {
                    _mm256_storeu_ps(d.as_mut_ptr().add(half * H), *v);
                }
            }
        }
        whole
    }

    /// [`super::store_row`] for 16 channels: the whole 8-column blocks; returns how many
    /// columns it wrote. The clamp as max(lo, x) then min(hi, x), which keep a NaN x (the
    /// instructions return their second operand when either is NaN) like kiln-ir's Clip.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn store_row(
        staged: &[Lanes],
        dst: &mut [f32],
        out_plane: usize,
        at: usize,
        res: Option<&[f32]>,
        clamp: Option<(f32, f32)>,
    ) -> usize {
        let whole = staged.len() / H * H;
        if whole == 0 {
            return 0;
        }
        // Every write dst[l·out_plane + at + j] (and residual read), l < 16, j < whole, is inside.
        let end = (L - 1) * out_plane + at + whole;
        assert!(end <= dst.len() && res.is_none_or(|r| end <= r.len()), "depthwise-c16: output block too small");
        let mut r = [_mm256_setzero_ps(); H];
        for j0 in (0..whole).step_by(H) {
            for half in 0..2 {
                for (v, s) in r.iter_mut().zip(&staged[j0..j0 + H]) {
                    *v = _mm256_loadu_ps(s.as_ptr().add(half * H));
                }
                transpose8(&mut r);
                for (l, v) in r.iter().enumerate() {
                    let at = (half * H + l) * out_plane + at + j0;
                    let mut v = *v;
                    if let Some(res) = res {
                        v = _mm256_add_ps(v, _mm256_loadu_ps(res.as_ptr().add(at)));
                    }
                    if let Some((lo, hi)) = clamp {
                        v = _mm256_min_ps(_mm256_set1_ps(hi), _mm256_max_ps(_mm256_set1_ps(lo), v));
                    }
                    _mm256_storeu_ps(dst.as_mut_ptr().add(at), v);
                }
            }
        }
        whole
    }
}
