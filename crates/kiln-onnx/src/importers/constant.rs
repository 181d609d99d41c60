//! Constant and ConstantOfShape's attribute forms: the value becomes a network constant.

use super::{ImportError, ImporterFn, NodeImport};
use kiln_ir::{Attribute, Tensor};

pub(super) fn importer(op: &str, _opset: i64) -> Option<ImporterFn> {
    match op {
        "Constant" => Some(constant),
        _ => None,
    }
}

fn constant(n: &mut NodeImport) -> Result<(), ImportError> {
    let value = match n.attrs.0.iter().next() {
        Some((name, a)) if n.attrs.0.len() == 1 => match (name.as_str(), a) {
            ("value", Attribute::Tensor(t)) => t.clone(),
            ("value_float", Attribute::Float(v)) => Tensor::scalar(*v),
            ("value_floats", Attribute::Floats(v)) => Tensor::from_vec(vec![v.len()], v.clone())?,
            ("value_int", Attribute::Int(v)) => Tensor::scalar(*v),
            ("value_ints", Attribute::Ints(v)) => Tensor::from_vec(vec![v.len()], v.clone())?,
            ("value_string" | "value_strings", _) => {
                return Err(ImportError::Unsupported("string tensors are out of kiln's scope".into()))
            }
            (other, a) => {
                return Err(ImportError::Invalid(format!("unexpected attribute '{other}' of kind {}", a.kind_name())))
            }
        },
        _ => return Err(ImportError::Invalid("Constant needs exactly one value attribute".into())),
    };
    let name = n.outputs.first().cloned().unwrap_or_default();
    if name.is_empty() {
        return Ok(());
    }
    n.net.add_constant(&name, value)?;
    Ok(())
}
