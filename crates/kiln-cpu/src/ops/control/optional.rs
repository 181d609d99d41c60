//! Optional, OptionalHasElement, OptionalGetElement.

use crate::KernelCtx;
use kiln_ir::{Tensor, Value};

/// Wrap the input (if any) as an optional; without input, an empty optional (its static type
/// comes from the `type` attribute, checked by inference).
pub(super) fn optional(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    Ok(vec![match inputs.first().copied().flatten() {
        None => Value::Optional(None),
        Some(Value::Optional(_)) => return Err("the input of Optional must be a tensor or a sequence".into()),
        Some(v) => Value::Optional(Some(Box::new(v.clone()))),
    }])
}

/// True for a non-empty optional and for a plain tensor or sequence; false for an empty
/// optional or an omitted input.
pub(super) fn optional_has_element(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    let has = match inputs.first().copied().flatten() {
        None => false,
        Some(Value::Optional(v)) => v.is_some(),
        Some(_) => true,
    };
    Ok(vec![Value::Tensor(Tensor::scalar(has))])
}

/// The element of a non-empty optional; a plain tensor or sequence passes through.
pub(super) fn optional_get_element(_ctx: &KernelCtx, inputs: &[Option<&Value>]) -> Result<Vec<Value>, String> {
    match inputs.first().copied().flatten() {
        None => Err("required input 0 is missing".into()),
        Some(Value::Optional(None)) => Err("the optional input is empty".into()),
        Some(Value::Optional(Some(v))) => Ok(vec![(**v).clone()]),
        Some(v) => Ok(vec![v.clone()]),
    }
}
