//! FlexAttention (ai.onnx.preview): scaled dot-product attention over rank-4 inputs with GQA,
//! whose scores and probabilities may be rewritten by user subgraphs (`score_mod` after QKᵀ,
//! `prob_mod` after the softmax). The subgraphs see the whole (B, Hq, L, S) tensor in the
//! softmax precision (f32 unless given, or f64 for f64 inputs).

use super::common::{gemm_acc, load, numel, store, transpose, Real};
use crate::util::tensor_arg;
use crate::KernelCtx;
use kiln_ir::{DType, Value};

pub(super) fn flex_attention(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let dt = tensor_arg(inputs, 0)?.dtype();
    if !matches!(dt, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
        return Err(format!("FlexAttention does not support {dt} inputs"));
    }
    let compute = match ctx.attrs.int_opt("softmax_precision")? {
        None if dt == DType::F64 => DType::F64,
        None => DType::F32,
        Some(code) => match DType::from_onnx_code(code as i32) {
            Ok(d @ (DType::F32 | DType::F16 | DType::BF16 | DType::F64)) => d,
            _ => return Err(format!("softmax_precision {code} is not a float type (1, 10, 11 or 16)")),
        },
    };
    if dt == DType::F64 || compute == DType::F64 {
        run::<f64>(ctx, inputs, compute)
    } else {
        run::<f32>(ctx, inputs, compute)
    }
}

fn run<F: Real>(ctx: &KernelCtx, inputs: &[Option<&Value>], compute: DType) -> Result<Vec<Value>, String> {
    let q_t = tensor_arg(inputs, 0)?;
    let k_t = tensor_arg(inputs, 1)?;
    let v_t = tensor_arg(inputs, 2)?;
    let dt = q_t.dtype();
    if k_t.dtype() != dt || v_t.dtype() != dt {
        return Err(format!("Q, K and V must share one dtype, got {dt}, {}, {}", k_t.dtype(), v_t.dtype()));
    }
    if q_t.rank() != 4 || k_t.rank() != 4 || v_t.rank() != 4 {
        return Err(format!("Q, K and V must be 4-D, got {:?}, {:?}, {:?}", q_t.shape(), k_t.shape(), v_t.shape()));
    }
    let (qs, ks, vs) = (q_t.shape(), k_t.shape(), v_t.shape());
    let (b, hq, l, e) = (qs[0], qs[1], qs[2], qs[3]);
    let (hkv, s, ev) = (ks[1], ks[2], vs[3]);
    if ks[0] != b || vs[0] != b || ks[3] != e || vs[1] != hkv || vs[2] != s {
        return Err(format!("incompatible shapes Q {qs:?}, K {ks:?}, V {vs:?}"));
    }
    if hkv == 0 || hq % hkv != 0 {
        return Err(format!("q heads ({hq}) must be a multiple of kv heads ({hkv})"));
    }
    let group = hq / hkv;
    let scores_shape = vec![b, hq, l, s];
    numel(&scores_shape)?;

    let rt = F::rounder(dt);
    let rc = F::rounder(compute);
    // √scale is taken in f32 and rounded to the input dtype, as the reference does.
    let scale = match ctx.attrs.float_opt("scale")? {
        Some(x) => x,
        None => (1.0 / (e as f64).sqrt()) as f32,
    };
    let sqrt_scale = rt(F::from_f32(scale.sqrt()));
    let q: Vec<F> = load::<F>(q_t, "Q")?.into_iter().map(|x| rt(x * sqrt_scale)).collect();
    let k: Vec<F> = load::<F>(k_t, "K")?.into_iter().map(|x| rt(x * sqrt_scale)).collect();
    let v: Vec<F> = load::<F>(v_t, "V")?.into_iter().map(rc).collect();

    // Scores (B, Hq, L, S): QKᵀ per head in the input dtype, then cast to the compute dtype.
    let mut scores = vec![F::ZERO; b * hq * l * s];
    for bi in 0..b {
        for kh in 0..hkv {
            let kt = transpose(&k[(bi * hkv + kh) * s * e..][..s * e], s, e);
            for h in kh * group..(kh + 1) * group {
                let bh = bi * hq + h;
                let out = &mut scores[bh * l * s..][..l * s];
                gemm_acc(&q[bh * l * e..][..l * e], &kt, out, l, e, s);
                out.iter_mut().for_each(|x| *x = rc(rt(*x)));
            }
        }
    }
    if let Some(g) = subgraph(ctx, "score_mod")? {
        scores = call_mod(ctx, g, compute, &scores_shape, &scores, "score_mod")?;
    }

    // Softmax over keys, in the compute dtype (no masked-row guard: all -inf gives NaN).
    for row in scores.chunks_mut(s.max(1)) {
        let mut max = F::NEG_INF;
        let mut nan = false;
        for &x in row.iter() {
            nan |= x.is_nan();
            if x > max {
                max = x;
            }
        }
        if nan {
            row.fill(F::from_f64(f64::NAN));
            continue;
        }
        let mut sum = F::ZERO;
        for x in row.iter_mut() {
            *x = rc(rc(*x - max).exp());
            sum += *x;
        }
        let sum = rc(sum);
        row.iter_mut().for_each(|x| *x = rc(*x / sum));
    }
    if let Some(g) = subgraph(ctx, "prob_mod")? {
        scores = call_mod(ctx, g, compute, &scores_shape, &scores, "prob_mod")?;
    }

    // Y = P·V per head, accumulated in the compute dtype, stored in V's dtype.
    let mut y = vec![F::ZERO; b * hq * l * ev];
    for bh in 0..b * hq {
        let kvh = (bh / hq) * hkv + (bh % hq) / group;
        let out = &mut y[bh * l * ev..][..l * ev];
        gemm_acc(&scores[bh * l * s..][..l * s], &v[kvh * s * ev..][..s * ev], out, l, s, ev);
        out.iter_mut().for_each(|x| *x = rc(*x));
    }
    Ok(vec![Value::Tensor(store(dt, vec![b, hq, l, ev], &y)?)])
}

fn subgraph<'a>(ctx: &'a KernelCtx, name: &str) -> Result<Option<&'a kiln_ir::Network>, String> {
    if ctx.attrs.contains(name) {
        Ok(Some(ctx.attrs.graph(name)?.as_ref()))
    } else {
        Ok(None)
    }
}

/// Runs a modifier subgraph on a (B, Hq, L, S) tensor; its output must keep the shape.
fn call_mod<F: Real>(
    ctx: &KernelCtx,
    g: &kiln_ir::Network,
    compute: DType,
    shape: &[usize],
    x: &[F],
    what: &str,
) -> Result<Vec<F>, String> {
    let t = store(compute, shape.to_vec(), x)?;
    let mut outs = ctx.run_subgraph(g, vec![Value::Tensor(t)])?;
    if outs.len() != 1 {
        return Err(format!("{what} must have exactly one output, got {}", outs.len()));
    }
    match outs.pop() {
        Some(Value::Tensor(t)) if t.shape() == shape => load::<F>(&t, what),
        Some(Value::Tensor(t)) => Err(format!("{what} changed the shape {shape:?} to {:?}", t.shape())),
        _ => Err(format!("{what} must return a tensor")),
    }
}
