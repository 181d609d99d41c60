//! `conv-packed`: a 2-D convolution (f32, NCHW, constant weights, any stride, padding, dilation
//! or group) as kiln's own packed matrix multiply (packed_gemm.rs): per image and group,
//! `out[cout × pixels] = W[cout × K] · patches[K × pixels]`.
//!
//! The weight is packed into row panels once — at build time, stored so in the plan, or when
//! the kernel is made from an unpacked weight — and the patches are written straight into the
//! column panel the register tile reads (for a 1×1 stride-1 convolution a copy of 48-pixel row
//! segments; otherwise im2col of those 48 pixels): no unrolled matrix, no repacking. Bias,
//! residual and ReLU/Clip are applied as each tile is stored.

use super::conv::{checked_epilogue, im2col_panel, Geometry};
use super::io::{f32_input, opt_f32_input, write_f32_output, OutPtr};
use super::microkernel::{self, MR};
use super::packed_gemm::{gemm, pack_rows, Epilogue, Operand};
use super::sgemm::Mat;
use crate::backend::{LayerDesc, LayerIo, LayerKernel};
use kiln_ir::{Activation, Attributes};

pub const TACTIC: &str = "conv-packed";

/// Whether the tactic can run convolution `g` on this CPU.
pub(super) fn fits(g: &Geometry) -> bool {
    microkernel::available() && !g.is_depthwise() && g.cout_g > 0 && g.cin_g * g.kh * g.kw > 0
}

/// The weight `[cout, cin/group, kh, kw]` as row panels, group after group.
pub(super) fn pack_weight(w: &[f32], shape: &[usize], group: usize) -> Result<Vec<f32>, String> {
    let [cout, cin_g, kh, kw] = shape else { return Err(format!("weight of shape {shape:?} is not 4-D")) };
    let (k, cout_g) = (cin_g * kh * kw, cout / group.max(1));
    if w.len() != cout * k || group == 0 || cout % group != 0 {
        return Err(format!("weight of {} values for shape {shape:?} and group {group}", w.len()));
    }
    let mut out = Vec::with_capacity(group * cout_g.div_ceil(MR) * MR * k);
    for grp in 0..group {
        out.extend(pack_rows(Mat::row_major(&w[grp * cout_g * k..(grp + 1) * cout_g * k], k), cout_g, k));
    }
    Ok(out)
}

/// Packed values of one group's weight.
fn group_len(g: &Geometry) -> usize {
    g.cout_g.div_ceil(MR) * MR * g.cin_g * g.kh * g.kw
}

pub(crate) struct PackedConvKernel {
    attrs: Attributes,
    activation: Option<Activation>,
    /// The packed weight, when the plan holds the ONNX layout (else it is read from the plan).
    packed: Option<Vec<f32>>,
}

impl PackedConvKernel {
    pub fn new(desc: &LayerDesc) -> Result<Self, String> {
        let w = desc.weights.get(1).copied().flatten().ok_or("conv-packed needs a constant weight")?;
        let group = desc.layer.attrs.int("group", 1)?.max(1) as usize;
        let packed = {
            let values: &[f32] = bytemuck::try_cast_slice(w.bytes).map_err(|e| format!("weight bytes: {e:?}"))?;
            Some(pack_weight(values, w.shape, group)?)
        };
        Ok(PackedConvKernel {
            attrs: desc.layer.attrs.clone(),
            activation: Activation::from_attrs(&desc.layer.attrs)?,
            packed,
        })
    }
}

impl LayerKernel for PackedConvKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let (x, x_shape) = f32_input(io, 0)?;
        let (w, w_shape) = f32_input(io, 1)?;
        let bias = opt_f32_input(io, 2)?.map(|(b, _)| b);
        let residual = opt_f32_input(io, 3)?;
        let g = Geometry::new(&self.attrs, x_shape, w_shape)?;
        let (out_shape, residual) = checked_epilogue(&g, bias, residual)?;
        let packed: &[f32] = self.packed.as_deref().unwrap_or(w);
        if packed.len() != g.group * group_len(&g) {
            return Err(format!("packed weight of {} values, expected {}", packed.len(), g.group * group_len(&g)));
        }
        if !microkernel::available() {
            return Err("conv-packed needs AVX-512".into());
        }
        let act = self.activation;
        write_f32_output(io, 0, out_shape, |out| {
            let (pixels, in_plane, k) = (g.oh * g.ow, g.h * g.w, g.cin_g * g.kh * g.kw);
            let out_ptr = OutPtr(out.as_mut_ptr());
            for n in 0..g.n {
                for grp in 0..g.group {
                    let image = &x[(n * g.cin + grp * g.cin_g) * in_plane..][..g.cin_g * in_plane];
                    let pointwise =
                        g.kh == 1 && g.kw == 1 && g.stride == [1, 1] && g.pad_begin == [0, 0] && pixels == in_plane;
                    let fill = |j0: usize, cols: usize, w: usize, panel: &mut [f32]| {
                        if pointwise {
                            for (c, dst) in panel.chunks_mut(w).enumerate() {
                                dst[..cols].copy_from_slice(&image[c * in_plane + j0..c * in_plane + j0 + cols]);
                            }
                        } else {
                            im2col_panel(&g, image, panel, j0, cols, w);
                        }
                    };
                    let first = (n * g.cout + grp * g.cout_g) * pixels;
                    let epilogue = Epilogue {
                        row_bias: bias.map(|b| &b[grp * g.cout_g..(grp + 1) * g.cout_g]),
                        residual: residual.map(|r| &r[first..first + g.cout_g * pixels]),
                        activation: act,
                        ..Default::default()
                    };
                    let a = Operand::Packed(&packed[grp * group_len(&g)..(grp + 1) * group_len(&g)]);
                    // SAFETY: AVX-512 checked above; this (image, group)'s output block is
                    // cout_g rows of `pixels`, inside `out` (its shape was checked), and the
                    // calls run one after the other.
                    unsafe {
                        gemm(
                            g.cout_g,
                            pixels,
                            k,
                            &a,
                            &Operand::Panels(&fill),
                            OutPtr(out_ptr.at(first)),
                            pixels,
                            &epilogue,
                            true,
                        )?
                    };
                }
            }
            Ok(())
        })
    }
}
