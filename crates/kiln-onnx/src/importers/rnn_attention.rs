//! Importers for this op family where ONNX's forms differ by opset (see `importers/mod.rs`).
//! Ops not listed here are imported unchanged.
//!
//! None is needed: every older form of this family's ops is the latest form with fewer
//! optional inputs or attributes whose defaults give the old behaviour (Attention-23 lacks
//! `nonpad_kv_seqlen` and the window attributes; RNN/GRU/LSTM before 14 lack `layout`, GRU-1
//! lacks `linear_before_reset`, and opset-1 `output_sequence` only said whether Y was wanted).

use super::ImporterFn;

pub(super) fn importer(op: &str, opset: i64) -> Option<ImporterFn> {
    let _ = (op, opset);
    None
}
