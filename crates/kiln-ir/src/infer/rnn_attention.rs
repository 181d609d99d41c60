//! Inference rules for the recurrent and attention family: Attention, LinearAttention,
//! FlexAttention, RotaryEmbedding, SwiGLU, RNN, GRU, LSTM.

use super::helpers::unranked;
use super::{InferFn, Known};
use crate::{format_shape, DType, Dim, Shape, TensorType, ValueType};

pub(super) fn rule(op: &str) -> Option<InferFn> {
    Some(match op {
        "Attention" => attention,
        "RNN" | "GRU" | "LSTM" => recurrent,
        "RotaryEmbedding" => rotary_embedding,
        "SwiGLU" => swiglu,
        "LinearAttention" => linear_attention,
        "FlexAttention" => flex_attention,
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
        if let Some(r) = m.rank() {
            if !(1..=4).contains(&r) {
                return Err(format!("attn_mask must have rank 1 to 4, got {r}"));
            }
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
        (
            qs[0].clone(),
            Dim::Known(qh),
            qs[1].clone(),
            Dim::Known(kvh),
            ks[1].clone(),
            div_dim(&qs[2], qh)?,
            div_dim(&vs[2], kvh)?,
        )
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

/// RNN, GRU, LSTM: Y, Y_h and (LSTM) Y_c.
fn recurrent(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = float_input(k, 0, "X")?;
    let w = float_input(k, 1, "W")?;
    let r = float_input(k, 2, "R")?;
    for (t, what) in [(w, "W"), (r, "R")] {
        if t.dtype != x.dtype {
            return Err(format!("{what} must have X's dtype {}, got {}", x.dtype, t.dtype));
        }
        if let Some(rank) = t.rank() {
            if rank != 3 {
                return Err(format!("{what} must be 3-D, got rank {rank}"));
            }
        }
    }
    if let Some(l) = k.opt_tensor(4)? {
        if l.dtype != DType::I32 {
            return Err(format!("sequence_lens must be int32, got {}", l.dtype));
        }
    }
    let layout = k.attrs.int("layout", 0)?;
    if layout != 0 && layout != 1 {
        return Err(format!("layout must be 0 or 1, got {layout}"));
    }
    let dirs = match k.attrs.string("direction", "forward".into())?.as_str() {
        "forward" | "reverse" => 1,
        "bidirectional" => 2,
        other => return Err(format!("unknown direction '{other}'")),
    };
    let hidden = match (k.attrs.int_opt("hidden_size")?, &r.shape) {
        (Some(h), _) if h <= 0 => return Err(format!("hidden_size must be positive, got {h}")),
        (Some(h), _) => Dim::Known(h as usize),
        (None, Some(s)) => s[2].clone(),
        (None, None) => Dim::Unknown,
    };
    let (seq, batch) = match &x.shape {
        Some(s) if s.len() != 3 => return Err(format!("X must be 3-D, got {}", format_shape(s))),
        Some(s) if layout == 0 => (s[0].clone(), s[1].clone()),
        Some(s) => (s[1].clone(), s[0].clone()),
        None => (Dim::Unknown, Dim::Unknown),
    };
    let d = Dim::Known(dirs);
    let (y, state) = if layout == 0 {
        (vec![seq, d.clone(), batch.clone(), hidden.clone()], vec![d, batch, hidden])
    } else {
        (vec![batch.clone(), seq, d.clone(), hidden.clone()], vec![batch, d, hidden])
    };
    let n_out = if k.op == "LSTM" { 3 } else { 2 };
    let mut out = vec![ValueType::tensor(x.dtype, y)];
    out.extend((1..n_out).map(|_| ValueType::tensor(x.dtype, state.clone())));
    Ok(out)
}

/// RotaryEmbedding: Y has X's type.
fn rotary_embedding(k: &Known) -> Result<Vec<ValueType>, String> {
    let x = float_input(k, 0, "X")?;
    for (i, what) in [(1, "cos_cache"), (2, "sin_cache")] {
        let t = k.tensor(i)?;
        if t.dtype != x.dtype {
            return Err(format!("{what} must have X's dtype {}, got {}", x.dtype, t.dtype));
        }
    }
    if let Some(p) = k.opt_tensor(3)? {
        if p.dtype != DType::I64 {
            return Err(format!("position_ids must be int64, got {}", p.dtype));
        }
    }
    match x.rank() {
        Some(3) => {
            let nh = k.attrs.int_opt("num_heads")?.ok_or("3-D input needs the num_heads attribute")?;
            if nh <= 0 {
                return Err(format!("num_heads must be positive, got {nh}"));
            }
            if let Some(Dim::Known(hidden)) = x.shape.as_ref().map(|s| s[2].clone()) {
                div_dim(&Dim::Known(hidden), nh as usize)?;
            }
        }
        Some(r) if r != 3 && r != 4 => return Err(format!("X must be 3-D or 4-D, got rank {r}")),
        _ => {}
    }
    Ok(vec![ValueType::Tensor(x.clone())])
}

/// SwiGLU: A and B of one shape and dtype; Y like A.
fn swiglu(k: &Known) -> Result<Vec<ValueType>, String> {
    let a = float_input(k, 0, "A")?;
    let b = float_input(k, 1, "B")?;
    if a.dtype != b.dtype {
        return Err(format!("A and B must have the same dtype, got {} and {}", a.dtype, b.dtype));
    }
    let shape = match (&a.shape, &b.shape) {
        (Some(x), Some(y)) => {
            if x.len() != y.len() {
                return Err(format!(
                    "A and B must have the same shape, got {} and {}",
                    format_shape(x),
                    format_shape(y)
                ));
            }
            let mut s = Vec::with_capacity(x.len());
            for (dx, dy) in x.iter().zip(y) {
                s.push(match (dx, dy) {
                    (Dim::Known(p), Dim::Known(q)) if p != q => {
                        return Err(format!(
                            "A and B must have the same shape, got {} and {}",
                            format_shape(x),
                            format_shape(y)
                        ))
                    }
                    (Dim::Known(_), _) => dx.clone(),
                    _ => dy.clone(),
                });
            }
            Some(s)
        }
        (Some(x), None) => Some(x.clone()),
        (None, y) => y.clone(),
    };
    Ok(vec![ValueType::Tensor(TensorType { dtype: a.dtype, shape })])
}

/// LinearAttention: output (B, T, Hq·dv) and present_state (B, Hkv, dk, dv).
fn linear_attention(k: &Known) -> Result<Vec<ValueType>, String> {
    let q = float_input(k, 0, "query")?;
    let kk = float_input(k, 1, "key")?;
    let v = float_input(k, 2, "value")?;
    if kk.dtype != q.dtype || v.dtype != q.dtype {
        return Err(format!("query, key and value must share one dtype, got {}, {}, {}", q.dtype, kk.dtype, v.dtype));
    }
    let qh = k.attrs.int_opt("q_num_heads")?.ok_or("the q_num_heads attribute is required")?;
    let kvh = k.attrs.int_opt("kv_num_heads")?.ok_or("the kv_num_heads attribute is required")?;
    if qh <= 0 || kvh <= 0 || qh % kvh != 0 {
        return Err(format!("q_num_heads ({qh}) must be a positive multiple of kv_num_heads ({kvh})"));
    }
    let rule = k.attrs.string("update_rule", "gated_delta".into())?;
    if !matches!(rule.as_str(), "linear" | "gated" | "delta" | "gated_delta") {
        return Err(format!("unknown update_rule '{rule}'"));
    }
    let state_dt = match k.opt_tensor(3)? {
        Some(p) if !is_float(p.dtype) => return Err(format!("past_state must be float, got {}", p.dtype)),
        Some(p) => p.dtype,
        None => q.dtype,
    };
    let (qh, kvh) = (qh as usize, kvh as usize);
    let dims = |t: &TensorType, what: &str| -> Result<Option<Shape>, String> {
        match &t.shape {
            Some(s) if s.len() != 3 => Err(format!("{what} must be 3-D (B, T, H*D), got {}", format_shape(s))),
            s => Ok(s.clone()),
        }
    };
    let (qs, vs) = (dims(q, "query")?, dims(v, "value")?);
    dims(kk, "key")?;
    let (b, t, dk) = match &qs {
        Some(s) => (s[0].clone(), s[1].clone(), div_dim(&s[2], qh)?),
        None => (Dim::Unknown, Dim::Unknown, Dim::Unknown),
    };
    let dv = match &vs {
        Some(s) => div_dim(&s[2], kvh)?,
        None => Dim::Unknown,
    };
    Ok(vec![
        ValueType::tensor(q.dtype, vec![b.clone(), t, mul_dim(&Dim::Known(qh), &dv)]),
        ValueType::tensor(state_dt, vec![b, Dim::Known(kvh), dk, dv]),
    ])
}

/// FlexAttention: rank-4 Q (B, Hq, L, E), K (B, Hkv, S, E), V (B, Hkv, S, Ev) → (B, Hq, L, Ev).
fn flex_attention(k: &Known) -> Result<Vec<ValueType>, String> {
    let q = float_input(k, 0, "Q")?;
    let kk = float_input(k, 1, "K")?;
    let v = float_input(k, 2, "V")?;
    if kk.dtype != q.dtype || v.dtype != q.dtype {
        return Err(format!("Q, K and V must share one dtype, got {}, {}, {}", q.dtype, kk.dtype, v.dtype));
    }
    for (t, what) in [(q, "Q"), (kk, "K"), (v, "V")] {
        if let Some(r) = t.rank() {
            if r != 4 {
                return Err(format!("{what} must be 4-D, got rank {r}"));
            }
        }
    }
    let dim = |t: &TensorType, i: usize| t.shape.as_ref().map_or(Dim::Unknown, |s| s[i].clone());
    Ok(vec![ValueType::tensor(q.dtype, vec![dim(q, 0), dim(q, 1), dim(q, 2), dim(v, 3)])])
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
