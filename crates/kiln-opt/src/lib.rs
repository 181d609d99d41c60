//! kiln-opt: graph passes over a [`kiln_ir::Network`], one pass per file, run by a pass manager
//! to a fixpoint.
//!
//! A pass never edits a network in place: it reads one and, if it changes anything, builds the
//! next through a [`Rebuilder`], so every rewritten layer goes through type/shape inference again
//! and a broken rewrite fails loudly, naming the layer, instead of producing a subtly wrong graph.

pub mod cost;
mod manager;
pub mod passes;
mod rebuild;

pub use manager::{optimize, optimize_with, OptOptions, Pass, PassManager, PassReport};
pub use passes::prune::{LayerChange, PruneReport};
pub use rebuild::Rebuilder;

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum OptError {
    #[error("pass '{pass}': {source}")]
    Rewrite { pass: &'static str, source: kiln_ir::IrError },
}
