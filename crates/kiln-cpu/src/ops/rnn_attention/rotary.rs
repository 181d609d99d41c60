//! RotaryEmbedding: rotates (a leading `rotary_embedding_dim` part of) each head vector by
//! position-dependent angles, given as cos/sin caches, either in split halves or interleaved
//! pairs. 4-D input is (B, H, S, D); 3-D input is (B, S, H·D) with the `num_heads` attribute.

use super::common::{load, store, Real};
use crate::util::{opt_tensor_arg, tensor_arg};
use crate::KernelCtx;
use kiln_ir::{DType, Value};

pub(super) fn rotary_embedding(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let x_t = tensor_arg(inputs, 0)?;
    let cos_t = tensor_arg(inputs, 1)?;
    let sin_t = tensor_arg(inputs, 2)?;
    let pos_t = opt_tensor_arg(inputs, 3)?;
    let dt = x_t.dtype();
    if !matches!(dt, DType::F32 | DType::F16 | DType::BF16) {
        return Err(format!("RotaryEmbedding does not support {dt} inputs"));
    }
    let interleaved = ctx.attrs.int("interleaved", 0)? != 0;

    // Dims and the strides of the (b, s, h) vectors of length `d` in X's layout.
    let xs = x_t.shape();
    let (b, s, h, d, four_d) = match xs.len() {
        4 => (xs[0], xs[2], xs[1], xs[3], true),
        3 => {
            let nh = ctx.attrs.int_opt("num_heads")?.ok_or("3-D input needs the num_heads attribute")?;
            if nh <= 0 || xs[2] % nh as usize != 0 {
                return Err(format!("hidden size {} is not divisible by num_heads {nh}", xs[2]));
            }
            (xs[0], xs[1], nh as usize, xs[2] / nh as usize, false)
        }
        r => return Err(format!("X must be 3-D or 4-D, got rank {r}")),
    };
    let rot = match ctx.attrs.int("rotary_embedding_dim", 0)? {
        0 if d % 2 != 0 => return Err(format!("the head size {d} must be even to rotate it whole")),
        0 => d,
        r if r < 0 || r as usize > d || r % 2 != 0 => {
            return Err(format!("rotary_embedding_dim {r} must be even and at most the head size {d}"))
        }
        r => r as usize,
    };
    let half = rot / 2;

    // For each (b, s): the row of the caches to use.
    let rows: Vec<usize> = match pos_t {
        Some(p) => {
            if p.shape() != [b, s] {
                return Err(format!("position_ids must be [{b}, {s}], got {:?}", p.shape()));
            }
            if cos_t.rank() != 2 || cos_t.shape()[1] != half {
                return Err(format!("cos_cache must be [max_position, {half}], got {:?}", cos_t.shape()));
            }
            let max = cos_t.shape()[0];
            p.to_i64_vec()
                .into_iter()
                .map(|id| {
                    usize::try_from(id)
                        .ok()
                        .filter(|&i| i < max)
                        .ok_or_else(|| format!("position id {id} is outside [0, {max})"))
                })
                .collect::<Result<_, _>>()?
        }
        None => {
            if cos_t.shape() != [b, s, half] {
                return Err(format!(
                    "without position_ids cos_cache must be [{b}, {s}, {half}], got {:?}",
                    cos_t.shape()
                ));
            }
            (0..b * s).collect()
        }
    };
    if sin_t.shape() != cos_t.shape() {
        return Err(format!("sin_cache {:?} and cos_cache {:?} differ in shape", sin_t.shape(), cos_t.shape()));
    }

    let x = load::<f32>(x_t, "X")?;
    let cos = load::<f32>(cos_t, "cos_cache")?;
    let sin = load::<f32>(sin_t, "sin_cache")?;
    let rt = f32::rounder(dt);
    let mut y = x.clone();
    for bi in 0..b {
        for si in 0..s {
            let row = rows[bi * s + si];
            let (c, sn) = (&cos[row * half..(row + 1) * half], &sin[row * half..(row + 1) * half]);
            for hi in 0..h {
                let off = if four_d { ((bi * h + hi) * s + si) * d } else { ((bi * s + si) * h + hi) * d };
                let xv = &x[off..off + rot];
                let yv = &mut y[off..off + rot];
                // Each product and sum rounds to the dtype, as the reference computes in it.
                for i in 0..half {
                    let (i1, i2) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                    let (x1, x2) = (xv[i1], xv[i2]);
                    yv[i1] = rt(rt(c[i] * x1) - rt(sn[i] * x2));
                    yv[i2] = rt(rt(sn[i] * x1) + rt(c[i] * x2));
                }
            }
        }
    }
    Ok(vec![Value::Tensor(store(dt, xs.to_vec(), &y)?)])
}
