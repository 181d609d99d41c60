//! Importers for this op family where ONNX's forms differ by opset (see `importers/mod.rs`).
//! Ops not listed here are imported unchanged.
//!
//! - Reduce*: `axes` was an attribute before opset 18 (ReduceSum: 13); it becomes a constant
//!   input.
//! - Softmax / LogSoftmax / Hardmax before opset 13 coerce the input to 2-D at `axis` (1 by
//!   default) and normalize the whole second dimension; the layer gets the internal
//!   attribute `kiln_coerce_2d` that the kernel understands.
//! - GroupNormalization opset 18 has per-group scale and bias (opset 21: per channel); the
//!   layer gets the internal attribute `kiln_per_group_scale`.
//! - BatchNormalization before opset 14 (inference form only): legacy attributes dropped.

use super::{ImportError, ImporterFn, NodeImport};
use kiln_ir::{Attributes, Tensor};

use kiln_ir::spec::{COERCE_2D_ATTR, PER_GROUP_SCALE_ATTR};

pub(super) fn importer(op: &str, opset: i64) -> Option<ImporterFn> {
    match op {
        "ReduceSum" if opset < 13 => Some(reduce_axes_attr),
        "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2" | "ReduceLogSum"
        | "ReduceLogSumExp" | "ReduceSumSquare"
            if opset < 18 =>
        {
            Some(reduce_axes_attr)
        }
        "Softmax" | "LogSoftmax" | "Hardmax" if opset < 13 => Some(coerce_2d),
        "GroupNormalization" if opset < 21 => Some(per_group_scale),
        "BatchNormalization" if opset < 14 => Some(legacy_batch_norm),
        _ => None,
    }
}

fn reduce_axes_attr(n: &mut NodeImport) -> Result<(), ImportError> {
    let mut attrs = std::mem::take(&mut n.attrs);
    let axes = attrs.ints_opt("axes")?;
    attrs.remove("axes");
    let data = n.inputs.first().copied().flatten();
    let mut inputs = vec![data];
    if let Some(axes) = axes {
        // An empty `axes` attribute meant "all axes", as an omitted axes input does now.
        if !axes.is_empty() {
            let t = Tensor::from_vec(vec![axes.len()], axes)?;
            inputs.push(Some(n.constant("axes", t)?));
        }
    }
    let op = n.op.to_string();
    n.emit(&op, attrs, inputs)
}

fn coerce_2d(n: &mut NodeImport) -> Result<(), ImportError> {
    let mut attrs = std::mem::take(&mut n.attrs);
    let axis = attrs.int("axis", 1)?;
    attrs.set("axis", axis);
    attrs.set(COERCE_2D_ATTR, 1i64);
    let inputs = n.inputs.clone();
    let op = n.op.to_string();
    n.emit(&op, attrs, inputs)
}

fn per_group_scale(n: &mut NodeImport) -> Result<(), ImportError> {
    let mut attrs = std::mem::take(&mut n.attrs);
    attrs.set(PER_GROUP_SCALE_ATTR, 1i64);
    let inputs = n.inputs.clone();
    n.emit("GroupNormalization", attrs, inputs)
}

fn legacy_batch_norm(n: &mut NodeImport) -> Result<(), ImportError> {
    if n.outputs.iter().skip(1).any(|o| !o.is_empty()) {
        return Err(ImportError::Unsupported(format!(
            "BatchNormalization opset {} with training outputs (mean/var/saved statistics)",
            n.opset
        )));
    }
    let old = std::mem::take(&mut n.attrs);
    if old.int("spatial", 1)? == 0 {
        return Err(ImportError::Unsupported("BatchNormalization with spatial=0".into()));
    }
    // Before opset 7, `is_test` (default 0: training, batch statistics) selected the mode.
    if n.opset < 7 && old.int("is_test", 0)? == 0 {
        return Err(ImportError::Unsupported("BatchNormalization in training mode (is_test=0)".into()));
    }
    let mut attrs = Attributes::new();
    for name in ["epsilon", "momentum"] {
        if let Some(a) = old.get(name) {
            attrs.set(name, a.clone());
        }
    }
    n.outputs.truncate(1);
    let inputs = n.inputs.clone();
    n.emit("BatchNormalization", attrs, inputs)
}
