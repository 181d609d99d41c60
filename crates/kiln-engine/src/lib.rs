//! kiln-engine: the build phase (Network + BuilderConfig → optimized, immutable Engine) and the
//! execution phase (Engine → ExecutionContext → outputs), plus the plan file that sits between
//! them.
//!
//! ```text
//! Network ─Builder(passes · tactics · memory plan)─▶ Engine ─save─▶ model.plan
//! model.plan ─load─▶ Engine ─create_context─▶ ExecutionContext ─execute─▶ outputs
//! ```

pub mod backend;
mod builder;
mod bytes;
pub mod config;
mod context;
pub mod cpu;
mod engine;
mod error;
mod memory_assign;
pub mod memory_plan;
pub mod plan;
mod plan_io;
mod specialize;
mod tactics;
mod timing_cache;

pub use backend::{
    Arg, Backend, DeviceProgram, DeviceSession, LayerDesc, LayerIo, LayerKernel, OutputSlot, Precisions, Produced,
    Tactic, WeightView,
};
pub use builder::Builder;
pub use config::{parse_bytes, BuilderConfig, OptimizationProfile, ShapeRange, MAX_OPT_LEVEL};
pub use context::{ExecutionContext, Profiler};
pub use engine::{
    BuildSummary, Elision, Engine, EngineGraph, EngineLayer, EngineTensor, Storage, WeightBytes, WeightMeta,
};
pub use error::EngineError;
pub use timing_cache::TimingCache;
