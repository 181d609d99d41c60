//! The `conv-winograd-2x2-3x3` tactic: Winograd's F(2×2, 3×3) for 3×3 stride-1 convolutions
//! (f32, NCHW, one group, constant weights). Each 2×2 output tile comes from a 4×4 input tile
//! in 16 multiplies per channel pair instead of 36, as 16 matrix products
//! `M_ξ[cout × tiles] = U_ξ[cout × cin] · V_ξ[cin × tiles]` (ξ the 16 transform positions):
//!
//! - weights `U = G g Gᵀ`, transformed once when the kernel is made (the engine's plan keeps
//!   the ONNX weights; the transformed copy lives with the kernel);
//! - input tiles `V = Bᵀ d B` (zero padding read as 0), laid out [cin][ξ][tiles] so each
//!   channel is one task's contiguous chunk and each ξ a strided matrix for the product;
//! - outputs `Y = Aᵀ m A`, then the fused epilogue per output plane.
//!
//! F(2×2, 3×3) keeps the transforms' constants 0, ±1 and ½, so rounding stays at the level of
//! the direct product (larger tiles trade accuracy for speed).

use super::conv::{checked_epilogue, Geometry};
use super::epilogue::{apply, Bias};
use super::io::{f32_input, opt_f32_input, write_f32_output, OutPtr};
use super::sgemm::{sgemm_strided, Mat};
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
    /// `U` as [ξ][cout][cin].
    u: Vec<f32>,
    cout: usize,
    cin: usize,
}

impl WinogradKernel {
    pub fn new(desc: &LayerDesc) -> Result<Self, String> {
        let w = desc.weights.get(1).copied().flatten().ok_or("Winograd needs constant weights")?;
        if w.shape.len() != 4 || w.shape[2] != 3 || w.shape[3] != 3 {
            return Err(format!("Winograd F(2x2, 3x3) needs a 3x3 kernel, weight {:?}", w.shape));
        }
        let g: &[f32] = bytemuck::try_cast_slice(w.bytes).map_err(|e| format!("weight bytes: {e:?}"))?;
        let (cout, cin) = (w.shape[0], w.shape[1]);
        if g.len() != cout * cin * 9 {
            return Err("weight size does not match its shape".into());
        }
        let mut u = vec![0f32; XI * cout * cin];
        for (oc_ic, f) in g.chunks_exact(9).enumerate() {
            for (xi, v) in transform_filter(f).into_iter().enumerate() {
                u[xi * cout * cin + oc_ic] = v;
            }
        }
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

/// `Bᵀ d B` of a 4×4 tile, Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]].
#[inline(always)]
fn transform_input(d: &[[f32; 4]; 4]) -> [[f32; 4]; 4] {
    let bt = |x: [f32; 4]| [x[0] - x[2], x[1] + x[2], x[2] - x[1], x[1] - x[3]];
    let mut t = [[0f32; 4]; 4];
    for j in 0..4 {
        let c = bt([d[0][j], d[1][j], d[2][j], d[3][j]]);
        for i in 0..4 {
            t[i][j] = c[i];
        }
    }
    t.map(bt)
}

/// `Aᵀ m A` of a 4×4 tile, Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]].
#[inline(always)]
fn transform_output(m: &[[f32; 4]; 4]) -> [[f32; 2]; 2] {
    let at = |x: [f32; 4]| [x[0] + x[1] + x[2], x[1] - x[2] - x[3]];
    let mut t = [[0f32; 4]; 2];
    for j in 0..4 {
        let c = at([m[0][j], m[1][j], m[2][j], m[3][j]]);
        t[0][j] = c[0];
        t[1][j] = c[1];
    }
    [at(t[0]), at(t[1])]
}

thread_local! {
    /// The transformed input and the products of one image, kept between runs.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

impl LayerKernel for WinogradKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let (x, x_shape) = f32_input(io, 0)?;
        let (_, w_shape) = f32_input(io, 1)?;
        let bias = opt_f32_input(io, 2)?.map(|(b, _)| b);
        let residual = opt_f32_input(io, 3)?;
        let g = Geometry::new(&self.attrs, x_shape, w_shape)?;
        if !fits(&g) || g.cout != self.cout || g.cin != self.cin {
            return Err(format!("tactic {TACTIC} does not fit this convolution's shape"));
        }
        let (out_shape, residual) = checked_epilogue(&g, bias, residual)?;
        let act = self.activation;
        write_f32_output(io, 0, out_shape, |out| {
            SCRATCH.with(|buf| {
                let (v_buf, m_buf) = &mut *buf.borrow_mut();
                let t = tiles(&g);
                // Grow only: the buffers serve every Winograd layer run on this thread.
                if v_buf.len() < g.cin * XI * t {
                    v_buf.resize(g.cin * XI * t, 0.0);
                }
                if m_buf.len() < g.cout * XI * t {
                    m_buf.resize(g.cout * XI * t, 0.0);
                }
                let (v, m) = (&mut v_buf[..g.cin * XI * t], &mut m_buf[..g.cout * XI * t]);
                let out_plane = g.oh * g.ow;
                for n in 0..g.n {
                    let image = &x[n * g.cin * g.h * g.w..(n + 1) * g.cin * g.h * g.w];
                    v.par_chunks_mut(XI * t)
                        .enumerate()
                        .for_each(|(c, vc)| input_tiles(&g, &image[c * g.h * g.w..(c + 1) * g.h * g.w], vc));
                    let mp = OutPtr(m.as_mut_ptr());
                    let v: &[f32] = v;
                    (0..XI).into_par_iter().try_for_each(|xi| {
                        let u = Mat::row_major(&self.u[xi * g.cout * g.cin..(xi + 1) * g.cout * g.cin], g.cin);
                        let vm = Mat { data: &v[xi * t..], row_stride: XI * t, col_stride: 1 };
                        // SAFETY: this task writes rows c·16t + ξ·t .. + t of `m` (c < cout): its
                        // own ξ's columns, disjoint from the other tasks' and inside `m`.
                        unsafe { sgemm_strided(g.cout, t, g.cin, u, vm, mp.at(xi * t), XI * t, false, false) }
                    })?;
                    let dst = &mut out[n * g.cout * out_plane..(n + 1) * g.cout * out_plane];
                    let res = residual.map(|r| &r[n * g.cout * out_plane..(n + 1) * g.cout * out_plane]);
                    let m: &[f32] = m;
                    dst.par_chunks_mut(out_plane).enumerate().for_each(|(c, plane)| {
                        output_tiles(&g, &m[c * XI * t..(c + 1) * XI * t], plane);
                        let b = bias.map_or(Bias::None, |b| Bias::PerRow(&b[c..c + 1]));
                        apply(plane, out_plane, &b, res.map(|r| &r[c * out_plane..(c + 1) * out_plane]), act);
                    });
                }
                Ok(())
            })
        })
    }
}

/// One channel's input tiles, transformed: `vc[ξ][tile]`.
fn input_tiles(g: &Geometry, plane: &[f32], vc: &mut [f32]) {
    let (tw, t) = (g.ow.div_ceil(2), tiles(g));
    let (pt, pl) = (g.pad_begin[0] as isize, g.pad_begin[1] as isize);
    for th in 0..g.oh.div_ceil(2) {
        for tx in 0..tw {
            let mut d = [[0f32; 4]; 4];
            for (i, row) in d.iter_mut().enumerate() {
                let ih = (2 * th + i) as isize - pt;
                if ih < 0 || ih >= g.h as isize {
                    continue;
                }
                let src = &plane[ih as usize * g.w..(ih as usize + 1) * g.w];
                for (j, e) in row.iter_mut().enumerate() {
                    let iw = (2 * tx + j) as isize - pl;
                    if iw >= 0 && iw < g.w as isize {
                        *e = src[iw as usize];
                    }
                }
            }
            let tile = th * tw + tx;
            for (i, r) in transform_input(&d).iter().enumerate() {
                for (j, &e) in r.iter().enumerate() {
                    vc[(i * 4 + j) * t + tile] = e;
                }
            }
        }
    }
}

/// One output channel's plane from its products `mc[ξ][tile]`.
fn output_tiles(g: &Geometry, mc: &[f32], plane: &mut [f32]) {
    let (tw, t) = (g.ow.div_ceil(2), tiles(g));
    for th in 0..g.oh.div_ceil(2) {
        for tx in 0..tw {
            let tile = th * tw + tx;
            let mut m = [[0f32; 4]; 4];
            for (i, row) in m.iter_mut().enumerate() {
                for (j, e) in row.iter_mut().enumerate() {
                    *e = mc[(i * 4 + j) * t + tile];
                }
            }
            let y = transform_output(&m);
            for (i, r) in y.iter().enumerate() {
                let oh = 2 * th + i;
                if oh >= g.oh {
                    continue;
                }
                for (j, &e) in r.iter().enumerate() {
                    let ow = 2 * tx + j;
                    if ow < g.ow {
                        plane[oh * g.ow + ow] = e;
                    }
                }
            }
        }
    }
}
