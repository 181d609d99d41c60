//! Writing plans: layout and checksums computed first (the header holds them), then one
//! sequential write to a temporary file that is renamed over the target.

use super::format::*;
use super::{PlanError, PlanHeader};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const ZEROS: [u8; WEIGHT_ALIGN] = [0; WEIGHT_ALIGN];

/// Everything but the payloads: the fixed prefix and variable header, bytes ready, and where
/// each piece goes.
struct Layout {
    head: Vec<u8>,
    table: Vec<u8>,
    /// Start of each section in the file.
    sections: [u64; 3],
    /// Start of each blob relative to the weights section.
    blob_offsets: Vec<u64>,
    file_len: u64,
}

fn layout(path: &str, header: &PlanHeader, metadata: &[u8], weights: &[&[u8]]) -> Result<Layout, PlanError> {
    let refuse = |reason: String| PlanError::Unwritable { path: path.to_string(), reason };
    if header.format_version != FORMAT_VERSION {
        return Err(refuse(format!(
            "header asks for format version {}, this kiln writes version {FORMAT_VERSION}",
            header.format_version
        )));
    }
    for (what, s) in [("kiln version", &header.kiln_version), ("backend", &header.backend), ("device", &header.device)]
    {
        if s.len() > MAX_HEADER_STRING {
            return Err(refuse(format!("{what} string is {} bytes (limit {MAX_HEADER_STRING})", s.len())));
        }
    }
    let overflow = || refuse("plan larger than 2^64 bytes".to_string());

    // Weight table and blob placement.
    let mut table = Vec::with_capacity(8 + 16 * weights.len());
    table.extend_from_slice(&(weights.len() as u64).to_le_bytes());
    let mut blob_offsets = Vec::with_capacity(weights.len());
    let mut weights_len = 0u64;
    for w in weights {
        let start = align_up(weights_len).ok_or_else(overflow)?;
        weights_len = start.checked_add(w.len() as u64).ok_or_else(overflow)?;
        blob_offsets.push(start);
        table.extend_from_slice(&start.to_le_bytes());
        table.extend_from_slice(&(w.len() as u64).to_le_bytes());
    }

    let header_len = (3 * 4 + header.kiln_version.len() + header.backend.len() + header.device.len())
        + 8
        + 4
        + 3 * SECTION_ENTRY_LEN;
    let mut sections = [0u64; 3];
    let lens = [metadata.len() as u64, table.len() as u64, weights_len];
    let mut end = (FIXED_LEN + header_len) as u64;
    for (s, len) in sections.iter_mut().zip(lens) {
        *s = align_up(end).ok_or_else(overflow)?;
        end = s.checked_add(len).ok_or_else(overflow)?;
    }
    let file_len = end;

    let mut weights_hash = ChunkedHasher::new();
    let mut pos = 0u64;
    for (w, &start) in weights.iter().zip(&blob_offsets) {
        weights_hash.update(&ZEROS[..(start - pos) as usize]);
        weights_hash.update(w);
        pos = start + w.len() as u64;
    }
    let checksums = [section_checksum(metadata), section_checksum(&table), weights_hash.finish()];

    let mut var = Vec::with_capacity(header_len);
    put_str(&mut var, &header.kiln_version);
    put_str(&mut var, &header.backend);
    put_str(&mut var, &header.device);
    var.extend_from_slice(&header.config_hash.to_le_bytes());
    var.extend_from_slice(&(SECTIONS.len() as u32).to_le_bytes());
    for i in 0..3 {
        var.extend_from_slice(&SECTIONS[i].0.to_le_bytes());
        var.extend_from_slice(&0u32.to_le_bytes());
        var.extend_from_slice(&sections[i].to_le_bytes());
        var.extend_from_slice(&lens[i].to_le_bytes());
        var.extend_from_slice(&checksums[i].to_le_bytes());
    }
    debug_assert_eq!(var.len(), header_len);

    let mut head = Vec::with_capacity(FIXED_LEN + header_len);
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    head.extend_from_slice(&(header_len as u32).to_le_bytes());
    head.extend_from_slice(&file_len.to_le_bytes());
    let sum = header_checksum(&head, &var);
    head.extend_from_slice(&sum.to_le_bytes());
    head.extend_from_slice(&var);
    Ok(Layout { head, table, sections, blob_offsets, file_len })
}

/// Writes the plan through `w` in one pass; returns the bytes written.
fn emit(w: &mut impl Write, l: &Layout, metadata: &[u8], weights: &[&[u8]]) -> io::Result<u64> {
    let mut pos = 0u64;
    let mut put = |w: &mut dyn Write, at: u64, bytes: &[u8]| -> io::Result<()> {
        // Zero padding up to `at` (always less than the alignment).
        w.write_all(&ZEROS[..(at - pos) as usize])?;
        w.write_all(bytes)?;
        pos = at + bytes.len() as u64;
        Ok(())
    };
    put(w, 0, &l.head)?;
    put(w, l.sections[META], metadata)?;
    put(w, l.sections[TABLE], &l.table)?;
    for (blob, &off) in weights.iter().zip(&l.blob_offsets) {
        put(w, l.sections[WEIGHTS] + off, blob)?;
    }
    put(w, l.file_len, &[])?;
    Ok(pos)
}

/// A plan file's bytes in memory (for tests, and for callers that store plans elsewhere).
pub fn plan_to_bytes(header: &PlanHeader, metadata: &[u8], weights: &[&[u8]]) -> Result<Vec<u8>, PlanError> {
    let l = layout("<memory>", header, metadata, weights)?;
    let len = usize::try_from(l.file_len)
        .map_err(|_| PlanError::Unwritable { path: "<memory>".into(), reason: "too large for memory".into() })?;
    let mut out = Vec::with_capacity(len);
    emit(&mut out, &l, metadata, weights).expect("writing to a Vec cannot fail");
    Ok(out)
}

/// Writes a plan file: `metadata` (the engine's serialized description, see
/// [`encode`](super::encode)) and `weights`, each weight blob at a 64-byte aligned offset.
///
/// The plan is written to a temporary file in the same directory, flushed to disk and renamed
/// over `path`, so a crash leaves the old file or the new one, never half of one; a reader that
/// has the old file mapped keeps its (now unlinked) copy.
pub fn write_plan(
    path: impl AsRef<Path>,
    header: &PlanHeader,
    metadata: &[u8],
    weights: &[&[u8]],
) -> Result<(), PlanError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let l = layout(&name, header, metadata, weights)?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| PlanError::io(&name, "creating a temporary file beside it", e))?;
        let mut w = io::BufWriter::with_capacity(1 << 20, &mut f);
        let written = emit(&mut w, &l, metadata, weights)
            .and_then(|n| w.flush().map(|()| n))
            .map_err(|e| PlanError::io(&name, "writing", e))?;
        drop(w);
        debug_assert_eq!(written, l.file_len);
        f.sync_all().map_err(|e| PlanError::io(&name, "flushing to disk", e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| PlanError::io(&name, "renaming the temporary file over it", e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Make the rename itself durable (best effort: not every platform can open a directory).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// `.<name>.<pid>.<n>.tmp` beside `path`: unique within and across processes.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "plan".into());
    path.with_file_name(format!(".{file}.{}.{n}.tmp", std::process::id()))
}
