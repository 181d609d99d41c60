//! Inference rules for the recurrent and attention family: Attention, LinearAttention,
//! FlexAttention, RotaryEmbedding, SwiGLU, RNN, GRU, LSTM.

use super::helpers::unranked;
use super::{InferFn, Known};
use crate::{format_shape, DType, Dim, Shape, TensorType, ValueType};

pub(super) fn rule(op: &str) -> Option<InferFn> {
    Some(match op {
        "Attention" => attention,
        _ => return None,
    })
}

fn attention(k: &Known) -> Result<Vec<ValueType>, String> {
    let q = float_input(k, 0, "Q")?;
    let kk = float_input(k, 1, "K")?;
    let v = float_input(k, 2, "V")?;
    if kk.dtype != q.dtype {
        return Err(format!("K must have Q's dtype {}, got {}", q.dtype, kk.dtype));
    }
    if let Some(m) = k.opt_tensor(3)? {
        if m.dtype != DType::Bool && !is_float(m.dtype) {
            return Err(format!("attn_mask must be bool or float, got {}", m.dtype));
        }
    }
    if k.has_input(4) != k.has_input(5) {
        return Err("past_key and past_value must be given together".into());
    }
    if let Some(n) = k.opt_tensor(6)? {
        if n.dtype != DType::I64 {
            return Err(format!("nonpad_kv_seqlen must be int64, got {}", n.dtype));
        }
        if k.has_input(4) {
            return Err("nonpad_kv_seqlen cannot be combined with past_key/past_value".into());
        }
    }
    let mode = k.attrs.int("qk_matmul_output_mode", 0)?;
    if !(0..=3).contains(&mode) {
        return Err(format!("qk_matmul_output_mode must be 0..3, got {mode}"));
    }
    let past_k = k.opt_tensor(4)?;
    let past_v = k.opt_tensor(5)?;
    let (Some(qs), Some(ks), Some(vs)) = (&q.shape, &kk.shape, &v.shape) else {
        return Ok(vec![unranked(q.dtype), unranked(q.dtype), unranked(v.dtype), unranked(q.dtype)]);
    };
    let rank = qs.len();
    if ks.len() != rank || vs.len() != rank || !(rank == 3 || rank == 4) {
        return Err(format!(
            "Q, K and V must all be 3-D or all 4-D, got {}, {}, {}",
            format_shape(qs),
            format_shape(ks),
            format_shape(vs)
        ));
    }
    // (batch, q heads, q seq, kv heads, kv seq, head size of V) in the 4-D view.
    let (b, hq, sq, hkv, skv, dk, dv) = if rank == 3 {
        let qh = k.attrs.int_opt("q_num_heads")?.ok_or("3-D inputs need the q_num_heads attribute")?;
        let kvh = k.attrs.int_opt("kv_num_heads")?.ok_or("3-D inputs need the kv_num_heads attribute")?;
        if qh <= 0 || kvh <= 0 || qh % kvh != 0 {
            return Err(format!("q_num_heads ({qh}) must be a positive multiple of kv_num_heads ({kvh})"));
        }
        let (qh, kvh) = (qh as usize, kvh as usize);
        (qs[0].clone(), Dim::Known(qh), qs[1].clone(), Dim::Known(kvh), ks[1].clone(), div_dim(&qs[2], qh)?, div_dim(&vs[2], kvh)?)
    } else {
        (qs[0].clone(), qs[1].clone(), qs[2].clone(), ks[1].clone(), ks[2].clone(), qs[3].clone(), vs[3].clone())
    };
    if let (Some(a), Some(bb)) = (hq.known(), hkv.known()) {
        if bb == 0 || a % bb != 0 {
            return Err(format!("q heads ({a}) must be a multiple of kv heads ({bb})"));
        }
    }
    let past_len = match past_k.map(|p| p.shape.as_ref().map(|s| s.get(2).cloned())) {
        None => Some(Dim::Known(0)),
        Some(Some(Some(d))) => Some(d),
        Some(_) => None,
    };
    if let Some(Some(pv)) = past_v.map(|p| p.rank()) {
        if pv != 4 {
            return Err(format!("past_value must be 4-D, got rank {pv}"));
        }
    }
    let total = match (&past_len, skv.known()) {
        (Some(Dim::Known(p)), Some(s)) => Dim::Known(p + s),
        (Some(Dim::Known(0)), _) => skv.clone(),
        _ => Dim::Unknown,
    };
    let y: Shape = if rank == 3 {
        vec![b.clone(), sq.clone(), mul_dim(&hq, &dv)]
    } else {
        vec![b.clone(), hq.clone(), sq.clone(), dv.clone()]
    };
    Ok(vec![
        ValueType::tensor(q.dtype, y),
        ValueType::tensor(q.dtype, vec![b.clone(), hkv.clone(), total.clone(), dk]),
        ValueType::tensor(v.dtype, vec![b.clone(), hkv, total.clone(), dv]),
        ValueType::tensor(q.dtype, vec![b, hq, sq, total]),
    ])
}

fn is_float(dt: DType) -> bool {
    matches!(dt, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
}

/// Input `i`, which must be a float tensor.
fn float_input<'a>(k: &Known<'a>, i: usize, what: &str) -> Result<&'a TensorType, String> {
    let t = k.tensor(i)?;
    if !is_float(t.dtype) {
        return Err(format!("{what} must be a float tensor, got {}", t.dtype));
    }
    Ok(t)
}

/// `d / n` for a dim that must divide evenly.
fn div_dim(d: &Dim, n: usize) -> Result<Dim, String> {
    match d {
        Dim::Known(x) if x % n != 0 => Err(format!("dimension {x} is not divisible by {n}")),
        Dim::Known(x) => Ok(Dim::Known(x / n)),
        _ => Ok(Dim::Unknown),
    }
}

fn mul_dim(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => Dim::Known(x * y),
        _ => Dim::Unknown,
    }
}
