//! Importers for element-wise ops whose ONNX form changed between opsets; each rewrites the old
//! form into the latest one. Ops not listed here are imported unchanged.
//!
//! - Clip < 11: `min`/`max` attributes → constant inputs of the input's dtype.
//! - Dropout < 12: `ratio`/`is_test` attributes dropped (inference never drops); before opset
//!   10 the mask output had the input's float dtype, so a Cast restores it.
//! - Cast < 6: `to` was a type name string → the numeric data type code.
//! - Add/Sub/Mul/Div/Pow/And/Or/Xor/Equal/Less/Greater < 7: the legacy `broadcast`/`axis`
//!   attributes. With `axis`, B's dims align with A's starting at `axis` rather than at the
//!   end, so B gets trailing 1-dims (a reshaped constant, or an Unsqueeze layer).

use super::{ImportError, ImporterFn, NodeImport};
use kiln_ir::{bf16, f16, Attributes, DType, Tensor, TensorId, ValueType};

pub(super) fn importer(op: &str, opset: i64) -> Option<ImporterFn> {
    match op {
        "Clip" if opset < 11 => Some(clip_attrs),
        "Dropout" if opset < 12 => Some(dropout_old),
        "Cast" if opset < 6 => Some(cast_string_to),
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "And" | "Or" | "Xor" | "Equal" | "Less" | "Greater" if opset < 7 => {
            Some(legacy_broadcast)
        }
        _ => None,
    }
}

fn clip_attrs(n: &mut NodeImport) -> Result<(), ImportError> {
    let mut attrs = std::mem::take(&mut n.attrs);
    let min = attrs.float_opt("min")?;
    let max = attrs.float_opt("max")?;
    for name in ["min", "max", "consumed_inputs"] {
        attrs.remove(name);
    }
    let x = n.inputs.first().copied().flatten().ok_or_else(|| ImportError::Invalid("Clip needs an input".into()))?;
    let dtype = tensor_dtype(n, x)?;
    let mut inputs = vec![Some(x), None, None];
    for (slot, (suffix, v)) in [("min", min), ("max", max)].into_iter().enumerate() {
        if let Some(v) = v {
            inputs[slot + 1] = Some(n.constant(suffix, float_scalar(dtype, v)?)?);
        }
    }
    while inputs.last() == Some(&None) {
        inputs.pop();
    }
    n.emit("Clip", attrs, inputs)
}

fn dropout_old(n: &mut NodeImport) -> Result<(), ImportError> {
    let mut attrs = std::mem::take(&mut n.attrs);
    for name in ["ratio", "is_test", "consumed_inputs"] {
        attrs.remove(name);
    }
    let x = n.inputs.first().copied().flatten().ok_or_else(|| ImportError::Invalid("Dropout needs an input".into()))?;
    // Opset < 10: the mask had X's dtype; produce the bool mask under an internal name and cast.
    let mask_name = n.outputs.get(1).filter(|s| !s.is_empty()).cloned();
    let float_mask = match &mask_name {
        Some(name) if n.opset < 10 => {
            let internal = format!("{}::bool_mask", n.layer_name);
            n.outputs[1] = internal.clone();
            Some((name.clone(), internal))
        }
        _ => None,
    };
    n.emit("Dropout", attrs, vec![Some(x)])?;
    if let Some((name, internal)) = float_mask {
        let dtype = tensor_dtype(n, x)?;
        let mask = n.net.tensor_by_name(&internal).ok_or_else(|| ImportError::Invalid("mask output missing".into()))?;
        let cast_attrs = Attributes::new().with("to", dtype.onnx_code() as i64);
        let layer = format!("{}::mask_cast", n.layer_name);
        n.net.add_layer(&layer, "Cast", cast_attrs, &[Some(mask)], &[name.as_str()])?;
    }
    Ok(())
}

fn cast_string_to(n: &mut NodeImport) -> Result<(), ImportError> {
    let mut attrs = std::mem::take(&mut n.attrs);
    if let Some(name) = attrs.string_opt("to").ok().flatten() {
        let code = match name.to_ascii_uppercase().as_str() {
            "FLOAT" => 1,
            "UINT8" => 2,
            "INT8" => 3,
            "UINT16" => 4,
            "INT16" => 5,
            "INT32" => 6,
            "INT64" => 7,
            "STRING" => 8,
            "BOOL" => 9,
            "FLOAT16" => 10,
            "DOUBLE" => 11,
            "UINT32" => 12,
            "UINT64" => 13,
            "BFLOAT16" => 16,
            other => return Err(ImportError::Invalid(format!("Cast to unknown type '{other}'"))),
        };
        attrs.set("to", code as i64);
    }
    let inputs = n.inputs.clone();
    n.emit("Cast", attrs, inputs)
}

fn legacy_broadcast(n: &mut NodeImport) -> Result<(), ImportError> {
    let mut attrs = std::mem::take(&mut n.attrs);
    let broadcast = attrs.int("broadcast", 0)?;
    let axis = attrs.int_opt("axis")?;
    for name in ["broadcast", "axis", "consumed_inputs"] {
        attrs.remove(name);
    }
    let mut inputs = n.inputs.clone();
    let op = n.op.to_string();
    if let (1, Some(axis), [Some(a), Some(b)]) = (broadcast, axis, inputs.as_slice()) {
        let (a, b) = (*a, *b);
        let (ra, rb) = match (rank_of(n, a), rank_of(n, b)) {
            (Some(ra), Some(rb)) => (ra as i64, rb as i64),
            _ => {
                return Err(ImportError::Unsupported(
                    "legacy broadcasting with 'axis' needs the ranks of both inputs".into(),
                ))
            }
        };
        let axis = if axis < 0 { axis + ra } else { axis };
        if axis < 0 || axis + rb > ra {
            return Err(ImportError::Invalid(format!("broadcast axis {axis} does not fit ranks {ra} and {rb}")));
        }
        let trailing = (ra - axis - rb) as usize;
        if trailing > 0 {
            let new_b = if let Some(t) = n.const_input(1) {
                let mut shape = t.shape().to_vec();
                shape.extend(std::iter::repeat_n(1, trailing));
                let t = t.clone().reshape(shape)?;
                n.constant("B", t)?
            } else {
                let axes: Vec<i64> = (rb..rb + trailing as i64).collect();
                let axes = n.constant("axes", Tensor::from_vec(vec![axes.len()], axes)?)?;
                n.aux_layer("unsqueeze_b", "Unsqueeze", Attributes::new(), &[Some(b), Some(axes)], 1)?[0]
            };
            inputs = vec![Some(a), Some(new_b)];
        }
    }
    n.emit(&op, attrs, inputs)
}

fn tensor_type<'a>(n: &'a NodeImport, id: TensorId) -> Option<&'a kiln_ir::TensorType> {
    n.net.tensor(id).ty.as_ref().and_then(ValueType::as_tensor)
}

fn rank_of(n: &NodeImport, id: TensorId) -> Option<usize> {
    tensor_type(n, id).and_then(|t| t.rank())
}

fn tensor_dtype(n: &NodeImport, id: TensorId) -> Result<DType, ImportError> {
    tensor_type(n, id)
        .map(|t| t.dtype)
        .ok_or_else(|| ImportError::Unsupported("the input's dtype must be known to convert the old form".into()))
}

fn float_scalar(dtype: DType, v: f32) -> Result<Tensor, ImportError> {
    Ok(match dtype {
        DType::F32 => Tensor::scalar(v),
        DType::F64 => Tensor::scalar(v as f64),
        DType::F16 => Tensor::scalar(f16::from_f32(v)),
        DType::BF16 => Tensor::scalar(bf16::from_f32(v)),
        other => {
            return Err(ImportError::Invalid(format!("Clip's min/max attributes need a float input, got {other}")))
        }
    })
}
