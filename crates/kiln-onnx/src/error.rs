use kiln_ir::IrError;
use std::path::PathBuf;
use thiserror::Error;

/// Why an ONNX model could not be imported. Every variant names the file, node or tensor.
#[derive(Debug, Error)]
pub enum OnnxError {
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid ONNX protobuf: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("model imports opset {version} of domain '{domain}'; kiln supports up to {max}")]
    OpsetTooNew { domain: String, version: i64, max: i64 },
    #[error("node '{node}': op '{op}' (domain '{domain}', opset {opset}) is not supported by kiln{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    UnsupportedOp { node: String, op: String, domain: String, opset: i64, reason: Option<String> },
    #[error("node '{node}' ({op}): {message}")]
    Node { node: String, op: String, message: String },
    #[error("node '{node}' reads tensor '{tensor}', which no node, input or initializer produces")]
    UndefinedInput { node: String, tensor: String },
    #[error("graph '{graph}' has a cycle through nodes: {}", nodes.join(", "))]
    Cycle { graph: String, nodes: Vec<String> },
    #[error("tensor '{tensor}': {message}")]
    Tensor { tensor: String, message: String },
    #[error("tensor '{tensor}': external data '{location}': {message}")]
    ExternalData { tensor: String, location: String, message: String },
    #[error("graph output '{0}' is not produced by any node, input or initializer")]
    UndefinedOutput(String),
    #[error("{0}")]
    Ir(#[from] IrError),
}
