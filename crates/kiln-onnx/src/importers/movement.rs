//! Importers for this op family where ONNX's forms differ by opset (see `importers/mod.rs`).
//! Ops not listed here are imported unchanged. Each rewrites an older form into the latest
//! one: attributes that later became inputs turn into constant inputs.

use super::{ImportError, ImporterFn, NodeImport};
use kiln_ir::{DType, Element, Tensor, ValueType};

pub(super) fn importer(op: &str, opset: i64) -> Option<ImporterFn> {
    Some(match op {
        // Scatter (deprecated in opset 11) is ScatterElements without a reduction.
        "Scatter" => |n| {
            let attrs = std::mem::take(&mut n.attrs);
            let inputs = n.inputs.clone();
            n.emit("ScatterElements", attrs, inputs)
        },
        "Reshape" if opset < 5 => |n| attr_to_input(n, "shape", 1, true),
        "Squeeze" if opset < 13 => |n| attr_to_input(n, "axes", 1, false),
        "Unsqueeze" if opset < 13 => |n| attr_to_input(n, "axes", 1, true),
        "Split" if opset < 13 => |n| attr_to_input(n, "split", 1, false),
        "Slice" if opset < 10 => slice_v1,
        "Pad" if opset < 11 => pad_v2,
        "TopK" if opset < 10 => |n| {
            let k = n.attrs.remove("k").ok_or_else(|| ImportError::Invalid("TopK needs attribute 'k'".into()))?;
            let kiln_ir::Attribute::Int(k) = k else {
                return Err(ImportError::Invalid("attribute 'k' must be an int".into()));
            };
            let id = n.constant("k", Tensor::from_vec(vec![1], vec![k])?)?;
            n.inputs.truncate(1);
            n.inputs.push(Some(id));
            n.pass_through()
        },
        // Concat-1's axis defaulted to 1; later versions require it.
        "Concat" if opset < 4 => |n| {
            if !n.attrs.contains("axis") {
                n.attrs.set("axis", 1i64);
            }
            n.pass_through()
        },
        _ => return None,
    })
}

/// Move ints attribute `name` to input slot `slot` as a 1-D i64 constant (unless that input is
/// already given). `required`: the attribute must be present.
fn attr_to_input(n: &mut NodeImport, name: &str, slot: usize, required: bool) -> Result<(), ImportError> {
    let values = n.attrs.ints_opt(name)?;
    n.attrs.remove(name);
    let given = n.inputs.get(slot).copied().flatten().is_some();
    match values {
        Some(v) if !given => {
            let id = n.constant(name, Tensor::from_vec(vec![v.len()], v)?)?;
            n.pad_inputs(slot + 1);
            n.inputs[slot] = Some(id);
        }
        None if required && !given => {
            return Err(ImportError::Invalid(format!("{} needs attribute '{name}'", n.op)));
        }
        _ => {}
    }
    n.pass_through()
}

/// Slice-1: `starts`, `ends` and optional `axes` attributes → inputs 1..=3.
fn slice_v1(n: &mut NodeImport) -> Result<(), ImportError> {
    let mut ints = |name: &str| -> Result<Option<Vec<i64>>, ImportError> {
        let v = n.attrs.ints_opt(name)?;
        n.attrs.remove(name);
        Ok(v)
    };
    let starts = ints("starts")?.ok_or_else(|| ImportError::Invalid("Slice needs attribute 'starts'".into()))?;
    let ends = ints("ends")?.ok_or_else(|| ImportError::Invalid("Slice needs attribute 'ends'".into()))?;
    let axes = ints("axes")?;
    n.inputs.truncate(1);
    for (name, v) in [("starts", Some(starts)), ("ends", Some(ends)), ("axes", axes)] {
        let id = match v {
            Some(v) => Some(n.constant(name, Tensor::from_vec(vec![v.len()], v)?)?),
            None => None,
        };
        n.inputs.push(id);
    }
    n.pass_through()
}

/// Pad-1/2: `pads` (`paddings` in Pad-1) and `value` attributes → inputs 1 and 2.
fn pad_v2(n: &mut NodeImport) -> Result<(), ImportError> {
    let pads = match n.attrs.ints_opt("pads")? {
        Some(p) => p,
        None => {
            n.attrs.ints_opt("paddings")?.ok_or_else(|| ImportError::Invalid("Pad needs attribute 'pads'".into()))?
        }
    };
    let value = n.attrs.float("value", 0.0)?;
    for a in ["pads", "paddings", "value"] {
        n.attrs.remove(a);
    }
    // The constant must have the data's dtype (Pad-2 accepts float types only).
    let dtype = n
        .inputs
        .first()
        .copied()
        .flatten()
        .and_then(|id| match &n.net.tensor(id).ty {
            Some(ValueType::Tensor(t)) => Some(t.dtype),
            _ => None,
        })
        .unwrap_or(DType::F32);
    fn scalar_as<T: Element>(_: &[T], v: f32) -> Tensor {
        Tensor::scalar(T::from_f64(v as f64))
    }
    let zeros = kiln_ir::TensorData::zeros(dtype, 0);
    let value_t = kiln_ir::dispatch!(&zeros, z => scalar_as(z, value));
    let pads_id = n.constant("pads", Tensor::from_vec(vec![pads.len()], pads)?)?;
    let value_id = n.constant("value", value_t)?;
    n.inputs.truncate(1);
    n.inputs.push(Some(pads_id));
    n.inputs.push(Some(value_id));
    n.pass_through()
}
