//! Why a plan could not be read or written. Every message starts with the file it is about.

use std::io;
use thiserror::Error;

/// An error reading, verifying or writing a plan file. `path` is the file's path as given, or
/// `<memory>` for plans read from bytes.
#[derive(Debug, Error)]
pub enum PlanError {
    /// The file does not start with the plan magic bytes.
    #[error("{path}: not a kiln plan file (it does not start with the KILNPLAN magic bytes)")]
    NotAPlan { path: String },
    /// The file ends before the plan does.
    #[error("{path}: truncated plan file: expected {expected} bytes, found {actual}")]
    Truncated { path: String, expected: u64, actual: u64 },
    /// The file is in a plan format version this kiln cannot read.
    #[error("{path}: plan file format version {found}, this kiln reads version {supported}; rebuild the engine")]
    VersionMismatch { path: String, found: u32, supported: u32 },
    /// The plan was built by another kiln version (its metadata layout may differ).
    #[error("{path}: plan built by kiln {plan}, this is kiln {this}; rebuild the engine")]
    KilnVersionMismatch { path: String, plan: String, this: String },
    /// The plan was built for another backend.
    #[error("{path}: plan built for backend '{plan}', not '{this}'")]
    WrongBackend { path: String, plan: String, this: String },
    /// The plan was built for another device.
    #[error("{path}: plan built for device '{plan}', this device is '{this}'; rebuild the engine")]
    WrongDevice { path: String, plan: String, this: String },
    /// A section's bytes do not match its checksum.
    #[error("{path}: checksum mismatch in the {section} section: the file is corrupt")]
    ChecksumMismatch { path: String, section: &'static str },
    /// Structurally invalid: bad offsets, overlapping or out-of-file sections, lengths that
    /// overflow, malformed header fields, metadata that does not decode.
    #[error("{path}: corrupt plan file: {message}")]
    Corrupt { path: String, message: String },
    /// The operating system refused an operation on the file.
    #[error("{path}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The writer was given something a plan cannot hold (an over-long header string, a
    /// header of another format version, a value the metadata encoder refuses).
    #[error("{path}: cannot write plan: {reason}")]
    Unwritable { path: String, reason: String },
}

impl PlanError {
    /// The file the error is about.
    pub fn path(&self) -> &str {
        match self {
            PlanError::NotAPlan { path }
            | PlanError::Truncated { path, .. }
            | PlanError::VersionMismatch { path, .. }
            | PlanError::KilnVersionMismatch { path, .. }
            | PlanError::WrongBackend { path, .. }
            | PlanError::WrongDevice { path, .. }
            | PlanError::ChecksumMismatch { path, .. }
            | PlanError::Corrupt { path, .. }
            | PlanError::Io { path, .. }
            | PlanError::Unwritable { path, .. } => path,
        }
    }

    pub(crate) fn corrupt(path: &str, message: impl Into<String>) -> PlanError {
        PlanError::Corrupt { path: path.to_string(), message: message.into() }
    }

    pub(crate) fn io(path: &str, op: &'static str, source: io::Error) -> PlanError {
        PlanError::Io { path: path.to_string(), op, source }
    }
}
