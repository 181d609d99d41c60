//! kiln-ir: the network definition — dtypes, shapes, tensors, attributes, layers — and static
//! type/shape inference. No backend code lives here.

pub mod activation;
mod attribute;
pub mod channels_last;
mod dtype;
pub mod elementwise_program;
mod error;
pub mod infer;
pub mod inverted_bottleneck;
mod network;
mod shape;
pub mod spec;
mod tensor;
mod value;

pub use activation::Activation;
pub use attribute::{Attribute, Attributes};
pub use dtype::DType;
pub use error::IrError;
pub use half::{bf16, f16};
pub use network::{take_deserialize_error, Layer, LayerId, Network, TensorId, TensorInfo, TensorSource};
pub use shape::{concrete, format_shape, known_shape, Dim, Shape, MAX_RANK};
pub use tensor::{checked_numel, strides_of, Element, Tensor, TensorData, MAX_ELEMENTS};
pub use value::{TensorType, Value, ValueType};
