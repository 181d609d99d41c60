//! The `conv-winograd-2x2-3x3` tactic: Winograd's F(2×2, 3×3) for 3×3 stride-1 convolutions
//! (f32, NCHW, one group, constant weights). Each 2×2 output tile comes from a 4×4 input tile
//! in 16 multiplies per channel pair instead of 36, as 16 matrix products
//! `M_ξ[cout × tiles] = U_ξ[cout × cin] · V_ξ[cin × tiles]` (ξ the 16 transform positions):
//!
//! - weights `U = G g Gᵀ`, transformed once: on AVX-512 CPUs at build time, stored in the
//!   plan as the packed multiply's row panels (pack_weights); elsewhere when the kernel is
//!   made, for the gemm crate;
//! - input tiles `V = Bᵀ d B` (zero padding read as 0), laid out [cin][ξ][tiles] so each
//!   channel is one task's contiguous chunk and each ξ a strided matrix for the product;
//! - outputs `Y = Aᵀ m A`, then the fused epilogue per output plane.
//!
//! F(2×2, 3×3) keeps the transforms' constants 0, ±1 and ½, so rounding stays at the level of
//! the direct product (larger tiles trade accuracy for speed).

use super::conv::{checked_epilogue, Geometry};
use super::epilogue::{apply, Bias};
use super::io::{f32_input, opt_f32_input, weight_panels, write_f32_output, OutPtr};
use super::packed_gemm::{self, pack_rows, packed_rows_len, Epilogue, Operand};
use super::sgemm::{sgemm_strided, Mat};
use super::vecmath::multiversion;
use crate::backend::{LayerDesc, LayerIo, LayerKernel};
use kiln_ir::{Activation, Attributes};
use rayon::prelude::*;

pub const TACTIC: &str = "conv-winograd-2x2-3x3";

/// Transform positions: one per element of a 4×4 tile.
const XI: usize = 16;

/// Whether the tactic runs this convolution.
pub(super) fn fits(g: &Geometry) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == [1, 1] && g.dilation == [1, 1] && g.group == 1 && g.oh > 0 && g.ow > 0
}

fn tiles(g: &Geometry) -> usize {
    g.oh.div_ceil(2) * g.ow.div_ceil(2)
}

/// Scratch per run: the transformed input and the 16 products, for one image.
pub(super) fn workspace(g: &Geometry) -> usize {
    XI * tiles(g) * (g.cin + g.cout) * 4
}

pub(crate) struct WinogradKernel {
    attrs: Attributes,
    activation: Option<Activation>,
    /// The transformed filter, unless the plan stores it ([`UForm`]).
    u: Option<UForm>,
    cout: usize,
    cin: usize,
}

/// Where the transformed filter `U` lives.
enum UForm {
    /// `[ξ][cout][cin]`, for the gemm crate (CPUs without AVX-512).
    Plain(Vec<f32>),
    /// Each `U_ξ` as row panels for kiln's packed multiply, ξ after ξ (as the plan stores it).
    Panels(Vec<f32>),
}

/// `U = G g Gᵀ` of every filter, `[ξ][cout][cin]`.
fn transform_filters(w: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut u = vec![0f32; XI * cout * cin];
    for (oc_ic, f) in w.chunks_exact(9).enumerate() {
        for (xi, v) in transform_filter(f).into_iter().enumerate() {
            u[xi * cout * cin + oc_ic] = v;
        }
    }
    u
}

/// The weight `[cout, cin, 3, 3]` as the packed multiply reads it: each `U_ξ` as row panels.
pub(super) fn pack_weight(w: &[f32], shape: &[usize]) -> Result<Vec<f32>, String> {
    let &[cout, cin, 3, 3] = shape else { return Err(format!("Winograd needs a 3x3 weight, not {shape:?}")) };
    if w.len() != cout * cin * 9 {
        return Err("weight size does not match its shape".into());
    }
    let u = transform_filters(w, cout, cin);
    Ok((0..XI)
        .flat_map(|xi| pack_rows(Mat::row_major(&u[xi * cout * cin..(xi + 1) * cout * cin], cin), cout, cin))
        .collect())
}

impl WinogradKernel {
    pub fn new(desc: &LayerDesc) -> Result<Self, String> {
        let w = desc.weights.get(1).copied().flatten().ok_or("Winograd needs constant weights")?;
        let &[cout, cin, 3, 3] = w.shape else {
            return Err(format!("Winograd F(2x2, 3x3) needs a 3x3 kernel, weight {:?}", w.shape));
        };
        let u = if w.packed {
            // A plan is untrusted: its packed bytes must be exactly what packing makes.
            if w.bytes.len() != XI * packed_rows_len(cout, cin) * 4 || !super::microkernel::available() {
                return Err(format!("packed Winograd weight of {} bytes for shape {:?}", w.bytes.len(), w.shape));
            }
            None
        } else {
            let g: &[f32] = bytemuck::try_cast_slice(w.bytes).map_err(|e| format!("weight bytes: {e:?}"))?;
            Some(if super::microkernel::available() {
                UForm::Panels(pack_weight(g, w.shape)?)
            } else {
                if g.len() != cout * cin * 9 {
                    return Err("weight size does not match its shape".into());
                }
                UForm::Plain(transform_filters(g, cout, cin))
            })
        };
        Ok(WinogradKernel {
            attrs: desc.layer.attrs.clone(),
            activation: Activation::from_attrs(&desc.layer.attrs)?,
            u,
            cout,
            cin,
        })
    }
}

/// `G g Gᵀ` with G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]], row-major 4×4.
fn transform_filter(f: &[f32]) -> [f32; 16] {
    let col = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    // G g: 4×3, column by column.
    let mut gg = [[0f32; 3]; 4];
    for j in 0..3 {
        let c = col(f[j], f[3 + j], f[6 + j]);
        for i in 0..4 {
            gg[i][j] = c[i];
        }
    }
    let mut out = [0f32; 16];
    for i in 0..4 {
        let r = col(gg[i][0], gg[i][1], gg[i][2]);
        out[i * 4..i * 4 + 4].copy_from_slice(&r);
    }
    out
}

thread_local! {
    /// The transformed input and the products of one image, kept between runs.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

impl LayerKernel for WinogradKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let (x, x_shape) = f32_input(io, 0)?;
        let owned = self.u.as_ref().map(|u| match u {
            UForm::Panels(p) | UForm::Plain(p) => p.as_slice(),
        });
        let (u, w_shape) = weight_panels(io, 1, owned)?;
        let plain = matches!(self.u, Some(UForm::Plain(_)));
        let bias = opt_f32_input(io, 2)?.map(|(b, _)| b);
        let residual = opt_f32_input(io, 3)?;
        let g = Geometry::new(&self.attrs, x_shape, w_shape)?;
        if !fits(&g) || g.cout != self.cout || g.cin != self.cin {
            return Err(format!("tactic {TACTIC} does not fit this convolution's shape"));
        }
        let (out_shape, residual) = checked_epilogue(&g, bias, residual)?;
        let act = self.activation;
        let threads = rayon::current_num_threads();
        write_f32_output(io, 0, out_shape, |out| {
            let (in_len, out_len) = (g.cin * g.h * g.w, g.cout * g.oh * g.ow);
            let one = |n: usize, dst: &mut [f32], parallel: bool| {
                let image = &x[n * in_len..(n + 1) * in_len];
                let res = residual.map(|r| &r[n * out_len..(n + 1) * out_len]);
                let (v_len, m_len) = (g.cin * XI * tiles(&g), g.cout * XI * tiles(&g));
                let mut run = |v: &mut Vec<f32>, m: &mut Vec<f32>| {
                    // Grow only: the buffers serve every Winograd layer run on this thread.
                    if v.len() < v_len {
                        v.resize(v_len, 0.0);
                    }
                    if m.len() < m_len {
                        m.resize(m_len, 0.0);
                    }
                    let step = Step { g: &g, u, plain, parallel };
                    step.image(image, &mut v[..v_len], &mut m[..m_len], dst, bias, res, act)
                };
                SCRATCH.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut buf) => {
                        let (v, m) = &mut *buf;
                        run(v, m)
                    }
                    // In use further up this thread's stack (rayon ran another layer here
                    // while that one waits): buffers of its own.
                    Err(_) => run(&mut Vec::new(), &mut Vec::new()),
                })
            };
            let out = &mut out[..g.n * out_len];
            if g.n >= 2 * threads && threads > 1 {
                // Enough images for the pool: one whole image per task.
                out.par_chunks_mut(out_len.max(1)).enumerate().try_for_each(|(n, dst)| one(n, dst, false))
            } else {
                out.chunks_mut(out_len.max(1)).enumerate().try_for_each(|(n, dst)| one(n, dst, true))
            }
        })
    }
}

/// One image's convolution, the transformed filter in hand.
struct Step<'a> {
    g: &'a Geometry,
    u: &'a [f32],
    /// `u` is `[ξ][cout][cin]` for the gemm crate (else the packed multiply's panels).
    plain: bool,
    /// Split the image's work across the pool (else run it on this thread).
    parallel: bool,
}

impl Step<'_> {
    /// Transform the input, the 16 products, transform the output and apply the epilogue.
    #[allow(clippy::too_many_arguments)]
    fn image(
        &self,
        image: &[f32],
        v: &mut [f32],
        m: &mut [f32],
        dst: &mut [f32],
        bias: Option<&[f32]>,
        res: Option<&[f32]>,
        act: Option<Activation>,
    ) -> Result<(), String> {
        let g = self.g;
        let (t, in_plane, out_plane) = (tiles(g), g.h * g.w, g.oh * g.ow);
        let input = |(c, vc): (usize, &mut [f32])| input_tiles(g, &image[c * in_plane..(c + 1) * in_plane], vc);
        if self.parallel {
            v.par_chunks_mut(XI * t).enumerate().for_each(input);
        } else {
            v.chunks_mut(XI * t).enumerate().for_each(input);
        }
        let mp = OutPtr(m.as_mut_ptr());
        let v: &[f32] = v;
        if self.parallel {
            (0..XI).into_par_iter().try_for_each(|xi| self.product(xi, v, mp))?;
        } else {
            (0..XI).try_for_each(|xi| self.product(xi, v, mp))?;
        }
        let m: &[f32] = m;
        let output = |(c, plane): (usize, &mut [f32])| {
            output_tiles(g, &m[c * XI * t..(c + 1) * XI * t], plane);
            let b = bias.map_or(Bias::None, |b| Bias::PerRow(&b[c..c + 1]));
            apply(plane, out_plane, &b, res.map(|r| &r[c * out_plane..(c + 1) * out_plane]), act);
        };
        if self.parallel {
            dst.par_chunks_mut(out_plane.max(1)).enumerate().for_each(output);
        } else {
            dst.chunks_mut(out_plane.max(1)).enumerate().for_each(output);
        }
        Ok(())
    }

    /// `M_ξ = U_ξ · V_ξ` into its columns of `m` (`[cout][ξ][tile]`).
    fn product(&self, xi: usize, v: &[f32], m: OutPtr) -> Result<(), String> {
        let (g, t) = (self.g, tiles(self.g));
        let vm = Mat { data: &v[xi * t..], row_stride: XI * t, col_stride: 1 };
        if self.plain {
            let u = Mat::row_major(&self.u[xi * g.cout * g.cin..(xi + 1) * g.cout * g.cin], g.cin);
            // SAFETY: this call writes rows c·16t + ξ·t .. + t of `m` (c < cout): its own ξ's
            // columns, disjoint from the other positions' and inside `m`.
            return unsafe { sgemm_strided(g.cout, t, g.cin, u, vm, m.at(xi * t), XI * t, false, false) };
        }
        let per_xi = packed_rows_len(g.cout, g.cin);
        let panels = self.u.get(xi * per_xi..(xi + 1) * per_xi).ok_or("packed Winograd weight too short")?;
        // SAFETY: panels exist only where AVX-512 is (checked when the kernel was made); this
        // call writes only its own ξ's columns of `m`, as above.
        unsafe {
            packed_gemm::gemm(
                g.cout,
                t,
                g.cin,
                &Operand::Packed(panels),
                &Operand::Matrix(vm),
                OutPtr(m.at(xi * t)),
                XI * t,
                &Epilogue::default(),
                false,
            )
        }
    }
}

/// Tiles transformed together: one AVX-512 register of f32 per tile position.
const LANES: usize = 16;

type Lanes = [f32; LANES];

/// [`input_tiles`] for `n ≤ 16` tiles in AVX-512 registers: `padded` points at tile column
/// tx0 of the even half of padded row 2·th (the odd half is `half` further, the next row
/// `2·half`); `vc` at tile th·tw + tx0 of transform position 0 (position ξ is `ξ·t` further).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // i, j are the tile's matrix indices on both sides
unsafe fn input_chunk_avx512(padded: *const f32, half: usize, vc: *mut f32, t: usize, n: usize) {
    use std::arch::x86_64::*;
    let mask: __mmask16 = if n >= LANES { 0xffff } else { (1u16 << n) - 1 };
    // SAFETY: as the caller guarantees.
    unsafe {
        // d[i][j] = padded row i, column 2·tx + j: half j % 2, element tx + j / 2.
        let d = |i: usize, j: usize| _mm512_loadu_ps(padded.add(i * 2 * half + (j % 2) * half + j / 2));
        let bt = |x: [__m512; 4]| {
            [_mm512_sub_ps(x[0], x[2]), _mm512_add_ps(x[1], x[2]), _mm512_sub_ps(x[2], x[1]), _mm512_sub_ps(x[1], x[3])]
        };
        // Bᵀ over i for each column j, then over j for each row i.
        let mut c = [[_mm512_setzero_ps(); 4]; 4];
        for (j, cj) in c.iter_mut().enumerate() {
            *cj = bt([d(0, j), d(1, j), d(2, j), d(3, j)]);
        }
        for i in 0..4 {
            let v = bt([c[0][i], c[1][i], c[2][i], c[3][i]]);
            for (j, &vj) in v.iter().enumerate() {
                _mm512_mask_storeu_ps(vc.add((i * 4 + j) * t), mask, vj);
            }
        }
    }
}

/// [`output_tiles`] for `n ≤ 16` tiles in AVX-512 registers: `mc` points at the first tile's
/// product for ξ = 0 (position ξ is `ξ·t` further); writes 2n columns of each output row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // i, j are the tile's matrix indices on both sides
unsafe fn output_chunk_avx512(mc: *const f32, t: usize, n: usize, row0: *mut f32, row1: *mut f32) {
    use std::arch::x86_64::*;
    let lanes = |k: usize| -> __mmask16 {
        if k >= LANES {
            0xffff
        } else {
            (1u16 << k) - 1
        }
    };
    let (load, store_lo, store_hi) = (lanes(n), lanes(2 * n), lanes((2 * n).saturating_sub(LANES)));
    // SAFETY: the caller guarantees the products' n lanes and the two rows' 2n columns;
    // masked lanes are neither read nor written.
    unsafe {
        let m = |i: usize, j: usize| _mm512_maskz_loadu_ps(load, mc.add((i * 4 + j) * t));
        // Aᵀ over i: r0 = m0 + m1 + m2, r1 = m1 − m2 − m3, per column j.
        let mut r = [[_mm512_setzero_ps(); 4]; 2];
        for j in 0..4 {
            let (m0, m1, m2, m3) = (m(0, j), m(1, j), m(2, j), m(3, j));
            r[0][j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
            r[1][j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
        }
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        for (ra, row) in r.iter().zip([row0, row1]) {
            // Aᵀ over j: even and odd output columns, interleaved into 32 consecutive ones.
            let even = _mm512_add_ps(_mm512_add_ps(ra[0], ra[1]), ra[2]);
            let odd = _mm512_sub_ps(_mm512_sub_ps(ra[1], ra[2]), ra[3]);
            _mm512_mask_storeu_ps(row, store_lo, _mm512_permutex2var_ps(even, lo, odd));
            _mm512_mask_storeu_ps(row.add(LANES), store_hi, _mm512_permutex2var_ps(even, hi, odd));
        }
    }
}

/// `dst = src[..dst.len()]`, a whole-register store when all 16 lanes are wanted (a
/// variable-length copy is a library call per 64 bytes).
#[inline(always)]
fn copy_lanes(dst: &mut [f32], src: &Lanes) {
    if let Ok(whole) = <&mut Lanes>::try_from(&mut *dst) {
        *whole = *src;
    } else {
        dst.copy_from_slice(&src[..dst.len()]);
    }
}

/// `Bᵀ x B` along one axis for 16 tiles at once.
#[inline(always)]
fn bt_lanes(x: [&Lanes; 4]) -> [Lanes; 4] {
    let mut out = [[0f32; LANES]; 4];
    for l in 0..LANES {
        out[0][l] = x[0][l] - x[2][l];
        out[1][l] = x[1][l] + x[2][l];
        out[2][l] = x[2][l] - x[1][l];
        out[3][l] = x[1][l] - x[3][l];
    }
    out
}

multiversion! {
    /// One channel's input tiles, transformed: `vc[ξ][tile]`, 16 tiles of a tile row at a
    /// time. The plane is first copied into a zero-padded buffer split into even and odd
    /// columns, so tile column `tx`'s four input columns are element `tx` (and `tx + 1`) of
    /// those two halves: every load is a contiguous run of 16, with no bounds tests.
    #[allow(clippy::needless_range_loop)] // i, j are the tile's matrix indices on both sides
    fn input_tiles(g: &Geometry, plane: &[f32], vc: &mut [f32]) {
        let (th_count, tw, t) = (g.oh.div_ceil(2), g.ow.div_ceil(2), tiles(g));
        let (pt, pl) = (g.pad_begin[0], g.pad_begin[1]);
        // Padded rows 2·th .. 2·th + 3; each half holds tw + 1 columns plus room for a whole
        // last group of 16.
        let rows = 2 * th_count + 2;
        let half = (tw + 1).next_multiple_of(LANES) + LANES;
        let mut padded = vec![0f32; rows * 2 * half];
        for r in 0..rows {
            let Some(ih) = (r as isize - pt as isize).try_into().ok().filter(|&ih: &usize| ih < g.h) else { continue };
            let src = &plane[ih * g.w..(ih + 1) * g.w];
            let (even, odd) = padded[r * 2 * half..(r + 1) * 2 * half].split_at_mut(half);
            for (c, &v) in src.iter().enumerate() {
                let pc = c + pl;
                if pc / 2 < half {
                    if pc % 2 == 0 {
                        even[pc / 2] = v;
                    } else {
                        odd[pc / 2] = v;
                    }
                }
            }
        }
        let lanes = |r: usize, odd: usize, u: usize| -> &Lanes {
            let at = r * 2 * half + odd * half + u;
            padded[at..at + LANES].try_into().expect("16 lanes")
        };
        for th in 0..th_count {
            for tx0 in (0..tw).step_by(LANES) {
                let n = LANES.min(tw - tx0);
                #[cfg(target_arch = "x86_64")]
                if super::microkernel::available() {
                    // SAFETY: AVX-512 checked; rows 2·th .. 2·th + 3 of the padded halves
                    // hold 16 lanes from tx0 + 1 (their width has a group of 16 to spare),
                    // and `vc` holds n tiles at th·tw + tx0 for every ξ.
                    unsafe {
                        input_chunk_avx512(
                            padded[2 * th * 2 * half + tx0..].as_ptr(),
                            half,
                            vc[th * tw + tx0..].as_mut_ptr(),
                            t,
                            n,
                        )
                    };
                    continue;
                }
                // d[i][j] for 16 tiles: input row 2·th + i, column 2·tx + j.
                let mut cols = [[[0f32; LANES]; 4]; 4]; // [j][i] after the first pass
                for (j, col) in cols.iter_mut().enumerate() {
                    let (odd, shift) = (j % 2, j / 2);
                    let r = 2 * th;
                    let u = tx0 + shift;
                    *col = bt_lanes([lanes(r, odd, u), lanes(r + 1, odd, u), lanes(r + 2, odd, u), lanes(r + 3, odd, u)]);
                }
                for i in 0..4 {
                    let v = bt_lanes([&cols[0][i], &cols[1][i], &cols[2][i], &cols[3][i]]); // over j
                    for (j, lanes) in v.iter().enumerate() {
                        let at = (i * 4 + j) * t + th * tw + tx0;
                        copy_lanes(&mut vc[at..at + n], lanes);
                    }
                }
            }
        }
    }
}

multiversion! {
    /// One output channel's plane from its products `mc[ξ][tile]`, 16 tiles of a tile row at
    /// a time: `Y = Aᵀ m A` with Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]], the two output rows
    /// assembled in a staging pair and copied into the plane (odd sizes drop the extra row or
    /// column).
    fn output_tiles(g: &Geometry, mc: &[f32], plane: &mut [f32]) {
        let (th_count, tw, t) = (g.oh.div_ceil(2), g.ow.div_ceil(2), tiles(g));
        let mut stage = vec![0f32; 2 * (2 * tw.next_multiple_of(LANES))];
        let width = 2 * tw.next_multiple_of(LANES);
        for th in 0..th_count {
            for tx0 in (0..tw).step_by(LANES) {
                let n = LANES.min(tw - tx0);
                #[cfg(target_arch = "x86_64")]
                if super::microkernel::available() {
                    let (row0, row1) = stage.split_at_mut(width);
                    // SAFETY: AVX-512 checked; n tiles of all 16 products lie in `mc` (tile
                    // th·tw + tx0 + n − 1 < t) and 32 columns at 2·tx0 in each staged row
                    // (rows are whole groups of 16 tiles wide).
                    unsafe {
                        output_chunk_avx512(
                            mc[th * tw + tx0..].as_ptr(),
                            t,
                            n,
                            row0[2 * tx0..2 * tx0 + 2 * LANES].as_mut_ptr(),
                            row1[2 * tx0..2 * tx0 + 2 * LANES].as_mut_ptr(),
                        )
                    };
                    continue;
                }
                let mut m = [[[0f32; LANES]; 4]; 4];
                for (i, row) in m.iter_mut().enumerate() {
                    for (j, lanes) in row.iter_mut().enumerate() {
                        let at = (i * 4 + j) * t + th * tw + tx0;
                        if n == LANES {
                            *lanes = mc[at..at + LANES].try_into().expect("16 lanes");
                        } else {
                            lanes[..n].copy_from_slice(&mc[at..at + n]);
                        }
                    }
                }
                // Aᵀ over i: two rows of four columns.
                let mut r = [[[0f32; LANES]; 4]; 2];
                for j in 0..4 {
                    for l in 0..LANES {
                        r[0][j][l] = m[0][j][l] + m[1][j][l] + m[2][j][l];
                        r[1][j][l] = m[1][j][l] - m[2][j][l] - m[3][j][l];
                    }
                }
                for (a, ra) in r.iter().enumerate() {
                    // Aᵀ over j: the even and odd output columns, then interleaved.
                    let (mut even, mut odd) = ([0f32; LANES], [0f32; LANES]);
                    for l in 0..LANES {
                        even[l] = ra[0][l] + ra[1][l] + ra[2][l];
                        odd[l] = ra[1][l] - ra[2][l] - ra[3][l];
                    }
                    let out: &mut [f32; 2 * LANES] = (&mut stage[a * width + 2 * tx0..a * width + 2 * tx0 + 2 * LANES])
                        .try_into()
                        .expect("32 columns");
                    for l in 0..LANES {
                        out[2 * l] = even[l];
                        out[2 * l + 1] = odd[l];
                    }
                }
            }
            for a in 0..2 {
                let oh = 2 * th + a;
                if oh < g.oh {
                    plane[oh * g.ow..(oh + 1) * g.ow].copy_from_slice(&stage[a * width..a * width + g.ow]);
                }
            }
        }
    }
}
