//! Loading plans: map the file, verify everything (structure, expectations, checksums) before
//! handing out anything, then serve metadata and weights as views into the mapping.

use super::format::*;
use super::store::{Backing, WeightStore};
use super::{PlanError, PlanHeader};
use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// What the loader requires of a plan before accepting it. `None` accepts any value (for
/// tools that inspect plans; an engine loading a plan to run it sets all three).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanExpectation {
    /// The kiln version that built the plan; [`PlanExpectation::new`] sets this kiln's.
    pub kiln_version: Option<String>,
    pub backend: Option<String>,
    /// Compared for equality; an engine that can run plans of compatible devices passes
    /// `None` and judges [`PlanHeader::device`] itself.
    pub device: Option<String>,
}

impl PlanExpectation {
    /// A plan built by this kiln version for `backend` on `device`.
    pub fn new(backend: impl Into<String>, device: impl Into<String>) -> PlanExpectation {
        PlanExpectation {
            kiln_version: Some(KILN_VERSION.to_string()),
            backend: Some(backend.into()),
            device: Some(device.into()),
        }
    }

    /// Any plan this kiln can parse (format version and checksums are still checked).
    pub fn any() -> PlanExpectation {
        PlanExpectation::default()
    }
}

/// A verified plan: header, metadata and weights, all views into one buffer (the mapped file,
/// or an aligned copy for [`LoadedPlan::from_bytes`]).
pub struct LoadedPlan {
    backing: Arc<Backing>,
    header: PlanHeader,
    metadata: Range<usize>,
    weights: WeightStore,
}

impl LoadedPlan {
    /// Maps the plan file at `path` read-only and verifies it against `expect`: magic, format
    /// version, header checksum, length, kiln version / backend / device, section layout, then
    /// every section's checksum. Weights are not copied: [`LoadedPlan::weights`] hands out views
    /// into the mapping.
    ///
    /// The file must not be modified in place while the plan, or a [`WeightStore`] or
    /// [`WeightView`](super::WeightView) taken from it, is alive (truncating a mapped file makes
    /// later reads fault). [`write_plan`](super::write_plan) never does that: it replaces the
    /// file by renaming, and the mapping keeps the old one.
    pub fn open(path: impl AsRef<Path>, expect: &PlanExpectation) -> Result<LoadedPlan, PlanError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| PlanError::io(&name, "opening", e))?;
        let len = file.metadata().map_err(|e| PlanError::io(&name, "reading metadata", e))?.len();
        if len == 0 {
            // An empty file cannot be mapped; it is refused the same way as any short file.
            return LoadedPlan::verify(Arc::new(Backing::copied(name, &[])), expect);
        }
        // SAFETY: the map is read-only and private to this process; the contract above (no
        // in-place modification while mapped) is documented for callers.
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| PlanError::io(&name, "mapping", e))?;
        LoadedPlan::verify(Arc::new(Backing::mapped(name, map)), expect)
    }

    /// Verifies a plan held in memory (copied once into 64-byte aligned storage, so weight
    /// alignment holds as for a mapped file). Errors name the file `<memory>`.
    pub fn from_bytes(bytes: &[u8], expect: &PlanExpectation) -> Result<LoadedPlan, PlanError> {
        LoadedPlan::verify(Arc::new(Backing::copied("<memory>".to_string(), bytes)), expect)
    }

    fn verify(backing: Arc<Backing>, expect: &PlanExpectation) -> Result<LoadedPlan, PlanError> {
        let (header, metadata, blobs) = parse(backing.name(), backing.as_slice(), expect)?;
        let weights = WeightStore::new(backing.clone(), blobs);
        Ok(LoadedPlan { backing, header, metadata, weights })
    }

    pub fn header(&self) -> &PlanHeader {
        &self.header
    }

    /// The file's path as given to [`LoadedPlan::open`] (`<memory>` for bytes).
    pub fn path(&self) -> &str {
        self.backing.name()
    }

    /// The metadata section's bytes, as given to [`write_plan`](super::write_plan).
    pub fn metadata(&self) -> &[u8] {
        &self.backing.as_slice()[self.metadata.clone()]
    }

    /// Decodes the metadata section (see [`decode`](super::decode)) with errors naming this
    /// file; `limit` caps the accepted metadata size.
    pub fn decode_metadata<T: serde::de::DeserializeOwned>(&self, limit: usize) -> Result<T, PlanError> {
        super::codec::decode_named(self.path(), self.metadata(), limit)
    }

    /// Weight blob `i`, 64-byte aligned; an index past the end is an error naming the file.
    pub fn weight(&self, i: usize) -> Result<&[u8], PlanError> {
        self.weights.weight(i)
    }

    /// Number of weight blobs.
    pub fn weights_len(&self) -> usize {
        self.weights.len()
    }

    /// The weights, as a cheap-to-clone `Send + Sync` store that outlives the plan.
    pub fn weights(&self) -> &WeightStore {
        &self.weights
    }

    /// Total bytes of the plan file.
    pub fn file_len(&self) -> usize {
        self.backing.as_slice().len()
    }
}

impl std::fmt::Debug for LoadedPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlan")
            .field("path", &self.path())
            .field("header", &self.header)
            .field("metadata_bytes", &self.metadata.len())
            .field("weights", &self.weights)
            .finish()
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

type Parsed = (PlanHeader, Range<usize>, Vec<Range<usize>>);

/// Every check, in an order that reports the most useful error: what the file is, whether it
/// is whole, whether its header is intact, whether it is meant for this kiln, then structure,
/// then the (expensive) section checksums.
fn parse(path: &str, b: &[u8], expect: &PlanExpectation) -> Result<Parsed, PlanError> {
    let actual = b.len() as u64;
    let truncated = |expected: u64| PlanError::Truncated { path: path.to_string(), expected, actual };
    let corrupt = |msg: String| PlanError::corrupt(path, msg);

    // Magic: a short file that is a prefix of it is a truncated plan.
    let magic_len = MAGIC.len().min(b.len());
    if b[..magic_len] != MAGIC[..magic_len] {
        return Err(PlanError::NotAPlan { path: path.to_string() });
    }
    if b.len() < 12 {
        return Err(truncated(FIXED_LEN as u64));
    }
    let version = le_u32(b, 8);
    if version != FORMAT_VERSION {
        return Err(PlanError::VersionMismatch { path: path.to_string(), found: version, supported: FORMAT_VERSION });
    }
    if b.len() < FIXED_LEN {
        return Err(truncated(FIXED_LEN as u64));
    }
    let header_len = le_u32(b, 12) as usize;
    let file_len = le_u64(b, 16);
    let stored_sum = le_u64(b, 24);
    if header_len > MAX_HEADER_LEN {
        return Err(corrupt(format!("header length {header_len} exceeds the limit of {MAX_HEADER_LEN}")));
    }
    let header_end = FIXED_LEN + header_len;
    if b.len() < header_end {
        return Err(truncated(file_len.max(header_end as u64)));
    }
    let var = &b[FIXED_LEN..header_end];
    if header_checksum(b, var) != stored_sum {
        return Err(PlanError::ChecksumMismatch { path: path.to_string(), section: "header" });
    }
    // The header is intact from here on.
    if actual < file_len {
        return Err(truncated(file_len));
    }
    if actual > file_len {
        return Err(corrupt(format!("{} bytes after the end of the plan ({file_len} bytes)", actual - file_len)));
    }

    let mut c = Cursor { bytes: var, pos: 0 };
    let header = PlanHeader {
        format_version: version,
        kiln_version: c.str("kiln version").map_err(corrupt)?,
        backend: c.str("backend").map_err(corrupt)?,
        device: c.str("device").map_err(corrupt)?,
        config_hash: c.u64("config hash").map_err(corrupt)?,
    };
    check_expectation(path, &header, expect)?;

    let count = c.u32("section count").map_err(corrupt)? as usize;
    if count != SECTIONS.len() {
        return Err(corrupt(format!("{count} sections, format version {FORMAT_VERSION} has {}", SECTIONS.len())));
    }
    let mut sections = [Section { kind: 0, offset: 0, len: 0, checksum: 0 }; 3];
    for (s, (kind, name)) in sections.iter_mut().zip(SECTIONS) {
        s.kind = c.u32("section kind").map_err(corrupt)?;
        if s.kind != kind {
            return Err(corrupt(format!("section kind {} where the {name} section (kind {kind}) belongs", s.kind)));
        }
        if c.u32("reserved").map_err(corrupt)? != 0 {
            return Err(corrupt(format!("reserved field of the {name} section is not zero")));
        }
        s.offset = c.u64("section offset").map_err(corrupt)?;
        s.len = c.u64("section length").map_err(corrupt)?;
        s.checksum = c.u64("section checksum").map_err(corrupt)?;
    }
    if c.pos != var.len() {
        return Err(corrupt(format!("{} unexplained bytes at the end of the header", var.len() - c.pos)));
    }

    // Geometry: each section inside the file, after the previous one, at the first aligned
    // offset, with zero padding before it; the last ending the file.
    let mut prev_end = header_end as u64;
    let mut ranges: [Range<usize>; 3] = [0..0, 0..0, 0..0];
    for (i, (s, (_, name))) in sections.iter().zip(SECTIONS).enumerate() {
        let end = s
            .offset
            .checked_add(s.len)
            .ok_or_else(|| corrupt(format!("{name} section: offset {} + length {} overflows", s.offset, s.len)))?;
        if end > file_len {
            return Err(corrupt(format!(
                "{name} section [{}, {end}) extends beyond the end of the file ({file_len} bytes)",
                s.offset
            )));
        }
        if s.offset < prev_end {
            return Err(corrupt(format!(
                "{name} section at offset {} overlaps what precedes it (which ends at {prev_end})",
                s.offset
            )));
        }
        let expected = align_up(prev_end).expect("prev_end <= file_len");
        if s.offset != expected {
            return Err(corrupt(format!("{name} section at offset {}, expected {expected}", s.offset)));
        }
        if let Some(p) = b[prev_end as usize..s.offset as usize].iter().position(|&x| x != 0) {
            return Err(corrupt(format!("nonzero padding byte at offset {}", prev_end as usize + p)));
        }
        ranges[i] = s.offset as usize..end as usize;
        prev_end = end;
    }
    if prev_end != file_len {
        return Err(corrupt(format!(
            "the file ({file_len} bytes) continues past its last section (ending at {prev_end})"
        )));
    }

    for (i, (_, name)) in SECTIONS.iter().enumerate() {
        if section_checksum(&b[ranges[i].clone()]) != sections[i].checksum {
            return Err(PlanError::ChecksumMismatch { path: path.to_string(), section: name });
        }
    }

    // The weight table (intact now): blobs inside the weights section, aligned, in order.
    let table = &b[ranges[TABLE].clone()];
    if table.len() < 8 {
        return Err(corrupt(format!("weight table of {} bytes has no count", table.len())));
    }
    let n = le_u64(table, 0);
    if n.checked_mul(16).and_then(|x| x.checked_add(8)) != Some(table.len() as u64) {
        return Err(corrupt(format!("weight table of {} bytes cannot hold {n} entries", table.len())));
    }
    let weights = &ranges[WEIGHTS];
    let mut blobs = Vec::with_capacity(n as usize);
    let mut prev_end = 0u64;
    for i in 0..n as usize {
        let off = le_u64(table, 8 + 16 * i);
        let len = le_u64(table, 16 + 16 * i);
        let end = off
            .checked_add(len)
            .ok_or_else(|| corrupt(format!("weight {i}: offset {off} + length {len} overflows")))?;
        if !off.is_multiple_of(WEIGHT_ALIGN as u64) {
            return Err(corrupt(format!("weight {i} at offset {off} is not {WEIGHT_ALIGN}-byte aligned")));
        }
        if off < prev_end {
            return Err(corrupt(format!(
                "weight {i} at offset {off} overlaps weight {} (ending at {prev_end})",
                i - 1
            )));
        }
        if end > weights.len() as u64 {
            return Err(corrupt(format!(
                "weight {i} [{off}, {end}) extends beyond the weights section ({} bytes)",
                weights.len()
            )));
        }
        blobs.push(weights.start + off as usize..weights.start + end as usize);
        prev_end = end;
    }
    Ok((header, ranges[META].clone(), blobs))
}

fn check_expectation(path: &str, h: &PlanHeader, expect: &PlanExpectation) -> Result<(), PlanError> {
    if let Some(v) = expect.kiln_version.as_ref().filter(|v| **v != h.kiln_version) {
        return Err(PlanError::KilnVersionMismatch {
            path: path.into(),
            plan: h.kiln_version.clone(),
            this: v.clone(),
        });
    }
    if let Some(v) = expect.backend.as_ref().filter(|v| **v != h.backend) {
        return Err(PlanError::WrongBackend { path: path.into(), plan: h.backend.clone(), this: v.clone() });
    }
    if let Some(v) = expect.device.as_ref().filter(|v| **v != h.device) {
        return Err(PlanError::WrongDevice { path: path.into(), plan: h.device.clone(), this: v.clone() });
    }
    Ok(())
}
