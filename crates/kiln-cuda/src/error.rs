//! CUDA failures as text for kiln's typed errors: which call failed and what the library said.

use kiln_engine::EngineError;

/// A CUDA-side failure message (the backend's errors are strings in the `Backend` trait).
pub(crate) type CudaResult<T> = Result<T, String>;

/// `what` failed with `err` (any CUDA library error type).
pub(crate) fn cuda_err<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |err| format!("{what}: {err:?}")
}

/// A device failure as the engine's error.
pub(crate) fn device_error(message: String) -> EngineError {
    EngineError::Device { backend: "cuda".into(), message }
}

/// A failure inside one layer while running.
pub(crate) fn layer_error(layer: &kiln_ir::Layer, message: String) -> EngineError {
    EngineError::Execution { layer: layer.name.clone(), op: layer.op.clone(), message }
}
