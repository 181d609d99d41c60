//! The plan file: an engine serialized for reuse (TensorRT's "plan"), so that a model is
//! optimized once and later loaded in milliseconds.
//!
//! A plan is a small header (magic, format version, kiln version, backend, device
//! fingerprint, build-config hash, section table), a metadata section of bytes the engine
//! provides (its layers, tactics and memory plan, serialized with [`encode`]), and a weights
//! section of blobs, each at a 64-byte aligned offset. Every byte is covered by an xxh3
//! checksum verified at load. [`LoadedPlan::open`] maps the file and hands out weights as
//! `&[u8]` (or typed slices) into the mapping, without copying: see [`WeightStore`].
//! The byte layout is documented in `format.rs`.
//!
//! Nothing in a plan is trusted: truncation, corruption, wrong versions, wrong backend or
//! device, and offsets or lengths that lie are all refused with a [`PlanError`] that names the
//! file and says which; none panics, and none allocates more than the file's size.
//!
//! ```no_run
//! use kiln_engine::plan::*;
//! # fn main() -> Result<(), PlanError> {
//! let header = PlanHeader::new("cpu", "x86_64+avx2+fma", 0x1234);
//! let meta = encode(&vec!["conv1".to_string()])?;
//! write_plan("model.plan", &header, &meta, &[&[0u8; 256], &[1u8; 100]])?;
//!
//! let plan = LoadedPlan::open("model.plan", &PlanExpectation::new("cpu", "x86_64+avx2+fma"))?;
//! let layers: Vec<String> = plan.decode_metadata(DEFAULT_METADATA_LIMIT)?;
//! let w0: &[u8] = plan.weight(0)?;
//! let w1 = plan.weights().view(1)?; // owned, Send + Sync, keeps the mapping alive
//! # Ok(()) }
//! ```

mod codec;
mod error;
mod format;
mod load;
mod store;
mod write;

#[cfg(test)]
mod tests;

pub use codec::{decode, encode, DEFAULT_METADATA_LIMIT};
pub use error::PlanError;
pub use format::{FORMAT_VERSION, KILN_VERSION, MAGIC, MAX_HEADER_STRING, WEIGHT_ALIGN};
pub use load::{LoadedPlan, PlanExpectation};
pub use store::{WeightStore, WeightView};
pub use write::{plan_to_bytes, write_plan};

/// What a plan's header says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanHeader {
    /// The plan file format ([`FORMAT_VERSION`] for plans this kiln writes).
    pub format_version: u32,
    /// The kiln that built the plan ([`KILN_VERSION`]).
    pub kiln_version: String,
    /// The backend the engine was built for, e.g. `cpu`.
    pub backend: String,
    /// A fingerprint of the device the tactics were chosen on (ISA features, model).
    pub device: String,
    /// Hash of the build configuration (precision flags, optimization level, profiles), for
    /// callers that cache plans by configuration.
    pub config_hash: u64,
}

impl PlanHeader {
    /// A header for a plan this kiln writes now.
    pub fn new(backend: impl Into<String>, device: impl Into<String>, config_hash: u64) -> PlanHeader {
        PlanHeader {
            format_version: FORMAT_VERSION,
            kiln_version: KILN_VERSION.to_string(),
            backend: backend.into(),
            device: device.into(),
            config_hash,
        }
    }
}
