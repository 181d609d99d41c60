//! Inference rules for this op family (see `infer/mod.rs`).

use super::InferFn;

pub(super) fn rule(op: &str) -> Option<InferFn> {
    let _ = op;
    None
}
