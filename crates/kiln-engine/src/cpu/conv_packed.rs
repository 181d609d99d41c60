//! `conv-packed`: a 2-D convolution (f32, NCHW, constant weights, any stride, padding, dilation
//! or group) as kiln's own packed matrix multiply (packed_gemm.rs): per image and group,
//! `out[cout × pixels] = W[cout × K] · patches[K × pixels]`.
//!
//! The weight is packed into row panels once — at build time, stored so in the plan, or when
//! the kernel is made from an unpacked weight — and the patches are written straight into the
//! column panel the register tile reads (for a 1×1 stride-1 convolution a copy of 48-pixel row
//! segments; otherwise im2col of those 48 pixels): no unrolled matrix, no repacking. Bias,
//! residual and ReLU/Clip are applied as each tile is stored.

use super::conv::{checked_epilogue, im2col_panel, phase_columns, phased_row_len, Geometry};
use super::epilogue::{clamp_of, clip};
use super::io::{f32_input, opt_f32_input, own_packed_weight, weight_panels, write_f32_output, OutPtr};
use super::microkernel::{self, TileEpilogue, MR, NR};
use super::packed_gemm::{
    gemm, pack_columns, pack_rows, packed_columns_len, packed_rows_len, panel_width, Epilogue, Operand,
};
use super::sgemm::Mat;
use crate::backend::{LayerDesc, LayerIo, LayerKernel};
use kiln_ir::{Activation, Attributes};
use rayon::prelude::*;

pub const TACTIC: &str = "conv-packed";

/// Whether the tactic can run convolution `g` on this CPU.
pub(super) fn fits(g: &Geometry) -> bool {
    microkernel::available() && !g.is_depthwise() && g.cout_g > 0 && g.cin_g * g.kh * g.kw > 0
}

/// The weight `[cout, cin/group, kh, kw]` packed for `tactic` (row panels of W for
/// [`TACTIC`], column panels of Wᵀ for [`TRANSPOSED`]), group after group.
pub(super) fn pack_weight(tactic: &str, w: &[f32], shape: &[usize], group: usize) -> Result<Vec<f32>, String> {
    let (k, cout_g) = weight_dims(shape, group)?;
    if w.len() != group * cout_g * k {
        return Err(format!("weight of {} values for shape {shape:?}", w.len()));
    }
    let mut out = Vec::with_capacity(packed_len(tactic, shape, group)?);
    for grp in 0..group {
        let wg = &w[grp * cout_g * k..(grp + 1) * cout_g * k];
        if tactic == TRANSPOSED {
            out.extend(pack_columns(Mat::col_major(wg, k), k, cout_g));
        } else {
            out.extend(pack_rows(Mat::row_major(wg, k), cout_g, k));
        }
    }
    Ok(out)
}

/// (K, cout per group) of a weight `[cout, cin/group, kh, kw]`.
fn weight_dims(shape: &[usize], group: usize) -> Result<(usize, usize), String> {
    let [cout, cin_g, kh, kw] = shape else { return Err(format!("weight of shape {shape:?} is not 4-D")) };
    if group == 0 || cout % group != 0 {
        return Err(format!("group {group} does not divide the {cout} output channels"));
    }
    Ok((cin_g * kh * kw, cout / group))
}

/// Values [`pack_weight`] makes for `tactic`.
pub(super) fn packed_len(tactic: &str, shape: &[usize], group: usize) -> Result<usize, String> {
    let (k, cout_g) = weight_dims(shape, group)?;
    Ok(group * if tactic == TRANSPOSED { packed_columns_len(k, cout_g) } else { packed_rows_len(cout_g, k) })
}

pub(crate) struct PackedConvKernel {
    transposed: bool,
    attrs: Attributes,
    activation: Option<Activation>,
    /// The packed weight, when the plan holds the ONNX layout (else the plan's packed bytes
    /// are read in place).
    packed: Option<Vec<f32>>,
    /// Packed values per group.
    group_len: usize,
}

impl PackedConvKernel {
    pub fn new(desc: &LayerDesc, tactic: &str) -> Result<Self, String> {
        let w = desc.weights.get(1).copied().flatten().ok_or("conv-packed needs a constant weight")?;
        let group = desc.layer.attrs.int("group", 1)?.max(1) as usize;
        let len = packed_len(tactic, w.shape, group)?;
        let packed = own_packed_weight(&w, len, |values| pack_weight(tactic, values, w.shape, group))?;
        Ok(PackedConvKernel {
            transposed: tactic == TRANSPOSED,
            attrs: desc.layer.attrs.clone(),
            activation: Activation::from_attrs(&desc.layer.attrs)?,
            packed,
            group_len: len / group,
        })
    }
}

impl LayerKernel for PackedConvKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let (x, x_shape) = f32_input(io, 0)?;
        let (packed, w_shape) = weight_panels(io, 1, self.packed.as_deref())?;
        let bias = opt_f32_input(io, 2)?.map(|(b, _)| b);
        let residual = opt_f32_input(io, 3)?;
        let g = Geometry::new(&self.attrs, x_shape, w_shape)?;
        let (out_shape, residual) = checked_epilogue(&g, bias, residual)?;
        if packed.len() != g.group * self.group_len {
            return Err(format!("packed weight of {} values, expected {}", packed.len(), g.group * self.group_len));
        }
        if !microkernel::available() {
            return Err("conv-packed needs AVX-512".into());
        }
        let act = self.activation;
        let pointwise =
            g.kh == 1 && g.kw == 1 && g.stride == [1, 1] && g.pad_begin == [0, 0] && g.oh * g.ow == g.h * g.w;
        with_phased_input(&g, x, !pointwise, |x, phased| {
            write_f32_output(io, 0, out_shape, |out| {
                if self.transposed {
                    transposed_conv(&g, x, phased, packed, out, bias, residual, act)
                } else {
                    direct_conv(&g, x, phased, pointwise, packed, out, bias, residual, act)
                }
            })
        })
    }
}

/// Run `f` on the input as im2col should read it: column-phased when the convolution has a
/// column stride (and `may_phase`), else as it is. The phased copy lives in a per-thread
/// buffer kept between runs.
fn with_phased_input<R>(g: &Geometry, x: &[f32], may_phase: bool, f: impl FnOnce(&[f32], bool) -> R) -> R {
    if !may_phase || g.stride[1] == 1 {
        return f(x, false);
    }
    let plane = g.h * phased_row_len(g);
    let len = g.n * g.cin * plane;
    let fill = |buf: &mut Vec<f32>| {
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        buf[..len]
            .par_chunks_mut(plane)
            .zip(x.par_chunks(g.h * g.w))
            .for_each(|(dst, src)| phase_columns(g, src, 1, dst));
    };
    PHASED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            fill(&mut buf);
            f(&buf[..len], true)
        }
        // In use by a convolution further up this thread's stack (rayon ran another context's
        // layer here while that one waits): a buffer of its own.
        Err(_) => {
            let mut buf = Vec::new();
            fill(&mut buf);
            f(&buf[..len], true)
        }
    })
}

thread_local! {
    /// The column-phased input of a strided convolution, kept between runs.
    static PHASED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out[cout × pixels] = W · patches` per image and group (`x` column-phased when `phased`).
#[allow(clippy::too_many_arguments)]
fn direct_conv(
    g: &Geometry,
    x: &[f32],
    phased: bool,
    pointwise: bool,
    packed: &[f32],
    out: &mut [f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<Activation>,
) -> Result<(), String> {
    let in_plane = g.h * if phased { phased_row_len(g) } else { g.w };
    let (pixels, k) = (g.oh * g.ow, g.cin_g * g.kh * g.kw);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let units = g.n * g.group;
    // Several images (or groups) and threads: whole products side by side, one per task,
    // rather than each product split across the pool in turn.
    let side_by_side = units >= 2 * rayon::current_num_threads() && rayon::current_num_threads() > 1;
    let one = |u: usize| -> Result<(), String> {
        let (n, grp) = (u / g.group, u % g.group);
        let image = &x[(n * g.cin + grp * g.cin_g) * in_plane..][..g.cin_g * in_plane];
        let fill = |j0: usize, cols: usize, w: usize, panel: &mut [f32]| {
            im2col_panel(g, image, panel, j0, cols, w, phased);
        };
        // A 1×1 stride-1 convolution's patches are the image itself, read in place.
        let b = if pointwise {
            Operand::Matrix(Mat { data: image, row_stride: in_plane, col_stride: 1 })
        } else {
            Operand::Panels(&fill)
        };
        let first = (n * g.cout + grp * g.cout_g) * pixels;
        let epilogue = Epilogue {
            row_bias: bias.map(|b| &b[grp * g.cout_g..(grp + 1) * g.cout_g]),
            residual: residual.map(|r| &r[first..first + g.cout_g * pixels]),
            activation: act,
            ..Default::default()
        };
        let per_group = packed.len() / g.group;
        let a = Operand::Packed(&packed[grp * per_group..(grp + 1) * per_group]);
        // SAFETY: AVX-512 checked by the caller; this (image, group)'s output block is cout_g
        // rows of `pixels`, inside `out` (its shape was checked), written by this unit alone.
        unsafe { gemm(g.cout_g, pixels, k, &a, &b, OutPtr(out_ptr.at(first)), pixels, &epilogue, !side_by_side) }
    };
    if side_by_side {
        (0..units).into_par_iter().try_for_each(one)
    } else {
        (0..units).try_for_each(one)
    }
}

/// `conv-packed-transposed`: the same convolution as `out^T[pixels × cout] = patches^T ·
/// W^T`, pixels in the broadcast operand and output channels in the vectors. Late layers have
/// few pixels per image (49 at 7×7) and many channels: as vector columns 49 pixels fill 64
/// lanes (77 %), as rows they waste nothing, and the rows run on across the images of a batch
/// (a tile may hold pixels of two images). The weight is packed as column panels (K × cout);
/// each tile is written back to the NCHW planes through a small staging block, with the
/// residual and activation applied there.
pub const TRANSPOSED: &str = "conv-packed-transposed";

/// Pixel rows per work unit: enough tiles to amortize a task, few enough for balance.
const PIXEL_CHUNK: usize = 8 * MR;

#[allow(clippy::too_many_arguments)]
fn transposed_conv(
    g: &Geometry,
    x: &[f32],
    phased: bool,
    packed: &[f32],
    out: &mut [f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<Activation>,
) -> Result<(), String> {
    let in_plane = g.h * if phased { phased_row_len(g) } else { g.w };
    let (pixels, k) = (g.oh * g.ow, g.cin_g * g.kh * g.kw);
    let rows_total = g.n * pixels;
    if rows_total == 0 || g.cout_g == 0 {
        return Ok(());
    }
    let col_panels = g.cout_g.div_ceil(NR);
    let panel_at: Vec<usize> = (0..=col_panels).map(|p| (0..p).map(|q| k * panel_width(g.cout_g, q)).sum()).collect();
    let threads = rayon::current_num_threads();
    let row_chunks = rows_total.div_ceil(PIXEL_CHUNK);
    // Split the channels too when there are too few pixel chunks to go round.
    let col_chunks = if threads > 1 { (4 * threads).div_ceil(row_chunks).min(col_panels) } else { 1 };
    let panels_per_chunk = col_panels.div_ceil(col_chunks);
    let col_chunks = col_panels.div_ceil(panels_per_chunk);
    let clamp = clamp_of(act);
    let other_act = act.filter(|_| clamp.is_none());
    let out_ptr = OutPtr(out.as_mut_ptr());
    let unit = |grp: usize, u: usize| {
        let (rc, cc) = (u / col_chunks, u % col_chunks);
        let (r0, r1) = (rc * PIXEL_CHUNK, ((rc + 1) * PIXEL_CHUNK).min(rows_total));
        let (q0, q1) = (cc * panels_per_chunk, ((cc + 1) * panels_per_chunk).min(col_panels));
        let weights = &packed[grp * (packed.len() / g.group)..];
        STAGE.with(|s| {
            let (a_buf, stage) = &mut *s.borrow_mut();
            let len = (r1 - r0).div_ceil(MR) * MR * k;
            if a_buf.len() < len {
                a_buf.resize(len, 0.0);
            }
            // Row panels of patches: 8 pixels per panel, split where an image ends.
            for (pi, panel) in a_buf[..len].chunks_mut(MR * k).enumerate() {
                let i0 = r0 + pi * MR;
                let rows = (r1 - i0).min(MR);
                let mut done = 0;
                while done < rows {
                    let (img, p) = ((i0 + done) / pixels, (i0 + done) % pixels);
                    let take = (rows - done).min(pixels - p);
                    let image = &x[(img * g.cin + grp * g.cin_g) * in_plane..][..g.cin_g * in_plane];
                    im2col_panel(g, image, &mut panel[done..], p, take, MR, phased);
                    done += take;
                }
            }
            for q in q0..q1 {
                let (j0, cols) = (q * NR, (g.cout_g - q * NR).min(NR));
                let b_panel = &weights[panel_at[q]..panel_at[q + 1]];
                let epi = TileEpilogue {
                    row_bias: std::ptr::null(),
                    col_bias: bias.map_or(std::ptr::null(), |b| b[grp * g.cout_g + j0..].as_ptr()),
                    residual: std::ptr::null(),
                    residual_stride: 0,
                    clamp: None,
                    stream: false,
                };
                for i0 in (r0..r1).step_by(MR) {
                    let rows = (r1 - i0).min(MR);
                    let a_panel = &a_buf[(i0 - r0) * k..(i0 - r0 + MR) * k];
                    // SAFETY: AVX-512 checked by the caller; both panels hold k depth steps
                    // and the stage holds MR rows of NR.
                    unsafe {
                        microkernel::tile(
                            k,
                            a_panel.as_ptr(),
                            microkernel::ALayout::Panel,
                            b_panel.as_ptr(),
                            panel_width(g.cout_g, q),
                            stage.as_mut_ptr(),
                            NR,
                            rows,
                            cols,
                            &epi,
                        )
                    };
                    // Back to NCHW: channel j of pixel row r → plane (img, grp·cout_g + j0 + j).
                    for r in 0..rows {
                        let (img, p) = ((i0 + r) / pixels, (i0 + r) % pixels);
                        let base = (img * g.cout + grp * g.cout_g + j0) * pixels + p;
                        for j in 0..cols {
                            let at = base + j * pixels;
                            let mut v = stage[r * NR + j];
                            if let Some(res) = residual {
                                v += res[at];
                            }
                            if let Some((lo, hi)) = clamp {
                                v = clip(v, lo, hi);
                            }
                            // SAFETY: (img, channel, pixel) of this unit's own rows and
                            // channels, inside the output whose shape the caller checked.
                            unsafe { *out_ptr.at(at) = v };
                        }
                    }
                }
            }
        });
    };
    let units = row_chunks * col_chunks;
    for grp in 0..g.group {
        if threads > 1 && units > 1 {
            (0..units).into_par_iter().for_each(|u| unit(grp, u));
        } else {
            (0..units).for_each(|u| unit(grp, u));
        }
    }
    if let Some(a) = other_act {
        super::epilogue::activate(&mut out[..g.n * g.cout * pixels], a);
    }
    Ok(())
}

thread_local! {
    /// Per thread: the unit's packed pixel rows and one staged tile.
    static STAGE: std::cell::RefCell<(Vec<f32>, [f32; MR * NR])> =
        const { std::cell::RefCell::new((Vec::new(), [0.0; MR * NR])) };
}
