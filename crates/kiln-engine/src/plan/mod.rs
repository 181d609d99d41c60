//! The plan file: header, metadata and 64-byte aligned weights, checksummed.

// TEMPORARY until the plan module lands.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("corrupt plan: {0}")]
    Corrupt(String),
}
