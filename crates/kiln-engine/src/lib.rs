//! kiln-engine: the build phase (Network + BuilderConfig → optimized, immutable Engine) and the
//! execution phase (Engine → ExecutionContext → outputs), plus the plan file that sits between
//! them.

pub mod plan;
