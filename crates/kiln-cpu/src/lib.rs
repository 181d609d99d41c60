//! kiln-cpu: the CPU backend — one kernel per op of kiln's op set, and an executor that runs a
//! [`kiln_ir::Network`] layer by layer (including If/Loop/Scan subgraphs).

mod error;
mod executor;
mod kernel;
pub mod ops;
#[cfg(test)]
mod test_util;
pub mod util;

pub use error::CpuError;
pub use executor::{eval_layer, eval_layer_with_captures, execute, execute_named};
pub use kernel::{kernel, KernelCtx, KernelFn};
