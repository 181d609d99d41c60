use thiserror::Error;

#[derive(Debug, Error)]
pub enum CpuError {
    #[error("layer '{layer}' ({op}): {message}")]
    Layer { layer: String, op: String, message: String },
    #[error("layer '{layer}': op '{op}' has no CPU kernel")]
    NoKernel { layer: String, op: String },
    #[error("input '{0}' was not given")]
    MissingInput(String),
    #[error("'{0}' is not an input of the network")]
    UnknownInput(String),
    #[error("input '{name}': {message}")]
    BadInput { name: String, message: String },
    #[error("tensor '{0}' was never computed (its producer did not run)")]
    NotComputed(String),
    #[error("subgraph reads '{0}' from an enclosing scope, but no enclosing scope has it")]
    UnboundCapture(String),
}
