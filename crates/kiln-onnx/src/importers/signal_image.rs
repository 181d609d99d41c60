//! Importers for the signal/image family where ONNX's forms differ by opset (see
//! `importers/mod.rs`). Ops not listed here are imported unchanged.
//!
//! - Upsample (deprecated) and Resize-10 become Resize with `asymmetric` coordinates (and
//!   `floor` rounding for nearest), which is what those ops computed.
//! - RoiAlign before opset 16 used what opset 16 calls `output_half_pixel`.
//! - GridSample before opset 20 named its modes `bilinear`/`bicubic`.
//! - DFT before opset 20 took `axis` as an attribute (default 1) instead of an input.

use super::{ImportError, ImporterFn, NodeImport};
use kiln_ir::{Attribute, Attributes, Tensor};

pub(super) fn importer(op: &str, opset: i64) -> Option<ImporterFn> {
    match op {
        "Upsample" => Some(upsample),
        "Resize" if opset < 11 => Some(resize_10),
        "RoiAlign" if opset < 16 => Some(roi_align_10),
        "GridSample" if opset < 20 => Some(grid_sample_16),
        "DFT" if opset < 20 => Some(dft_17),
        _ => None,
    }
}

/// Upsample-1 (height_scale/width_scale attributes), -7/-8 (`scales` attribute) and -9
/// (`scales` input) → Resize.
fn upsample(n: &mut NodeImport) -> Result<(), ImportError> {
    let x =
        n.inputs.first().copied().flatten().ok_or_else(|| ImportError::Invalid("Upsample needs an input".into()))?;
    let scales = if let Some(Some(s)) = n.inputs.get(1) {
        *s
    } else if let Some(s) = n.attrs.floats_opt("scales")? {
        let len = s.len();
        let t = Tensor::from_vec(vec![len], s).map_err(|e| ImportError::Invalid(e.to_string()))?;
        n.constant("scales", t)?
    } else if let (Some(h), Some(w)) = (n.attrs.float_opt("height_scale")?, n.attrs.float_opt("width_scale")?) {
        // Upsample-1 was defined for 4-D NCHW input only.
        n.constant("scales", Tensor::from_vec(vec![4], vec![1.0f32, 1.0, h, w]).map_err(|e| e.to_string())?)?
    } else {
        return Err(ImportError::Invalid("Upsample needs scales (an input or an attribute)".into()));
    };
    let mode = n.attrs.string("mode", "nearest".into())?.to_ascii_lowercase();
    let attrs = legacy_resize_attrs(&mode)?;
    n.emit("Resize", attrs, vec![Some(x), None, Some(scales)])
}

/// Resize-10: inputs (X, scales), only the `mode` attribute.
fn resize_10(n: &mut NodeImport) -> Result<(), ImportError> {
    n.pad_inputs(2);
    let mode = n.attrs.string("mode", "nearest".into())?;
    let attrs = legacy_resize_attrs(&mode)?;
    let inputs = vec![n.inputs[0], None, n.inputs[1]];
    n.emit("Resize", attrs, inputs)
}

/// Attributes of the Resize equivalent to Upsample / Resize-10 in `mode`.
fn legacy_resize_attrs(mode: &str) -> Result<Attributes, ImportError> {
    let mode = match mode {
        "nearest" => "nearest",
        "linear" | "bilinear" => "linear",
        other => return Err(ImportError::Unsupported(format!("Upsample/Resize mode '{other}'"))),
    };
    Ok(Attributes::new()
        .with("mode", mode)
        .with("coordinate_transformation_mode", "asymmetric")
        .with("nearest_mode", "floor"))
}

fn roi_align_10(n: &mut NodeImport) -> Result<(), ImportError> {
    let mut attrs = std::mem::take(&mut n.attrs);
    if !attrs.contains("coordinate_transformation_mode") {
        attrs.set("coordinate_transformation_mode", "output_half_pixel");
    }
    let inputs = n.inputs.clone();
    n.emit("RoiAlign", attrs, inputs)
}

fn grid_sample_16(n: &mut NodeImport) -> Result<(), ImportError> {
    let mut attrs = std::mem::take(&mut n.attrs);
    let mode = attrs.string("mode", "bilinear".into())?;
    let mode = match mode.as_str() {
        "bilinear" => "linear",
        "bicubic" => "cubic",
        other => other,
    }
    .to_string();
    attrs.set("mode", Attribute::String(mode));
    let inputs = n.inputs.clone();
    n.emit("GridSample", attrs, inputs)
}

fn dft_17(n: &mut NodeImport) -> Result<(), ImportError> {
    let mut attrs = std::mem::take(&mut n.attrs);
    let axis = match attrs.remove("axis") {
        None => 1,
        Some(Attribute::Int(a)) => a,
        Some(other) => {
            return Err(ImportError::Invalid(format!("DFT attribute 'axis' must be int, got {}", other.kind_name())))
        }
    };
    let axis_id = n.constant("axis", Tensor::scalar(axis))?;
    n.pad_inputs(2);
    let inputs = vec![n.inputs[0], n.inputs[1], Some(axis_id)];
    n.emit("DFT", attrs, inputs)
}
