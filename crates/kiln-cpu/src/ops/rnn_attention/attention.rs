//! Attention (latest-opset semantics): scaled dot-product attention over 3-D packed or 4-D
//! per-head inputs, with GQA/MQA, boolean or additive masks (right-aligned broadcasting, last
//! axis padded when shorter than the key sequence), offset-aware causal masking, sliding
//! windows, `nonpad_kv_seqlen` padding, softcap, an internal KV cache (past → present) and the
//! optional `qk_matmul_output` debug output.
//!
//! The computation follows the ONNX reference step by step, including where it rounds to the
//! storage dtype (Q·√scale, K·√scale, QK, softcap, +bias, softmax, probabilities, Y), so f16 and
//! bf16 results match it closely while everything is computed in f32.

use super::common::{gemm_acc, load, merge_heads, numel, split_heads, store, transpose, Real};
use crate::util::{opt_tensor_arg, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{spec, DType, Tensor, TensorData, Value};
use rayon::prelude::*;

pub(super) fn attention(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    match tensor_arg(inputs, 0)?.dtype() {
        DType::F64 => run::<f64>(ctx, inputs),
        DType::F32 | DType::F16 | DType::BF16 => run::<f32>(ctx, inputs),
        other => Err(format!("Attention does not support {other} inputs")),
    }
}

/// Sizes of one Attention call, all inputs brought to (batch, heads, seq, head_size).
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    hq: usize,
    hkv: usize,
    sq: usize,
    /// Past (cached) sequence length.
    sp: usize,
    /// Total key/value sequence length: past + new.
    st: usize,
    dk: usize,
    dv: usize,
}

fn run<F: Real>(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let attrs = ctx.attrs;
    let q_t = tensor_arg(inputs, 0)?;
    let k_t = tensor_arg(inputs, 1)?;
    let v_t = tensor_arg(inputs, 2)?;
    let mask_t = opt_tensor_arg(inputs, 3)?;
    let past_k_t = opt_tensor_arg(inputs, 4)?;
    let past_v_t = opt_tensor_arg(inputs, 5)?;
    let nonpad_t = opt_tensor_arg(inputs, 6)?;
    let dt = q_t.dtype();
    if k_t.dtype() != dt {
        return Err(format!("K must have Q's dtype {dt}, got {}", k_t.dtype()));
    }
    let is_causal = attrs.int("is_causal", 0)? != 0;
    let softcap = attrs.float("softcap", 0.0)?;
    let mode = attrs.int("qk_matmul_output_mode", 0)?;
    if !(0..=3).contains(&mode) {
        return Err(format!("qk_matmul_output_mode must be 0..3, got {mode}"));
    }
    let left = attrs.int("left_window_size", -1)?;
    let right = attrs.int("right_window_size", -1)?;
    if left < -1 || right < -1 {
        return Err(format!("window sizes must be -1 or nonnegative, got left {left}, right {right}"));
    }
    let softmax_dt = match attrs.int_opt("softmax_precision")? {
        None => dt,
        Some(code) => match DType::from_onnx_code(code as i32) {
            Ok(d @ (DType::F32 | DType::F16 | DType::BF16 | DType::F64)) => d,
            _ => return Err(format!("softmax_precision {code} is not a float type (1, 10, 11 or 16)")),
        },
    };
    if past_k_t.is_some() != past_v_t.is_some() {
        return Err("past_key and past_value must be given together".into());
    }
    if nonpad_t.is_some() && past_k_t.is_some() {
        return Err("nonpad_kv_seqlen cannot be combined with past_key/past_value".into());
    }

    // Shapes → (B, H, S, D) dims; 3-D inputs carry heads packed in the last axis.
    let rank = q_t.rank();
    if k_t.rank() != rank || v_t.rank() != rank {
        return Err(format!("Q, K and V must have the same rank, got {rank}, {}, {}", k_t.rank(), v_t.rank()));
    }
    let (qs, ks, vs) = (q_t.shape(), k_t.shape(), v_t.shape());
    let (b, hq, sq, dk, hkv, skv, dv) = match rank {
        3 => {
            let qh = attrs.int_opt("q_num_heads")?.ok_or("3-D inputs need the q_num_heads attribute")?;
            let kvh = attrs.int_opt("kv_num_heads")?.ok_or("3-D inputs need the kv_num_heads attribute")?;
            if qh <= 0 || kvh <= 0 {
                return Err(format!("q_num_heads ({qh}) and kv_num_heads ({kvh}) must be positive"));
            }
            let (qh, kvh) = (qh as usize, kvh as usize);
            if qs[2] % qh != 0 || ks[2] % kvh != 0 || vs[2] % kvh != 0 {
                return Err(format!(
                    "hidden sizes (Q {}, K {}, V {}) must be divisible by the head counts ({qh}, {kvh})",
                    qs[2], ks[2], vs[2]
                ));
            }
            if ks[2] / kvh != qs[2] / qh {
                return Err(format!("Q head size {} differs from K head size {}", qs[2] / qh, ks[2] / kvh));
            }
            (qs[0], qh, qs[1], qs[2] / qh, kvh, ks[1], vs[2] / kvh)
        }
        4 => {
            if ks[3] != qs[3] {
                return Err(format!("Q head size {} differs from K head size {}", qs[3], ks[3]));
            }
            if vs[1] != ks[1] {
                return Err(format!("K has {} heads but V has {}", ks[1], vs[1]));
            }
            (qs[0], qs[1], qs[2], qs[3], ks[1], ks[2], vs[3])
        }
        _ => return Err(format!("Q, K and V must be 3-D or 4-D, got rank {rank}")),
    };
    if ks[0] != b || vs[0] != b {
        return Err(format!("batch sizes differ: Q {b}, K {}, V {}", ks[0], vs[0]));
    }
    if vs[rank - 2] != skv {
        return Err(format!("K has sequence length {skv} but V has {}", vs[rank - 2]));
    }
    if hkv == 0 || hq % hkv != 0 {
        return Err(format!("q heads ({hq}) must be a multiple of kv heads ({hkv})"));
    }
    let sp = match (past_k_t, past_v_t) {
        (Some(pk), Some(pv)) => {
            let sp = pk.shape().get(2).copied().unwrap_or(0);
            if pk.shape() != [b, hkv, sp, dk] {
                return Err(format!("past_key must be [{b}, {hkv}, past_len, {dk}], got {:?}", pk.shape()));
            }
            if pv.shape() != [b, hkv, sp, dv] {
                return Err(format!("past_value must be [{b}, {hkv}, {sp}, {dv}], got {:?}", pv.shape()));
            }
            sp
        }
        _ => 0,
    };
    let d = Dims { b, hq, hkv, sq, sp, st: sp + skv, dk, dv };
    let nonpad: Option<Vec<i64>> = match nonpad_t {
        None => None,
        Some(t) => {
            if t.dtype() != DType::I64 || t.shape() != [b] {
                return Err(format!("nonpad_kv_seqlen must be int64 [{b}], got {}{:?}", t.dtype(), t.shape()));
            }
            Some(t.to_i64_vec())
        }
    };
    numel(&[b, hq, sq, d.st])?;
    numel(&[b, hq, sq, dv])?;

    // Bring Q, K, V (and the cache) to (B, H, S, D) in the compute type.
    let to_bhsd = |t: &Tensor, h: usize, s: usize, hd: usize, what: &str| -> Result<Vec<F>, String> {
        let v = load::<F>(t, what)?;
        Ok(if rank == 3 { split_heads(&v, b, s, h, hd) } else { v })
    };
    let q = to_bhsd(q_t, hq, sq, dk, "Q")?;
    let k = to_bhsd(k_t, hkv, skv, dk, "K")?;
    let v = to_bhsd(v_t, hkv, skv, dv, "V")?;
    let present_k = concat_cache(past_k_t.map(|t| load::<F>(t, "past_key")).transpose()?, &k, d, dk);
    let present_v = concat_cache(past_v_t.map(|t| load::<F>(t, "past_value")).transpose()?, &v, d, dv);

    let broadcast_keys = attrs.int(spec::ATTENTION_MASK_BROADCAST_ATTR, 0)? != 0;
    let mask = mask_t.map(|t| Mask::new(t, d, broadcast_keys)).transpose()?;
    let rules = Rules { causal: is_causal, left, right, past: past_k_t.is_some(), nonpad };

    // Q and K are each scaled by √scale (rounded to T), as the spec prescribes against overflow.
    let rt = F::rounder(dt);
    let rp = F::rounder(softmax_dt);
    // numpy sums f16 in f32 and rounds once, but reduces bf16 (an ml_dtypes type) one
    // rounded add at a time.
    let rsum = if softmax_dt == DType::BF16 { rp } else { |x| x };
    let scale = match attrs.float_opt("scale")? {
        Some(s) => s as f64,
        None => 1.0 / (dk as f64).sqrt(),
    };
    let sqrt_scale = rt(F::from_f64(scale.sqrt()));
    let q: Vec<F> = q.iter().map(|&x| rt(x * sqrt_scale)).collect();
    // Scaled K, transposed per head to (D, S) so QKᵀ is an i-k-j GEMM over contiguous rows.
    let mut kt = Vec::with_capacity(present_k.len());
    for blk in present_k.chunks((d.st * dk).max(1)) {
        let scaled: Vec<F> = blk.iter().map(|&x| rt(x * sqrt_scale)).collect();
        kt.extend(transpose(&scaled, d.st, dk));
    }

    let step =
        Step { d, q: &q, kt: &kt, v: &present_v, mask: mask.as_ref(), rules: &rules, softcap, mode, rt, rp, rsum };
    let mut y = vec![F::ZERO; b * hq * sq * dv];
    let want_qk = ctx.num_outputs >= 4;
    let mut qk = if want_qk { vec![F::ZERO; b * hq * sq * d.st] } else { Vec::new() };
    // One task per (batch, query head); chunk sizes are kept nonzero for empty dims.
    let (yc, qc) = ((sq * dv).max(1), (sq * d.st).max(1));
    if want_qk && !y.is_empty() {
        y.par_chunks_mut(yc)
            .zip(qk.par_chunks_mut(qc))
            .enumerate()
            .for_each(|(bh, (yc, qc))| step.head(bh, yc, Some(qc)));
    } else if want_qk {
        // Dv = 0: Y is empty but the scores still are not.
        qk.par_chunks_mut(qc).enumerate().for_each(|(bh, qc)| step.head(bh, &mut [], Some(qc)));
    } else {
        y.par_chunks_mut(yc).enumerate().for_each(|(bh, yc)| step.head(bh, yc, None));
    }

    let y = if rank == 3 {
        store(dt, vec![b, sq, hq * dv], &merge_heads(&y, b, hq, sq, dv))?
    } else {
        store(dt, vec![b, hq, sq, dv], &y)?
    };
    let mut out = vec![Value::Tensor(y)];
    if ctx.num_outputs > 1 {
        out.push(Value::Tensor(store(dt, vec![b, hkv, d.st, dk], &present_k)?));
    }
    if ctx.num_outputs > 2 {
        out.push(Value::Tensor(store(v_t.dtype(), vec![b, hkv, d.st, dv], &present_v)?));
    }
    if want_qk {
        out.push(Value::Tensor(store(dt, vec![b, hq, sq, d.st], &qk)?));
    }
    Ok(out)
}

/// past (B, H, Sp, D) ++ new (B, H, S, D) along the sequence axis.
fn concat_cache<F: Real>(past: Option<Vec<F>>, new: &[F], d: Dims, hd: usize) -> Vec<F> {
    let Some(past) = past else { return new.to_vec() };
    let (pl, nl) = (d.sp * hd, (d.st - d.sp) * hd);
    let mut out = Vec::with_capacity(past.len() + new.len());
    for i in 0..d.b * d.hkv {
        out.extend_from_slice(&past[i * pl..(i + 1) * pl]);
        out.extend_from_slice(&new[i * nl..(i + 1) * nl]);
    }
    out
}

/// Which keys each query may see, besides the mask: causal frontier, sliding window and the
/// `nonpad_kv_seqlen` padding. Each disallowed key adds -inf to the bias.
struct Rules {
    causal: bool,
    left: i64,
    right: i64,
    past: bool,
    nonpad: Option<Vec<i64>>,
}

impl Rules {
    /// The count of valid keys preceding the query block: past length for an internal cache,
    /// nonpad_kv_seqlen - q_len for an external one (may be negative), else 0.
    fn offset(&self, d: &Dims, b: usize) -> i64 {
        match (&self.nonpad, self.past) {
            (_, true) => d.sp as i64,
            (Some(n), false) => n[b] - d.sq as i64,
            (None, false) => 0,
        }
    }

    fn allowed(&self, off: i64, valid: i64, i: usize, j: usize) -> bool {
        let (p, j) = (i as i64 + off, j as i64);
        let diff = p - j;
        !(self.causal && j > p
            || self.left >= 0 && diff > self.left
            || self.right >= 0 && -diff > self.right
            || j >= valid)
    }
}

/// The attention mask with per-axis strides into its data for (B, Hq, Sq, L), 0 on broadcast
/// axes; keys at or past L (the mask's own last dim) are masked out as the spec's padding.
/// Under [`spec::ATTENTION_MASK_BROADCAST_ATTR`] a last dim of 1 is broadcast over every key
/// instead (`key_broadcast`), as an `Add` of the mask to the scores does.
struct Mask<F> {
    data: MaskData<F>,
    strides: [usize; 4],
    len: usize,
    key_broadcast: bool,
}

enum MaskData<F> {
    Bool(Vec<bool>),
    Float(Vec<F>),
}

impl<F: Real> Mask<F> {
    fn new(t: &Tensor, d: Dims, broadcast_keys: bool) -> Result<Self, String> {
        let shape = t.shape();
        if shape.is_empty() || shape.len() > 4 {
            return Err(format!("attn_mask must have rank 1 to 4, got shape {shape:?}"));
        }
        let full = [d.b, d.hq, d.sq];
        let mut dims = [1usize; 4];
        dims[4 - shape.len()..].copy_from_slice(shape);
        for ax in 0..3 {
            if dims[ax] != 1 && dims[ax] != full[ax] {
                return Err(format!(
                    "attn_mask shape {shape:?} does not broadcast to [{}, {}, {}, {}]",
                    d.b, d.hq, d.sq, d.st
                ));
            }
        }
        if dims[3] > d.st {
            return Err(format!("attn_mask's last dim {} exceeds the key sequence length {}", dims[3], d.st));
        }
        if broadcast_keys && dims[3] != d.st && dims[3] != 1 {
            return Err(format!("attn_mask's last dim {} is neither 1 nor the key sequence length {}", dims[3], d.st));
        }
        let mut strides = [0usize; 4];
        let mut acc = 1;
        for ax in (0..4).rev() {
            strides[ax] = if dims[ax] == 1 && ax < 3 { 0 } else { acc };
            acc *= dims[ax];
        }
        let data = match t.data() {
            TensorData::Bool(v) => MaskData::Bool(v.clone()),
            _ => MaskData::Float(load::<F>(t, "attn_mask")?),
        };
        let key_broadcast = broadcast_keys && dims[3] == 1;
        Ok(Mask { data, strides, len: dims[3], key_broadcast })
    }

    /// Additive mask values of row (b, h, i) for keys 0..out.len().
    fn row(&self, b: usize, h: usize, i: usize, out: &mut [F]) {
        let base = b * self.strides[0] + h * self.strides[1] + i * self.strides[2];
        if self.key_broadcast {
            let v = match &self.data {
                MaskData::Bool(v) => {
                    if v[base] {
                        F::ZERO
                    } else {
                        F::NEG_INF
                    }
                }
                MaskData::Float(v) => v[base],
            };
            out.fill(v);
            return;
        }
        let n = self.len.min(out.len());
        match &self.data {
            MaskData::Bool(v) => {
                for (o, &m) in out[..n].iter_mut().zip(&v[base..base + n]) {
                    *o = if m { F::ZERO } else { F::NEG_INF };
                }
            }
            MaskData::Float(v) => out[..n].copy_from_slice(&v[base..base + n]),
        }
        out[n..].fill(F::NEG_INF);
    }
}

/// Everything one (batch, head) task reads.
struct Step<'a, F> {
    d: Dims,
    /// Scaled Q, (B, Hq, Sq, Dk).
    q: &'a [F],
    /// Scaled present K, transposed per head: (B, Hkv, Dk, St).
    kt: &'a [F],
    /// Present V, (B, Hkv, St, Dv).
    v: &'a [F],
    mask: Option<&'a Mask<F>>,
    rules: &'a Rules,
    softcap: f32,
    mode: i64,
    /// Rounding to the output dtype and to the softmax precision.
    rt: fn(F) -> F,
    rp: fn(F) -> F,
    /// Rounding after each add of the softmax denominator.
    rsum: fn(F) -> F,
}

impl<F: Real> Step<'_, F> {
    /// Attention for query head `bh` = b·Hq + h: fills its Y rows (Sq × Dv) and, when asked,
    /// its qk_matmul_output rows (Sq × St).
    fn head(&self, bh: usize, y: &mut [F], mut qk_out: Option<&mut [F]>) {
        let Dims { hq, hkv, sq, st, dk, dv, .. } = self.d;
        let (b, h) = (bh / hq, bh % hq);
        // GQA: consecutive query heads share one kv head (numpy.repeat order).
        let kvh = b * hkv + h / (hq / hkv);
        let q = &self.q[bh * sq * dk..(bh + 1) * sq * dk];
        let kt = &self.kt[kvh * dk * st..(kvh + 1) * dk * st];
        let v = &self.v[kvh * st * dv..(kvh + 1) * st * dv];
        let (rt, rp) = (self.rt, self.rp);

        let mut scores = vec![F::ZERO; sq * st];
        gemm_acc(q, kt, &mut scores, sq, dk, st);
        let cap = F::from_f64(self.softcap as f64);
        let off = self.rules.offset(&self.d, b);
        let valid = self.rules.nonpad.as_ref().map_or(i64::MAX, |n| n[b]);
        let mut bias = vec![F::ZERO; st];
        let mut probs = vec![F::ZERO; st];
        for i in 0..sq {
            let row = &mut scores[i * st..(i + 1) * st];
            let mut capture = |stage: i64, vals: &[F]| {
                if let Some(out) = qk_out.as_deref_mut() {
                    if stage == self.mode {
                        out[i * st..(i + 1) * st].copy_from_slice(vals);
                    }
                }
            };
            row.iter_mut().for_each(|x| *x = rt(*x));
            capture(0, row);
            if self.softcap > 0.0 {
                row.iter_mut().for_each(|x| *x = rt(rt(rt(*x / cap).tanh()) * cap));
            }
            capture(1, row);

            match self.mask {
                Some(m) => m.row(b, h, i, &mut bias),
                None => bias.fill(F::ZERO),
            }
            for (j, x) in bias.iter_mut().enumerate() {
                if !self.rules.allowed(off, valid, i, j) {
                    *x += F::NEG_INF;
                }
            }
            // A row whose bias is -inf everywhere has no attendable key: its probabilities are
            // zero (not NaN), decided on the bias rather than on possibly non-finite logits.
            let fully_masked = bias.iter().all(|&x| x == F::NEG_INF);
            for (x, &bv) in row.iter_mut().zip(&bias) {
                *x = rt(*x + bv);
            }
            capture(2, row);

            softmax(row, &mut probs, rp, self.rsum);
            if fully_masked {
                probs.fill(F::ZERO);
            }
            probs.iter_mut().for_each(|p| *p = rt(*p));
            capture(3, &probs);

            // Y row = probs · V, an axpy per key over contiguous V rows.
            let yrow = &mut y[i * dv..(i + 1) * dv];
            for (j, &p) in probs.iter().enumerate() {
                for (o, &vv) in yrow.iter_mut().zip(&v[j * dv..(j + 1) * dv]) {
                    *o += p * vv;
                }
            }
            yrow.iter_mut().for_each(|x| *x = rt(*x));
        }
    }
}

/// Softmax of one row in the precision `rp` rounds to, as the reference computes it: an
/// all -inf row gives zeros; NaN anywhere makes the whole row NaN (numpy's max propagates it).
fn softmax<F: Real>(x: &[F], out: &mut [F], rp: fn(F) -> F, rsum: fn(F) -> F) {
    let mut max = F::NEG_INF;
    for &v in x {
        let v = rp(v);
        if v.is_nan() {
            out.fill(F::from_f64(f64::NAN));
            return;
        }
        if v > max {
            max = v;
        }
    }
    let shift = if max == F::NEG_INF { F::ZERO } else { max };
    let mut sum = F::ZERO;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = rp(rp(rp(v) - shift).exp());
        sum = rsum(sum + *o);
    }
    let sum = rp(sum);
    let sum = if sum == F::ZERO { F::ONE } else { sum };
    out.iter_mut().for_each(|o| *o = rp(*o / sum));
}
