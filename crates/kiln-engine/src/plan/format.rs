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
//!                   kind (u32), reserved (u32, zero), offset (u64), length (u64), checksum (u64)
//! sections, in this order, each at the first 64-byte aligned offset after the previous one
//! (the header for the first), zero bytes in the gaps, the file ending where the last ends:
//!   metadata      caller's bytes (the engine's serialized layers, tactics, memory plan)
//!   weight table  count (u64), then per blob: offset (u64, from the weights section start,
//!                 a multiple of 64), length (u64); ascending and non-overlapping
//!   weights       the blobs at their offsets, zero padding between them
//! ```
//!
//! A section's checksum is chunked: xxh3_64 of each 4 MiB piece of the section (the last one
//! shorter), then xxh3_64 of those digests as little-endian u64s, so the loader can verify the
//! pieces of a large weights section on several threads. The header checksum (plain xxh3_64)
//! covers the section table, which holds each section's checksum, so every byte of the file is
//! checked: the padding gaps by being required to be zero.

use std::sync::OnceLock;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

pub const MAGIC: [u8; 8] = *b"KILNPLAN";
/// The plan format this kiln writes and reads. Bump on any layout change, including a change
/// of the engine metadata's types (postcard is not self-describing, and the kiln version does
/// not change between builds of one release). 3: weights may be stored packed for a tactic
/// (`WeightMeta::packed_for`).
pub const FORMAT_VERSION: u32 = 3;
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

/// Piece size of the chunked section checksum (part of the format).
pub(crate) const HASH_CHUNK: usize = 4 << 20;
/// Most threads one checksum verification uses.
const MAX_HASH_THREADS: usize = 8;

/// The chunked checksum of `data` (see the module docs), computed on up to
/// `available_parallelism` threads (at most 8) when there are several chunks; on the calling
/// thread alone if no thread can be started.
pub(crate) fn section_checksum(data: &[u8]) -> u64 {
    static THREADS: OnceLock<usize> = OnceLock::new();
    let chunks = data.len().div_ceil(HASH_CHUNK);
    let threads =
        *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_HASH_THREADS));
    let mut digests = vec![0u64; chunks];
    let hash_all = |digests: &mut [u64], data: &[u8]| {
        for (d, c) in digests.iter_mut().zip(data.chunks(HASH_CHUNK)) {
            *d = xxh3_64(c);
        }
    };
    let threads = threads.min(chunks);
    let parallel_ok = threads > 1
        && std::thread::scope(|s| {
            let per = chunks.div_ceil(threads);
            let mut groups = digests.chunks_mut(per).zip(data.chunks(per * HASH_CHUNK));
            let first = groups.next();
            for (ds, cs) in groups {
                let spawned = std::thread::Builder::new()
                    .name("kiln-plan-verify".into())
                    .spawn_scoped(s, move || hash_all(ds, cs));
                if spawned.is_err() {
                    return false;
                }
            }
            if let Some((ds, cs)) = first {
                hash_all(ds, cs);
            }
            true
        });
    if !parallel_ok {
        hash_all(&mut digests, data);
    }
    combine(&digests)
}

fn combine(digests: &[u64]) -> u64 {
    let mut h = Xxh3::new();
    for d in digests {
        h.update(&d.to_le_bytes());
    }
    h.digest()
}

/// [`section_checksum`] over data fed in pieces (the writer's padding and blobs).
pub(crate) struct ChunkedHasher {
    current: Xxh3,
    filled: usize,
    digests: Vec<u64>,
}

impl ChunkedHasher {
    pub fn new() -> ChunkedHasher {
        ChunkedHasher { current: Xxh3::new(), filled: 0, digests: Vec::new() }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = (HASH_CHUNK - self.filled).min(data.len());
            self.current.update(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == HASH_CHUNK {
                self.digests.push(self.current.digest());
                self.current.reset();
                self.filled = 0;
            }
        }
    }

    pub fn finish(mut self) -> u64 {
        if self.filled > 0 {
            self.digests.push(self.current.digest());
        }
        combine(&self.digests)
    }
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
