//! kiln-onnx: ONNX → kiln Network.

mod error;
mod import;
pub mod importers;
pub mod proto;
mod summary;
mod tensor_proto;

pub use error::OnnxError;
pub use import::{import_bytes, import_file, value_type, Model, MAX_OPSET};
pub use summary::{summarize_file, ModelSummary};
pub use tensor_proto::{optional_from_proto, sequence_from_proto, tensor_from_proto};
