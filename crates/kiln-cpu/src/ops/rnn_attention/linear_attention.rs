//! LinearAttention: the recurrent (state-space) form of linear attention. Per kv head a state
//! S (d_k × d_v) is updated each step by one of four rules and read by the query heads of its
//! group:
//!
//! - gating (`gated`, `gated_delta`): S ← S · exp(g_t) with g per head or per key dim;
//! - delta correction (`delta`, `gated_delta`): v_t ← β_t (v_t − Sᵀ k_t);
//! - write: S ← S + k_t ⊗ v_t;  read: o_t = scale · q_tᵀ S.
//!
//! The recurrence is computed in f32 whatever the input dtype, as the reference does.

use super::common::{load, split_heads, store};
use crate::util::{opt_tensor_arg, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{DType, Value};

pub(super) fn linear_attention(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let attrs = ctx.attrs;
    let q_t = tensor_arg(inputs, 0)?;
    let k_t = tensor_arg(inputs, 1)?;
    let v_t = tensor_arg(inputs, 2)?;
    let past_t = opt_tensor_arg(inputs, 3)?;
    let decay_t = opt_tensor_arg(inputs, 4)?;
    let beta_t = opt_tensor_arg(inputs, 5)?;
    let dt = q_t.dtype();
    if !matches!(dt, DType::F32 | DType::F16 | DType::BF16) {
        return Err(format!("LinearAttention does not support {dt} inputs"));
    }

    let rule = attrs.string("update_rule", "gated_delta".into())?;
    let (gating, delta) = match rule.as_str() {
        "linear" => (false, false),
        "gated" => (true, false),
        "delta" => (false, true),
        "gated_delta" => (true, true),
        other => return Err(format!("unknown update_rule '{other}'")),
    };
    if gating != decay_t.is_some() {
        return Err(format!("update_rule '{rule}' {} the decay input", if gating { "requires" } else { "forbids" }));
    }
    if delta != beta_t.is_some() {
        return Err(format!("update_rule '{rule}' {} the beta input", if delta { "requires" } else { "forbids" }));
    }
    let hq = attrs.int_opt("q_num_heads")?.ok_or("the q_num_heads attribute is required")?;
    let hkv = attrs.int_opt("kv_num_heads")?.ok_or("the kv_num_heads attribute is required")?;
    if hq <= 0 || hkv <= 0 || hq % hkv != 0 {
        return Err(format!("q_num_heads ({hq}) must be a positive multiple of kv_num_heads ({hkv})"));
    }
    let (hq, hkv) = (hq as usize, hkv as usize);
    let group = hq / hkv;

    for (t, what) in [(q_t, "query"), (k_t, "key"), (v_t, "value")] {
        if t.rank() != 3 {
            return Err(format!("{what} must be 3-D (B, T, H*D), got {:?}", t.shape()));
        }
    }
    let (b, t, qhid) = (q_t.shape()[0], q_t.shape()[1], q_t.shape()[2]);
    if qhid % hq != 0 || v_t.shape()[2] % hkv != 0 {
        return Err(format!("query/value hidden sizes must be divisible by the head counts ({hq}, {hkv})"));
    }
    let dk = qhid / hq;
    let dv = v_t.shape()[2] / hkv;
    if k_t.shape() != [b, t, hkv * dk] {
        return Err(format!("key must be [{b}, {t}, {}], got {:?}", hkv * dk, k_t.shape()));
    }
    if v_t.shape()[..2] != [b, t] {
        return Err(format!("value must be [{b}, {t}, _], got {:?}", v_t.shape()));
    }

    let q = split_heads(&load::<f32>(q_t, "query")?, b, t, hq, dk);
    let k = split_heads(&load::<f32>(k_t, "key")?, b, t, hkv, dk);
    let v = split_heads(&load::<f32>(v_t, "value")?, b, t, hkv, dv);
    // Decay as (B, Hkv, T, gw) with gw = 1 (per head) or d_k (per key dim).
    let (decay, gw) = match decay_t {
        None => (Vec::new(), 0),
        Some(g) => {
            let last = g.shape().last().copied().unwrap_or(0);
            let gw = if last == hkv { 1 } else { dk };
            if g.shape() != [b, t, hkv * gw] {
                return Err(format!(
                    "decay must be [{b}, {t}, {hkv}] or [{b}, {t}, {}], got {:?}",
                    hkv * dk,
                    g.shape()
                ));
            }
            (split_heads(&load::<f32>(g, "decay")?, b, t, hkv, gw), gw)
        }
    };
    // Beta as (B, Hb, T) with Hb = Hkv or 1 (shared by all heads).
    let (beta, hb) = match beta_t {
        None => (Vec::new(), 0),
        Some(bt) => {
            let last = bt.shape().last().copied().unwrap_or(0);
            if bt.shape() != [b, t, last] || !(last == hkv || last == 1) {
                return Err(format!("beta must be [{b}, {t}, {hkv}] or [{b}, {t}, 1], got {:?}", bt.shape()));
            }
            (split_heads(&load::<f32>(bt, "beta")?, b, t, last, 1), last)
        }
    };
    let state_shape = vec![b, hkv, dk, dv];
    let (mut state, state_dt) = match past_t {
        Some(p) => {
            if p.shape() != state_shape.as_slice() {
                return Err(format!("past_state must be {state_shape:?}, got {:?}", p.shape()));
            }
            (load::<f32>(p, "past_state")?, p.dtype())
        }
        None => (vec![0.0f32; b * hkv * dk * dv], dt),
    };
    let scale = match attrs.float("scale", 0.0)? {
        0.0 => 1.0 / (dk as f32).sqrt(),
        s => s,
    };

    // Output as (B, T, Hq, dv), i.e. already in the packed layout.
    let mut out = vec![0.0f32; b * t * hq * dv];
    let mut vt = vec![0.0f32; dv];
    let mut retrieved = vec![0.0f32; dv];
    // Empty heads (d_k or d_v = 0) leave nothing to compute: the outputs are empty or zero.
    let heads = if dk == 0 || dv == 0 { 0 } else { hkv };
    for bi in 0..b {
        for h in 0..heads {
            let s = &mut state[(bi * hkv + h) * dk * dv..][..dk * dv];
            for ti in 0..t {
                let kt = &k[((bi * hkv + h) * t + ti) * dk..][..dk];
                vt.copy_from_slice(&v[((bi * hkv + h) * t + ti) * dv..][..dv]);
                if gating {
                    let g = &decay[((bi * hkv + h) * t + ti) * gw..][..gw];
                    for (dd, srow) in s.chunks_mut(dv).enumerate() {
                        let f = g[if gw == 1 { 0 } else { dd }].exp();
                        srow.iter_mut().for_each(|x| *x *= f);
                    }
                }
                if delta {
                    let bt = beta[(bi * hb + if hb == 1 { 0 } else { h }) * t + ti];
                    // retrieved = Sᵀ k, accumulated row by row over contiguous state rows.
                    retrieved.fill(0.0);
                    for (dd, srow) in s.chunks(dv).enumerate() {
                        for (r, &x) in retrieved.iter_mut().zip(srow) {
                            *r += kt[dd] * x;
                        }
                    }
                    for (x, r) in vt.iter_mut().zip(&retrieved) {
                        *x = bt * (*x - r);
                    }
                }
                for (dd, srow) in s.chunks_mut(dv).enumerate() {
                    for (x, &vv) in srow.iter_mut().zip(&vt) {
                        *x += kt[dd] * vv;
                    }
                }
                // Read for each query head of this kv head's group.
                for hh in h * group..(h + 1) * group {
                    let qt = &q[((bi * hq + hh) * t + ti) * dk..][..dk];
                    let o = &mut out[((bi * t + ti) * hq + hh) * dv..][..dv];
                    for (dd, srow) in s.chunks(dv).enumerate() {
                        for (x, &sv) in o.iter_mut().zip(srow) {
                            *x += qt[dd] * sv;
                        }
                    }
                    o.iter_mut().for_each(|x| *x *= scale);
                }
            }
        }
    }
    let mut res = vec![Value::Tensor(store(dt, vec![b, t, hq * dv], &out)?)];
    if ctx.num_outputs > 1 {
        res.push(Value::Tensor(store(state_dt, state_shape, &state)?));
    }
    Ok(res)
}
