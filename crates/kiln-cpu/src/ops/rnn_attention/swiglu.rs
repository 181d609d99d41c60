//! SwiGLU: Y = A · sigmoid(alpha · A) · B, element-wise over equal shapes (no broadcasting).

use super::common::{load, store, Real};
use crate::util::tensor_arg;
use crate::KernelCtx;
use kiln_ir::{DType, Value};

pub(super) fn swiglu(ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let a_t = tensor_arg(inputs, 0)?;
    let b_t = tensor_arg(inputs, 1)?;
    if a_t.shape() != b_t.shape() || a_t.dtype() != b_t.dtype() {
        return Err(format!(
            "A and B must have the same shape and dtype, got {}{:?} and {}{:?}",
            a_t.dtype(),
            a_t.shape(),
            b_t.dtype(),
            b_t.shape()
        ));
    }
    let alpha = ctx.attrs.float("alpha", 1.0)? as f64;
    match a_t.dtype() {
        DType::F64 => run::<f64>(a_t, b_t, alpha),
        DType::F32 | DType::F16 | DType::BF16 => run::<f32>(a_t, b_t, alpha),
        other => Err(format!("SwiGLU does not support {other} inputs")),
    }
}

fn run<F: Real>(a_t: &kiln_ir::Tensor, b_t: &kiln_ir::Tensor, alpha: f64) -> Result<Vec<Value>, String> {
    let dt = a_t.dtype();
    let a = load::<F>(a_t, "A")?;
    let b = load::<F>(b_t, "B")?;
    // Every step rounds to the dtype as the reference (which computes in it) does; for f32
    // and f64 the rounder is the identity.
    let rt = F::rounder(dt);
    let neg_alpha = rt(-F::from_f64(alpha));
    let y: Vec<F> = a
        .iter()
        .zip(&b)
        .map(|(&x, &g)| {
            let e = rt(rt(neg_alpha * x).exp());
            let sig = rt(F::ONE / rt(F::ONE + e));
            rt(rt(x * sig) * g)
        })
        .collect();
    Ok(vec![Value::Tensor(store(dt, a_t.shape().to_vec(), &y)?)])
}
