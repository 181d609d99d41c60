//! Importers for this op family where ONNX's forms differ by opset (see `importers/mod.rs`).
//! Ops not listed here are imported unchanged.

use super::ImporterFn;

pub(super) fn importer(op: &str, opset: i64) -> Option<ImporterFn> {
    let _ = (op, opset);
    None
}
