//! The byte layout of a plan file, shared by the writer and the loader. All integers are
//! little-endian.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "KILNPLAN"
//!      8     4  format version (u32)
//!     12     4  header_len: bytes of the variable header that follows the fixed prefix (u32)
//!     16     8  file_len: total length of the file (u64)
//!     24     8  header checksum: xxh3_64 of bytes 0..24 followed by the variable header
//!     32     -  variable header (header_len bytes):
//!                 kiln version, backend, device: each a u32 byte count + UTF-8 bytes
//!                 config hash (u64)
//!                 section count (u32), then per section 32 bytes:
//!                   kind (u32), reserved (u32, zero), offset (u64), length (u64), xxh3_64 (u64)
//! sections, in this order, each at the first 64-byte aligned offset after the previous one
//! (the header for the first), zero bytes in the gaps, the file ending where the last ends:
//!   metadata      caller's bytes (the engine's serialized layers, tactics, memory plan)
//!   weight table  count (u64), then per blob: offset (u64, from the weights section start,
//!                 a multiple of 64), length (u64); ascending and non-overlapping
//!   weights       the blobs at their offsets, zero padding between them
//! ```
//!
//! The header checksum covers the section table, which holds each section's checksum, so
//! every byte of the file is checked: the padding gaps by being required to be zero.

use xxhash_rust::xxh3::Xxh3;

pub const MAGIC: [u8; 8] = *b"KILNPLAN";
/// The plan format this kiln writes and reads. Bump on any layout change.
pub const FORMAT_VERSION: u32 = 1;
/// The kiln version written into plans (the kiln-engine crate version).
pub const KILN_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Alignment of each section and of each weight blob, in the file and (the file being mapped at
/// a page boundary, or copied into an aligned buffer) in memory.
pub const WEIGHT_ALIGN: usize = 64;
/// Longest kiln version, backend or device string a plan may hold.
pub const MAX_HEADER_STRING: usize = 4096;

pub(crate) const FIXED_LEN: usize = 32;
pub(crate) const SECTION_ENTRY_LEN: usize = 32;
/// Largest variable header the loader accepts (three strings, the hash, three entries).
pub(crate) const MAX_HEADER_LEN: usize = 3 * (4 + MAX_HEADER_STRING) + 8 + 4 + 3 * SECTION_ENTRY_LEN;

/// Section kinds, in the order they appear in the table and the file.
pub(crate) const SECTIONS: [(u32, &str); 3] = [(1, "metadata"), (2, "weight table"), (3, "weights")];
pub(crate) const META: usize = 0;
pub(crate) const TABLE: usize = 1;
pub(crate) const WEIGHTS: usize = 2;

/// One row of the section table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Section {
    pub kind: u32,
    pub offset: u64,
    pub len: u64,
    pub checksum: u64,
}

/// Round `n` up to a multiple of [`WEIGHT_ALIGN`]; `None` on overflow.
pub(crate) fn align_up(n: u64) -> Option<u64> {
    n.checked_add(WEIGHT_ALIGN as u64 - 1).map(|v| v & !(WEIGHT_ALIGN as u64 - 1))
}

/// xxh3 of the fixed prefix's first 24 bytes followed by the variable header.
pub(crate) fn header_checksum(prefix: &[u8], variable: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&prefix[..24]);
    h.update(variable);
    h.digest()
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads the variable header's fields, refusing anything that runs past its end.
pub(crate) struct Cursor<'a> {
    pub bytes: &'a [u8],
    pub pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            format!("header field '{what}' ({n} bytes at header offset {}) runs past the header's end", self.pos)
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }

    pub fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    pub fn str(&mut self, what: &str) -> Result<String, String> {
        let n = self.u32(what)? as usize;
        if n > MAX_HEADER_STRING {
            return Err(format!("header string '{what}' is {n} bytes (limit {MAX_HEADER_STRING})"));
        }
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("header string '{what}' is not UTF-8"))
    }
}
