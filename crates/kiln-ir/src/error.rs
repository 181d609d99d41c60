use crate::DType;
use thiserror::Error;

/// Errors from building or inspecting a network.
#[derive(Debug, Error)]
pub enum IrError {
    #[error("{what}: expected {expected} elements, found {got}")]
    DataLength { what: String, expected: usize, got: usize },
    #[error("expected a {expected} tensor, found {got}")]
    DTypeMismatch { expected: DType, got: DType },
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("a {kind} named '{name}' already exists in the network")]
    DuplicateName { kind: &'static str, name: String },
    #[error("no tensor named '{0}' in the network")]
    UnknownTensor(String),
    #[error("layer '{layer}' ({op}): {message}")]
    Layer { layer: String, op: String, message: String },
    #[error("layer '{layer}': op '{op}' is not supported by kiln")]
    UnsupportedOp { layer: String, op: String },
    #[error("tensor '{tensor}': rank {rank} exceeds kiln's limit of {max}")]
    RankTooLarge { tensor: String, rank: usize, max: usize },
    #[error("{0}")]
    Invalid(String),
}
