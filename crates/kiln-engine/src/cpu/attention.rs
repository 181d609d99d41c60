//! The `attention-gemm` tactic for ONNX Attention in its common inference form — f32, 3-D packed
//! (`q_num_heads`) or 4-D per-head Q/K/V, optional additive f32 mask, no KV cache, no causal or
//! window rules, no softcap — as two packed products per (batch, head) around a vectorized
//! softmax, reading Q, K and V with strides in place (no split-heads copies) and writing each
//! head straight into its columns of the output. Anything else runs the reference kernel, which
//! this tactic holds, so offering it is never wrong.

use super::io::{f32_input, write_f32_output, OutPtr};
use super::microkernel;
use super::packed_gemm::{self, pack_columns_into, packed_columns_len, Epilogue, Operand};
use super::reference::ReferenceKernel;
use super::sgemm::{sgemm_strided, Mat};
use super::vecmath::softmax_row;
use crate::backend::{Arg, LayerDesc, LayerIo, LayerKernel};
use kiln_ir::{spec, Attributes, DType, ValueType};
use rayon::prelude::*;

pub const TACTIC: &str = "attention-gemm";

/// Calls that took the fast path (tests check the fast path ran, not only the fallback).
#[cfg(test)]
pub(crate) static FAST_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Offered for f32 Attention with one output; the input shapes are checked per run.
pub(crate) fn applies(desc: &LayerDesc) -> bool {
    let l = desc.layer;
    let f32_at =
        |i: usize| matches!(desc.input_types.get(i), Some(Some(ValueType::Tensor(t))) if t.dtype == DType::F32);
    l.op == "Attention"
        && (0..3).all(f32_at)
        && l.outputs.iter().skip(1).all(Option::is_none)
        && l.inputs.iter().skip(4).all(Option::is_none)
}

pub(crate) struct AttentionKernel {
    fallback: ReferenceKernel,
    /// The attributes allow the fast path (per-run shape checks still apply).
    plain: bool,
    q_heads: Option<usize>,
    kv_heads: Option<usize>,
    scale: Option<f32>,
    mask_broadcast: bool,
}

impl AttentionKernel {
    pub fn new(desc: &LayerDesc) -> Result<Self, String> {
        let a: &Attributes = &desc.layer.attrs;
        let heads = |name: &str| -> Result<Option<usize>, String> {
            Ok(a.int_opt(name)?.filter(|&h| h > 0).map(|h| h as usize))
        };
        let plain = a.int("is_causal", 0)? == 0
            && a.float("softcap", 0.0)? == 0.0
            && a.int("left_window_size", -1)? == -1
            && a.int("right_window_size", -1)? == -1
            && a.int_opt("softmax_precision")?.is_none_or(|p| p == 1);
        Ok(AttentionKernel {
            fallback: ReferenceKernel::new(desc.layer)?,
            plain,
            q_heads: heads("q_num_heads")?,
            kv_heads: heads("kv_num_heads")?,
            scale: a.float_opt("scale")?,
            mask_broadcast: a.int(spec::ATTENTION_MASK_BROADCAST_ATTR, 0)? != 0,
        })
    }
}

/// Where one operand's (batch, head) matrix starts and how far apart its rows are.
#[derive(Clone, Copy)]
struct Layout {
    packed: bool,
    heads: usize,
    seq: usize,
    dim: usize,
}

impl Layout {
    fn offset(&self, b: usize, h: usize) -> usize {
        if self.packed {
            b * self.seq * self.heads * self.dim + h * self.dim
        } else {
            (b * self.heads + h) * self.seq * self.dim
        }
    }
    fn row_stride(&self) -> usize {
        if self.packed {
            self.heads * self.dim
        } else {
            self.dim
        }
    }
}

impl AttentionKernel {
    /// The fast path's sizes, or `None` when this call needs the reference kernel.
    fn plan(&self, io: &LayerIo) -> Option<Plan> {
        if !self.plain
            || io.inputs.iter().skip(4).any(Option::is_some)
            || io.outputs.iter().skip(1).any(Option::is_some)
        {
            return None;
        }
        let shape = |i: usize| io.inputs.get(i)?.as_ref()?.shape();
        let (qs, ks, vs) = (shape(0)?, shape(1)?, shape(2)?);
        let (q, k, v) = match (qs.len(), ks.len(), vs.len()) {
            (3, 3, 3) => {
                let (hq, hkv) = (self.q_heads?, self.kv_heads?);
                if qs[2] % hq != 0 || ks[2] % hkv != 0 || vs[2] % hkv != 0 {
                    return None;
                }
                (
                    Layout { packed: true, heads: hq, seq: qs[1], dim: qs[2] / hq },
                    Layout { packed: true, heads: hkv, seq: ks[1], dim: ks[2] / hkv },
                    Layout { packed: true, heads: hkv, seq: vs[1], dim: vs[2] / hkv },
                )
            }
            (4, 4, 4) => (
                Layout { packed: false, heads: qs[1], seq: qs[2], dim: qs[3] },
                Layout { packed: false, heads: ks[1], seq: ks[2], dim: ks[3] },
                Layout { packed: false, heads: vs[1], seq: vs[2], dim: vs[3] },
            ),
            _ => return None,
        };
        let batch = qs[0];
        if ks[0] != batch
            || vs[0] != batch
            || k.dim != q.dim
            || v.heads != k.heads
            || v.seq != k.seq
            || k.heads == 0
            || q.heads % k.heads != 0
        {
            return None;
        }
        let y = Layout { packed: q.packed, heads: q.heads, seq: q.seq, dim: v.dim };
        // The mask, right-aligned against [batch, q heads, q seq, kv seq]: every dim 1 or equal
        // (a last dim of 1 only with Add's broadcasting; ONNX pads a short mask with -inf).
        let mask_strides = match io.inputs.get(3) {
            Some(Some(arg)) => {
                if !matches!(arg, Arg::Bytes { dtype: DType::F32, .. } | Arg::Weight { dtype: DType::F32, .. })
                    && !matches!(arg, Arg::Value(kiln_ir::Value::Tensor(t)) if t.dtype() == DType::F32)
                {
                    return None;
                }
                let ms = arg.shape()?;
                if ms.len() > 4 {
                    return None;
                }
                let full = [batch, q.heads, q.seq, k.seq];
                let mut dims = [1usize; 4];
                dims[4 - ms.len()..].copy_from_slice(ms);
                if dims.iter().zip(&full).any(|(&d, &f)| d != 1 && d != f) || (dims[3] != k.seq && !self.mask_broadcast)
                {
                    return None;
                }
                let mut strides = [0usize; 4];
                let mut s = 1;
                for i in (0..4).rev() {
                    strides[i] = if dims[i] == 1 { 0 } else { s };
                    s *= dims[i];
                }
                Some(strides)
            }
            _ => None,
        };
        let scale = self.scale.unwrap_or(1.0 / (q.dim as f32).sqrt());
        Some(Plan { batch, q, k, v, y, mask_strides, scale })
    }
}

struct Plan {
    batch: usize,
    q: Layout,
    k: Layout,
    v: Layout,
    y: Layout,
    mask_strides: Option<[usize; 4]>,
    scale: f32,
}

impl LayerKernel for AttentionKernel {
    fn run(&self, io: &mut LayerIo<'_>) -> Result<(), String> {
        let Some(p) = self.plan(io) else { return self.fallback.run(io) };
        #[cfg(test)]
        FAST_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (q, _) = f32_input(io, 0)?;
        let (k, _) = f32_input(io, 1)?;
        let (v, _) = f32_input(io, 2)?;
        let mask = match p.mask_strides {
            Some(_) => Some(f32_input(io, 3)?.0),
            None => None,
        };
        let out_shape = if p.y.packed {
            vec![p.batch, p.y.seq, p.y.heads * p.y.dim]
        } else {
            vec![p.batch, p.y.heads, p.y.seq, p.y.dim]
        };
        write_f32_output(io, 0, out_shape, |out| {
            let ptr = OutPtr(out.as_mut_ptr());
            let (sq, skv, group) = (p.q.seq, p.k.seq, p.q.heads / p.k.heads);
            // kiln's packed tile where it runs (Kᵀ packed per head, Q, the scores and V read in
            // place), else the gemm crate.
            let packed = microkernel::available();
            (0..p.batch * p.q.heads).into_par_iter().try_for_each_init(
                || (vec![0f32; sq * skv], vec![0f32; skv], Vec::new()),
                |(scores, mask_row, kt), bh| -> Result<(), String> {
                    let (b, h) = (bh / p.q.heads, bh % p.q.heads);
                    let kh = h / group;
                    let qm = Mat { data: &q[p.q.offset(b, h)..], row_stride: p.q.row_stride(), col_stride: 1 };
                    // Kᵀ: element (d, j) is K[j, d].
                    let km = Mat { data: &k[p.k.offset(b, kh)..], row_stride: 1, col_stride: p.k.row_stride() };
                    if packed {
                        kt.resize(packed_columns_len(p.q.dim, skv), 0.0);
                        pack_columns_into(km, p.q.dim, skv, kt);
                        let scores_out = OutPtr(scores.as_mut_ptr());
                        // SAFETY: AVX-512 checked; `scores` is this task's own sq × skv buffer.
                        unsafe {
                            packed_gemm::gemm(
                                sq,
                                skv,
                                p.q.dim,
                                &Operand::Matrix(qm),
                                &Operand::Packed(kt),
                                scores_out,
                                skv,
                                &Epilogue::default(),
                                false,
                            )?
                        };
                    } else {
                        // SAFETY: `scores` is this task's own sq × skv buffer.
                        unsafe { sgemm_strided(sq, skv, p.q.dim, qm, km, scores.as_mut_ptr(), skv, false, false)? };
                    }
                    for (i, row) in scores.chunks_mut(skv.max(1)).enumerate() {
                        let m = match (mask, p.mask_strides) {
                            (Some(m), Some(st)) => {
                                let at = b * st[0] + h * st[1] + i * st[2];
                                if st[3] == 1 {
                                    Some(&m[at..at + skv])
                                } else {
                                    mask_row.fill(m[at]);
                                    Some(&mask_row[..])
                                }
                            }
                            _ => None,
                        };
                        softmax_row(row, p.scale, m);
                    }
                    let vm = Mat { data: &v[p.v.offset(b, kh)..], row_stride: p.v.row_stride(), col_stride: 1 };
                    // SAFETY: this task writes only head h of batch b: rows y.row_stride() apart,
                    // columns [0, dv) from y.offset(b, h) — disjoint from every other task's, and
                    // inside `out` (batch · q seq · heads · dv elements).
                    if packed {
                        return unsafe {
                            packed_gemm::gemm(
                                sq,
                                p.y.dim,
                                skv,
                                &Operand::Matrix(Mat::row_major(scores, skv)),
                                &Operand::Matrix(vm),
                                OutPtr(ptr.at(p.y.offset(b, h))),
                                p.y.row_stride(),
                                &Epilogue::default(),
                                false,
                            )
                        };
                    }
                    unsafe {
                        sgemm_strided(
                            sq,
                            p.y.dim,
                            skv,
                            Mat::row_major(scores, skv),
                            vm,
                            ptr.at(p.y.offset(b, h)),
                            p.y.row_stride(),
                            false,
                            false,
                        )
                    }
                },
            )
        })
    }
}
