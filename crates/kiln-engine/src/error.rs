//! Everything the builder, the plan loader and the execution context can report.

/// Why building, loading or running an engine failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The optimization profile does not fit the network's inputs.
    #[error("optimization profile: {0}")]
    Profile(String),
    #[error(transparent)]
    Optimization(#[from] kiln_opt::OptError),
    #[error(transparent)]
    Network(#[from] kiln_ir::IrError),
    /// No tactic of the backend can run this layer (within the workspace limit).
    #[error("layer '{layer}' ({op}): {message}")]
    Layer { layer: String, op: String, message: String },
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error("timing cache '{path}': {message}")]
    TimingCache { path: String, message: String },
    /// A bound input is missing, unknown, or has the wrong type or a shape outside the profile.
    #[error("input '{name}': {message}")]
    Input { name: String, message: String },
    #[error("unknown output '{0}'")]
    UnknownOutput(String),
    /// The device (GPU) could not be used: no driver, no such device, a failed CUDA call.
    #[error("{backend} device: {message}")]
    Device { backend: String, message: String },
    /// A layer failed while running.
    #[error("layer '{layer}' ({op}) failed: {message}")]
    Execution { layer: String, op: String, message: String },
}
