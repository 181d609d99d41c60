//! Importers for the `nn` family where ONNX's forms differ by opset (see `importers/mod.rs`).
//! Ops not listed here are imported unchanged: every other change in this family only added
//! attributes or inputs whose defaults reproduce the older behaviour.

use super::{ImportError, ImporterFn, NodeImport};
use kiln_ir::Attribute;

pub(super) fn importer(op: &str, opset: i64) -> Option<ImporterFn> {
    match op {
        "LpPool" | "GlobalLpPool" if opset < 2 => Some(lp_pool_v1),
        "Gemm" if opset < 7 => Some(gemm_v6),
        _ => None,
    }
}

/// LpPool-1 / GlobalLpPool-1 took `p` as a float; from opset 2 it is an int.
fn lp_pool_v1(n: &mut NodeImport) -> Result<(), ImportError> {
    if let Some(Attribute::Float(p)) = n.attrs.get("p").cloned() {
        if p.fract() != 0.0 || p < 1.0 {
            return Err(ImportError::Unsupported(format!("{} with non-integer p = {p}", n.op)));
        }
        n.attrs.set("p", p as i64);
    }
    n.pass_through()
}

/// Gemm before opset 7 flagged C's broadcasting with a `broadcast` attribute; since then C
/// always broadcasts unidirectionally, which covers both old forms.
fn gemm_v6(n: &mut NodeImport) -> Result<(), ImportError> {
    n.attrs.remove("broadcast");
    n.pass_through()
}
