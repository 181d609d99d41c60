//! Native 2-D convolution tactics (f32, NCHW, constant weights), each followed by the fused
//! epilogue (bias, residual, activation):
//! - `conv-1x1-gemm`: a 1×1 stride-1 unpadded convolution is a plain matrix product of the
//!   weight and the input, no copy;
//! - `conv-im2col-gemm`: patches unrolled into a scratch matrix, then one packed product per
//!   image and group;
//! - `conv-depthwise`: one filter per channel, computed directly (a product per channel would
//!   be a 1-row GEMM), vectorized along output rows;
//! - `conv-depthwise-c16` (depthwise_c16.rs): the same, vectorized across 16 channels.

use super::epilogue::{apply, Bias};
use super::io::{f32_input, opt_f32_input, write_f32_output, OutPtr};
use super::sgemm::{sgemm, sgemm_serial, sgemm_strided, Mat};
use super::vecmath::multiversion;
use crate::backend::{LayerDesc, LayerIo, LayerKernel, Tactic};
use kiln_ir::{Activation, Attributes, DType, ValueType};
use rayon::prelude::*;

pub const ONE_BY_ONE: &str = "conv-1x1-gemm";
pub const IM2COL: &str = "conv-im2col-gemm";
pub const DEPTHWISE: &str = "conv-depthwise";

/// The native tactics that can run this Conv layer, with their scratch needs.
pub(crate) fn tactics(desc: &LayerDesc) -> Vec<Tactic> {
    let Some(geo) = geometry_for(desc) else { return Vec::new() };
    let mut out = Vec::new();
    if kiln_ir::channels_last::is_marked(&desc.layer.attrs) {
        if geo.is_depthwise() {
            out.push(Tactic::new(super::depthwise_nhwc::TACTIC));
        }
        if super::conv_nhwc::fits(&geo) {
            out.push(Tactic::new(super::conv_nhwc::TACTIC));
        }
        return out;
    }
    if geo.is_pointwise() {
        out.push(Tactic::new(ONE_BY_ONE));
    }
    if geo.is_depthwise() {
        out.push(Tactic::new(super::depthwise_c16::TACTIC));
        out.push(Tactic::new(DEPTHWISE));
    }
    if super::conv_packed::fits(&geo) {
        out.push(Tactic::new(super::conv_packed::TACTIC));
        out.push(Tactic::new(super::conv_packed::TRANSPOSED));
    }
    let col_bytes = geo.cin_g * geo.kh * geo.kw * geo.oh * geo.ow * 4;
    out.push(Tactic { name: IM2COL.to_string(), workspace_bytes: col_bytes });
    if super::winograd::fits(&geo) {
        out.push(Tactic {
            name: super::winograd::TACTIC.to_string(),
            workspace_bytes: super::winograd::workspace(&geo),
        });
    }
    out
}

/// Geometry at the opt shapes, when the layer is a 2-D f32 convolution with constant weights.
pub(super) fn geometry_for(desc: &LayerDesc) -> Option<Geometry> {
    if desc.layer.op != "Conv" {
        return None;
    }
    let Some(Some(ValueType::Tensor(x))) = desc.input_types.first() else { return None };
    let w = desc.weights.get(1).copied().flatten()?;
    if x.dtype != DType::F32 || w.dtype != DType::F32 || w.shape.len() != 4 {
        return None;
    }
    let xs = kiln_ir::concrete(x.shape.as_deref()?)?;
    if kiln_ir::channels_last::is_marked(&desc.layer.attrs) {
        return Geometry::from_nhwc(&desc.layer.attrs, &xs, w.shape).ok();
    }
    Geometry::new(&desc.layer.attrs, &xs, w.shape).ok()
}

pub(crate) struct ConvKernel {
    tactic: &'static str,
    attrs: Attributes,
    activation: Option<Activation>,
}

impl ConvKernel {
    pub fn new(desc: &LayerDesc, tactic: &'static str) -> Result<Self, String> {
        Ok(ConvKernel {
            tactic,
            attrs: desc.layer.attrs.clone(),
            activation: Activation::from_attrs(&desc.layer.attrs)?,
        })
    }
}

impl LayerKernel for ConvKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let (x, x_shape) = f32_input(io, 0)?;
        let (w, w_shape) = f32_input(io, 1)?;
        let bias = opt_f32_input(io, 2)?.map(|(b, _)| b);
        let residual = opt_f32_input(io, 3)?;
        let (tactic, act) = (self.tactic, self.activation);
        if tactic == super::depthwise_nhwc::TACTIC {
            let g = Geometry::from_nhwc(&self.attrs, x_shape, w_shape)?;
            let (out_shape, residual) = checked_nhwc_epilogue(&g, bias, residual)?;
            if !g.is_depthwise() || x.len() < g.n * g.cin * g.h * g.w {
                return Err(format!("tactic {tactic} does not fit this convolution's shape"));
            }
            return write_f32_output(io, 0, out_shape, |out| {
                super::depthwise_nhwc::depthwise_nhwc(&g, x, w, out, bias, residual, act);
                Ok(())
            });
        }
        let g = Geometry::new(&self.attrs, x_shape, w_shape)?;
        let (out_shape, residual) = checked_epilogue(&g, bias, residual)?;
        write_f32_output(io, 0, out_shape, |out| match tactic {
            DEPTHWISE if g.is_depthwise() => {
                depthwise(&g, x, w, out, bias, residual, act);
                Ok(())
            }
            super::depthwise_c16::TACTIC if g.is_depthwise() => {
                super::depthwise_c16::depthwise_c16(&g, x, w, out, bias, residual, act);
                Ok(())
            }
            ONE_BY_ONE if g.is_pointwise() => gemm_conv(&g, x, w, out, bias, residual, act, false),
            IM2COL => gemm_conv(&g, x, w, out, bias, residual, act, true),
            other => Err(format!("tactic {other} does not fit this convolution's shape")),
        })
    }
}

/// Products smaller than this (multiply-adds) are not split across threads; when a layer has
/// several of them (images × groups) they run side by side instead.
const SMALL_PRODUCT: usize = 1 << 22;

/// Per image and group: (im2col or the input itself) then one product, then the epilogue.
/// Large products are split across the pool one after the other; small ones (grouped or
/// depthwise convolutions, late layers at batch > 1) run whole, one per task, in parallel.
#[allow(clippy::too_many_arguments)]
fn gemm_conv(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<Activation>,
    unroll: bool,
) -> Result<(), String> {
    let (m, k, cols) = (g.cout_g, g.cin_g * g.kh * g.kw, g.oh * g.ow);
    let units = g.n * g.group;
    if units == 0 || m * cols == 0 {
        return Ok(());
    }
    let side_by_side = units > 1 && m * cols * k < SMALL_PRODUCT && rayon::current_num_threads() > 1;
    let one = |u: usize, dst: &mut [f32]| -> Result<(), String> {
        let (n, grp) = (u / g.group, u % g.group);
        let in_plane = g.h * g.w;
        let xg = &x[(n * g.cin + grp * g.cin_g) * in_plane..][..g.cin_g * in_plane];
        let lhs = Mat::row_major(&w[grp * m * k..(grp + 1) * m * k], k);
        let at = u * m * cols;
        let bias = bias.map(|b| &b[grp * m..(grp + 1) * m]);
        let residual = residual.map(|r| &r[at..at + m * cols]);
        if !side_by_side {
            let rhs = if unroll { Rhs::Unroll { g, image: xg } } else { Rhs::Matrix(Mat::row_major(xg, cols)) };
            return product_in_column_blocks(m, cols, k, lhs, rhs, dst, bias, residual, act);
        }
        let product = |rhs: Mat, dst: &mut [f32]| {
            sgemm_serial(m, cols, k, lhs, rhs, dst)?;
            apply(dst, cols, &bias.map_or(Bias::None, Bias::PerRow), residual, act);
            Ok(())
        };
        if unroll {
            COL.with(|buf| {
                let mut col = buf.borrow_mut();
                if col.len() < k * cols {
                    col.resize(k * cols, 0.0);
                }
                let col = &mut col[..k * cols];
                im2col_columns(g, xg, col, 0, cols);
                product(Mat::row_major(col, cols), dst)
            })
        } else {
            product(Mat::row_major(xg, cols), dst)
        }
    };
    let out = &mut out[..units * m * cols];
    if side_by_side {
        out.par_chunks_mut(m * cols).enumerate().try_for_each(|(u, dst)| one(u, dst))
    } else {
        out.chunks_mut(m * cols).enumerate().try_for_each(|(u, dst)| one(u, dst))
    }
}

/// Output elements of one column block: small enough that the block stays in L2 between the
/// product and the epilogue.
const BLOCK_ELEMENTS: usize = 1 << 15;

/// The right-hand side of a convolution's product: the input itself (1×1), or an image whose
/// patches are unrolled (im2col) one column block at a time.
enum Rhs<'a> {
    Matrix(Mat<'a>),
    Unroll { g: &'a Geometry, image: &'a [f32] },
}

/// Unrolled patch elements per column block: the block's im2col matrix stays in L2 while
/// the product reads it (unrolling the whole image first wrote and re-read megabytes).
const UNROLL_BLOCK_ELEMENTS: usize = 1 << 16;

/// `dst[m×cols] = act(lhs · rhs + bias + residual)`, in blocks of columns across the pool: each
/// task (unrolls its block's patches and) multiplies one block on its own thread and applies
/// the epilogue while the block is still in cache (one pass over the output where a whole
/// product then an epilogue takes two — these layers are bound by memory traffic).
#[allow(clippy::too_many_arguments)]
fn product_in_column_blocks(
    m: usize,
    cols: usize,
    k: usize,
    lhs: Mat,
    rhs: Rhs,
    dst: &mut [f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<Activation>,
) -> Result<(), String> {
    let threads = rayon::current_num_threads();
    // At least 4 blocks per thread for balance, at most BLOCK_ELEMENTS outputs (and
    // UNROLL_BLOCK_ELEMENTS unrolled inputs) per block.
    let mut width = (BLOCK_ELEMENTS / m.max(1)).min(cols.div_ceil(4 * threads));
    if matches!(rhs, Rhs::Unroll { .. }) {
        width = width.min(UNROLL_BLOCK_ELEMENTS / k.max(1));
    }
    let width = width.next_multiple_of(16).max(64);
    if dst.len() < m * cols {
        return Err("column-blocked product: output too small".into());
    }
    if let Rhs::Matrix(rhs) = &rhs {
        if width >= cols || threads == 1 && m * cols <= BLOCK_ELEMENTS {
            sgemm(m, cols, k, lhs, *rhs, dst, false)?;
            apply(dst, cols, &bias.map_or(Bias::None, Bias::PerRow), residual, act);
            return Ok(());
        }
        if rhs.row_stride != cols || rhs.col_stride != 1 {
            return Err("column-blocked product: operand layout".into());
        }
    }
    let width = width.min(cols);
    let out = OutPtr(dst.as_mut_ptr());
    (0..cols.div_ceil(width)).into_par_iter().try_for_each(|blk| {
        let (j0, nb) = (blk * width, width.min(cols - blk * width));
        let product = |b: Mat| {
            // SAFETY: this task writes only columns [j0, j0 + nb) of the m×cols output `dst`
            // (rows `cols` apart), disjoint from every other task's block and inside `dst`.
            unsafe { sgemm_strided(m, nb, k, lhs, b, out.at(j0), cols, false, false) }
        };
        match &rhs {
            Rhs::Matrix(rhs) => product(Mat { data: &rhs.data[j0..], row_stride: cols, col_stride: 1 })?,
            Rhs::Unroll { g, image } => COL.with(|buf| {
                let mut col = buf.borrow_mut();
                if col.len() < k * nb {
                    col.resize(k * nb, 0.0);
                }
                let col = &mut col[..k * nb];
                im2col_columns(g, image, col, j0, nb);
                product(Mat::row_major(col, nb))
            })?,
        }
        for r in 0..m {
            // SAFETY: row r's segment of this task's block, as above.
            let seg = unsafe { std::slice::from_raw_parts_mut(out.at(r * cols + j0), nb) };
            let b = bias.map_or(Bias::None, |b| Bias::PerRow(&b[r..r + 1]));
            apply(seg, nb, &b, residual.map(|res| &res[r * cols + j0..r * cols + j0 + nb]), act);
        }
        Ok(())
    })
}

/// Unroll output columns `[j0, j0 + nb)` of one image-group's patches into `col` (row-major
/// K × nb): row (c, kh, kw), column j = output pixel j0 + j; padding reads as 0. Each run of
/// columns within one output row is a zero-filled border around one contiguous (stride 1) or
/// strided copy, so there is no bounds test per element.
fn im2col_columns(g: &Geometry, x: &[f32], col: &mut [f32], j0: usize, nb: usize) {
    im2col_panel(g, x, col, j0, nb, nb, false)
}

/// Length of one row of a column-phased plane (see [`phase_columns`]).
pub(super) fn phased_row_len(g: &Geometry) -> usize {
    g.w.div_ceil(g.stride[1]) * g.stride[1]
}

/// Every input row of `x` (`channels` planes of `g`'s input) split into its `s = stride[1]`
/// column phases: phase r, at `r · ceil(w/s)` in the row, holds columns r, r + s, r + 2s, … .
/// A strided convolution's patches then read consecutive elements of one phase, so im2col
/// copies runs instead of gathering element by element.
pub(super) fn phase_columns(g: &Geometry, x: &[f32], channels: usize, out: &mut [f32]) {
    let (s, row_len) = (g.stride[1], phased_row_len(g));
    let half = row_len / s;
    for (src, dst) in x[..channels * g.h * g.w].chunks(g.w).zip(out.chunks_mut(row_len)) {
        for r in 0..s.min(g.w) {
            gather_phase(&mut dst[r * half..(r + 1) * half], &src[r..], s);
        }
    }
}

/// [`im2col_columns`] into rows `ld ≥ nb` apart (a packed column panel whose width is rounded
/// up to whole vectors; the columns past `nb` are left as they are). With `phased`, `x` holds
/// [`phase_columns`]'s layout.
///
/// The block's split into output-row segments and each tap's valid column range are worked
/// out once per call, not per unrolled row: a panel is only 48 pixels wide, so per-row
/// divisions and range computations cost as much as the copies.
pub(super) fn im2col_panel(g: &Geometry, x: &[f32], col: &mut [f32], j0: usize, nb: usize, ld: usize, phased: bool) {
    if nb == 0 || g.ow == 0 {
        return;
    }
    let sw = g.stride[1];
    let row_len = if phased { phased_row_len(g) } else { g.w };
    let half = row_len / sw;
    // (output row, first column, last column + 1, offset in the panel row); on the stack for
    // the usual block of a few output rows.
    let spans = (j0 + nb - 1) / g.ow - j0 / g.ow + 1;
    let mut stack = [(0usize, 0usize, 0usize, 0usize); 64];
    let mut heap = Vec::new();
    let segments = if spans <= stack.len() {
        &mut stack[..spans]
    } else {
        heap.resize(spans, (0, 0, 0, 0));
        &mut heap[..]
    };
    let mut p = j0;
    for seg in segments.iter_mut() {
        let (oh, ow0) = (p / g.ow, p % g.ow);
        let ow1 = g.ow.min(ow0 + (j0 + nb - p));
        *seg = (oh, ow0, ow1, p - j0);
        p += ow1 - ow0;
    }
    let segments = &*segments;
    let plane_len = g.h * row_len;
    let mut rows = col.chunks_mut(ld);
    for c in 0..g.cin_g {
        let plane = &x[c * plane_len..(c + 1) * plane_len];
        for kh in 0..g.kh {
            for kw in 0..g.kw {
                let Some(row) = rows.next() else { return };
                let row = &mut row[..nb];
                let offset = (kw * g.dilation[1]) as isize - g.pad_begin[1] as isize;
                let (lo, hi) = valid_columns(offset, sw, g.w, g.ow);
                for &(oh, ow0, ow1, at) in segments {
                    let dst = &mut row[at..at + (ow1 - ow0)];
                    let ih = (oh * g.stride[0] + kh * g.dilation[0]) as isize - g.pad_begin[0] as isize;
                    let (a, b) = (lo.clamp(ow0, ow1), hi.clamp(ow0, ow1));
                    if ih < 0 || ih >= g.h as isize || a >= b {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[ih as usize * row_len..(ih as usize + 1) * row_len];
                    dst[..a - ow0].fill(0.0);
                    dst[b - ow0..].fill(0.0);
                    let first = ((a * sw) as isize + offset) as usize;
                    let seg = &mut dst[a - ow0..b - ow0];
                    if sw == 1 {
                        seg.copy_from_slice(&src[first..first + (b - a)]);
                    } else if phased {
                        let at = (first % sw) * half + first / sw;
                        seg.copy_from_slice(&src[at..at + (b - a)]);
                    } else {
                        for (d, &v) in seg.iter_mut().zip(src[first..].iter().step_by(sw)) {
                            *d = v;
                        }
                    }
                }
            }
        }
    }
}

thread_local! {
    /// The im2col matrix, kept between runs: allocating it fresh each time costs a page fault
    /// per 4 KiB (megabytes per layer), more than filling it.
    static COL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One filter per channel, computed directly: per output row, each tap is one contiguous
/// (stride 1) or strided multiply-add over the output columns whose input column lies inside
/// the image, so there is no bounds test per element and the inner loop vectorizes; the
/// epilogue follows per plane while it is in cache. Channels in parallel, in groups of enough
/// work to amortize a task.
fn depthwise(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<Activation>,
) {
    let (in_plane, out_plane, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    if out_plane == 0 {
        return;
    }
    let planes_per_task = (8192 / out_plane).max(1);
    out.par_chunks_mut(out_plane * planes_per_task).enumerate().for_each(|(task, dsts)| {
        for (i, dst) in dsts.chunks_mut(out_plane).enumerate() {
            let nc = task * planes_per_task + i;
            let c = nc % g.cout;
            depthwise_plane(g, &x[nc * in_plane..(nc + 1) * in_plane], &w[c * taps..(c + 1) * taps], dst);
            let b = bias.map_or(Bias::None, |b| Bias::PerRow(&b[c..c + 1]));
            apply(dst, out_plane, &b, residual.map(|r| &r[nc * out_plane..(nc + 1) * out_plane]), act);
        }
    });
}

/// The output columns `[lo, hi)` whose input column `ow·stride + offset` lies in `[0, width)`.
pub(super) fn valid_columns(offset: isize, stride: usize, width: usize, out_width: usize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if offset >= 0 { 0 } else { ((-offset + s - 1) / s) as usize };
    let last = width as isize - 1 - offset; // ow·s ≤ last
    let hi = if last < 0 { 0 } else { (last / s + 1) as usize };
    (lo.min(out_width), hi.min(out_width).max(lo.min(out_width)))
}

thread_local! {
    /// A depthwise input plane, zero-padded and split into column phases (see `depthwise_plane`).
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One channel: `dst[oh, ow] = Σ filt[kh, kw] · src[oh·s + kh·d − p, ow·s + kw·d − p]`.
///
/// The plane is first copied into a zero-padded buffer whose rows are split into s column
/// phases (phase r holds padded columns r, r + s, r + 2s, …; one phase when s = 1). Then every
/// tap of every output is in bounds, and for an output row each tap reads *consecutive*
/// elements of one phase row: the row is a sum of kh·kw shifted, contiguous slices, computed
/// 16 columns at a time in registers (no per-element bounds tests, one store per output).
fn depthwise_plane(g: &Geometry, src: &[f32], filt: &[f32], dst: &mut [f32]) {
    let (sh, sw) = (g.stride[0], g.stride[1]);
    let (pt, pl) = (g.pad_begin[0], g.pad_begin[1]);
    // Padded extent the taps reach, and the input's place in it.
    let rows = ((g.oh - 1) * sh + (g.kh - 1) * g.dilation[0] + 1).max(pt + g.h);
    let width = ((g.ow - 1) * sw + (g.kw - 1) * g.dilation[1] + 1).max(pl + g.w);
    // Room for whole 16-column blocks past the last output column (zeros, results dropped),
    // so the arithmetic has no partial block: a masked tail is slow on AMD's AVX-512.
    let reach = (g.kw - 1) * g.dilation[1] / sw;
    let phase_len = width.div_ceil(sw).max(g.ow.next_multiple_of(DW_BLOCK) + reach);
    let row_len = sw * phase_len;
    PADDED.with(|buf| {
        let mut padded = buf.borrow_mut();
        padded.clear();
        padded.resize(rows * row_len, 0.0);
        for (i, row) in src.chunks(g.w).enumerate() {
            let out = &mut padded[(pt + i) * row_len..(pt + i + 1) * row_len];
            if sw == 1 {
                out[pl..pl + g.w].copy_from_slice(row);
            } else {
                for r in 0..sw {
                    // Padded columns c ≡ r (mod s) with c − pl inside the row.
                    let first_c = (pl..pl + sw).find(|c| c % sw == r).expect("s consecutive columns cover every phase");
                    if first_c >= pl + g.w {
                        continue;
                    }
                    let phase = &mut out[r * phase_len..(r + 1) * phase_len];
                    gather_phase(&mut phase[first_c / sw..], &row[first_c - pl..], sw);
                }
            }
        }
        depthwise_rows(g, &padded, filt, dst, row_len, phase_len)
    })
}

/// Output columns computed together (one AVX-512 register).
const DW_BLOCK: usize = 16;

multiversion! {
    /// `dst[i] = src[i·s]` while both last; stride 2 (the common case) as a pairwise loop the
    /// compiler turns into shuffles (a `step_by` iterator stayed scalar and cost ~1 ns each).
    pub(super) fn gather_phase(dst: &mut [f32], src: &[f32], s: usize) {
        if s == 2 {
            for (d, pair) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = pair[0];
            }
            let whole = src.len() / 2;
            if src.len() % 2 == 1 && whole < dst.len() {
                dst[whole] = src[src.len() - 1];
            }
        } else {
            for (d, v) in dst.iter_mut().zip(src.iter().step_by(s)) {
                *d = *v;
            }
        }
    }
}

multiversion! {
    /// [`depthwise_plane`]'s arithmetic on the padded, phased plane.
    fn depthwise_rows(g: &Geometry, padded: &[f32], filt: &[f32], dst: &mut [f32], row_len: usize, phase_len: usize) {
        const W: usize = DW_BLOCK;
        let sw = g.stride[1];
        let blocks = g.ow.div_ceil(W);
        let mut taps: Vec<(f32, &[f32])> = Vec::with_capacity(g.kh * g.kw);
        for (oh, row_out) in dst.chunks_mut(g.ow).enumerate() {
            taps.clear();
            for kh in 0..g.kh {
                let r = oh * g.stride[0] + kh * g.dilation[0];
                let row = &padded[r * row_len..(r + 1) * row_len];
                for kw in 0..g.kw {
                    let c = kw * g.dilation[1];
                    let start = (c % sw) * phase_len + c / sw;
                    taps.push((filt[kh * g.kw + kw], &row[start..start + blocks * W]));
                }
            }
            // Two blocks at a time (then the odd one): each block's sum over the taps is a chain
            // of dependent adds, so two independent chains keep the adder busy (2x here; four
            // at a time compiled to slower code, 4x slower on 56-column rows).
            let mut b = 0;
            while b + 2 <= blocks {
                block_group::<2>(&taps, b, row_out);
                b += 2;
            }
            if b < blocks {
                block_group::<1>(&taps, b, row_out);
            }
        }
    }
}

/// Output blocks `b .. b + G` of one row: `Σ_taps w · src[block]`, G independent accumulators.
#[inline(always)]
fn block_group<const G: usize>(taps: &[(f32, &[f32])], b: usize, row_out: &mut [f32]) {
    const W: usize = DW_BLOCK;
    let mut acc = [[0f32; W]; G];
    for &(wv, src) in taps {
        let src = &src[b * W..(b + G) * W];
        for (q, a) in acc.iter_mut().enumerate() {
            let s: &[f32; W] = src[q * W..(q + 1) * W].try_into().expect("W elements");
            for i in 0..W {
                a[i] += wv * s[i];
            }
        }
    }
    let len = row_out.len();
    for (q, a) in acc.iter().enumerate() {
        let start = (b + q) * W;
        if start >= len {
            break;
        }
        let out = &mut row_out[start..(start + W).min(len)];
        // A whole block as one fixed-size store (a variable-length copy is a memcpy call).
        match <&mut [f32; W]>::try_from(&mut *out) {
            Ok(whole) => *whole = *a,
            Err(_) => {
                let n = out.len();
                out.copy_from_slice(&a[..n]);
            }
        }
    }
}

/// A 2-D convolution's sizes, from ONNX attributes and the input/weight shapes.
#[derive(Clone, Debug)]
pub(super) struct Geometry {
    pub(super) n: usize,
    pub(super) cin: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) cout: usize,
    pub(super) group: usize,
    pub(super) cin_g: usize,
    pub(super) cout_g: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) stride: [usize; 2],
    pub(super) dilation: [usize; 2],
    pub(super) pad_begin: [usize; 2],
    pub(super) oh: usize,
    pub(super) ow: usize,
}

impl Geometry {
    pub(super) fn new(attrs: &Attributes, x: &[usize], w: &[usize]) -> Result<Geometry, String> {
        if x.len() != 4 || w.len() != 4 {
            return Err(format!("native convolution is 2-D: input {x:?}, weight {w:?}"));
        }
        let group = attrs.int("group", 1)?;
        let pair = |name: &str| -> Result<[usize; 2], String> {
            let v = attrs.ints(name, vec![1, 1])?;
            match v.as_slice() {
                [a, b] if *a > 0 && *b > 0 => Ok([*a as usize, *b as usize]),
                _ => Err(format!("{name} {v:?}")),
            }
        };
        let (stride, dilation) = (pair("strides")?, pair("dilations")?);
        if group <= 0
            || !x[1].is_multiple_of(group as usize)
            || !w[0].is_multiple_of(group as usize)
            || w[1] * group as usize != x[1]
        {
            return Err(format!("group {group} does not divide channels (input {x:?}, weight {w:?})"));
        }
        let group = group as usize;
        let (kh, kw) = (w[2], w[3]);
        let extent = |i: usize, k: usize| dilation[i] * (k - 1) + 1;
        let auto_pad = attrs.string("auto_pad", "NOTSET".to_string())?;
        let mut pads = attrs.ints("pads", vec![0, 0, 0, 0])?;
        if pads.len() != 4 || pads.iter().any(|&p| p < 0) {
            return Err(format!("pads {pads:?}"));
        }
        match auto_pad.as_str() {
            "NOTSET" => {}
            "VALID" => pads = vec![0; 4],
            "SAME_UPPER" | "SAME_LOWER" => {
                for i in 0..2 {
                    let size = x[2 + i];
                    let out = size.div_ceil(stride[i]);
                    let total = ((out - 1) * stride[i] + extent(i, w[2 + i])).saturating_sub(size) as i64;
                    let (small, big) = (total / 2, total - total / 2);
                    let (b, e) = if auto_pad == "SAME_UPPER" { (small, big) } else { (big, small) };
                    pads[i] = b;
                    pads[i + 2] = e;
                }
            }
            other => return Err(format!("auto_pad {other}")),
        }
        let out_dim = |i: usize| -> Result<usize, String> {
            let padded = x[2 + i] + pads[i] as usize + pads[i + 2] as usize;
            let e = extent(i, w[2 + i]);
            if padded < e {
                return Err("kernel larger than the padded input".into());
            }
            Ok((padded - e) / stride[i] + 1)
        };
        Ok(Geometry {
            n: x[0],
            cin: x[1],
            h: x[2],
            w: x[3],
            cout: w[0],
            group,
            cin_g: w[1],
            cout_g: w[0] / group,
            kh,
            kw,
            stride,
            dilation,
            pad_begin: [pads[0] as usize, pads[1] as usize],
            oh: out_dim(0)?,
            ow: out_dim(1)?,
        })
    }

    /// The geometry of a channels-last convolution, whose input `x` is `[N, H, W, C]`.
    pub(super) fn from_nhwc(attrs: &Attributes, x: &[usize], w: &[usize]) -> Result<Geometry, String> {
        match *x {
            [n, h, wd, c] => Geometry::new(attrs, &[n, c, h, wd], w),
            _ => Err(format!("native convolution is 2-D: input {x:?}, weight {w:?}")),
        }
    }

    pub(super) fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == [1, 1]
            && self.pad_begin == [0, 0]
            && self.oh == self.h
            && self.ow == self.w
    }

    pub(super) fn is_depthwise(&self) -> bool {
        self.group == self.cin && self.cin_g == 1 && self.cout == self.cin
    }
}

/// The output shape of convolution `g` (NCHW), after checking that the fused bias has one
/// value per output channel and the residual the output's shape; the residual's values.
pub(super) fn checked_epilogue<'a>(
    g: &Geometry,
    bias: Option<&[f32]>,
    residual: Option<(&'a [f32], &[usize])>,
) -> Result<(Vec<usize>, Option<&'a [f32]>), String> {
    checked_output(g, vec![g.n, g.cout, g.oh, g.ow], bias, residual)
}

/// [`checked_epilogue`] for a channels-last convolution: the output is `[N, OH, OW, C]`.
pub(super) fn checked_nhwc_epilogue<'a>(
    g: &Geometry,
    bias: Option<&[f32]>,
    residual: Option<(&'a [f32], &[usize])>,
) -> Result<(Vec<usize>, Option<&'a [f32]>), String> {
    checked_output(g, vec![g.n, g.oh, g.ow, g.cout], bias, residual)
}

fn checked_output<'a>(
    g: &Geometry,
    out_shape: Vec<usize>,
    bias: Option<&[f32]>,
    residual: Option<(&'a [f32], &[usize])>,
) -> Result<(Vec<usize>, Option<&'a [f32]>), String> {
    if let Some((_, s)) = residual {
        if s != out_shape.as_slice() {
            return Err(format!("residual of shape {s:?}, output {out_shape:?}"));
        }
    }
    if bias.is_some_and(|b| b.len() != g.cout) {
        return Err(format!("bias needs {} values", g.cout));
    }
    Ok((out_shape, residual.map(|(r, _)| r)))
}
