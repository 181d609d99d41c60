//! The bytes a plan lives in (a memory map of the file, or an aligned in-memory copy) and the
//! weight views handed out from them without copying.

use super::format::WEIGHT_ALIGN;
use super::PlanError;
use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;

/// 64 bytes, 64-byte aligned: the unit of the in-memory fallback buffer, so that blob offsets
/// aligned in the file are aligned in memory too.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Align64([u8; WEIGHT_ALIGN]);

// SAFETY: a plain byte array with no padding (size 64 == align 64); every bit pattern is valid.
unsafe impl bytemuck::Zeroable for Align64 {}
// SAFETY: as above; `Copy` and `'static`.
unsafe impl bytemuck::Pod for Align64 {}

enum Bytes {
    /// The file, mapped read-only. The map starts at a page boundary.
    Mapped(memmap2::Mmap),
    /// An owned copy in 64-byte aligned storage; `len` bytes of it are used.
    Owned { buf: Vec<Align64>, len: usize },
}

/// The whole plan's bytes and the name used in error messages. Shared by the plan, its weight
/// store and every view.
pub(crate) struct Backing {
    name: String,
    bytes: Bytes,
}

impl Backing {
    pub(crate) fn mapped(name: String, map: memmap2::Mmap) -> Backing {
        Backing { name, bytes: Bytes::Mapped(map) }
    }

    /// Copies `data` into 64-byte aligned storage.
    pub(crate) fn copied(name: String, data: &[u8]) -> Backing {
        let mut buf = vec![Align64([0; WEIGHT_ALIGN]); data.len().div_ceil(WEIGHT_ALIGN)];
        bytemuck::cast_slice_mut::<Align64, u8>(&mut buf)[..data.len()].copy_from_slice(data);
        Backing { name, bytes: Bytes::Owned { buf, len: data.len() } }
    }

    /// Lays `blobs` out at 64-byte aligned offsets in one aligned buffer; returns their ranges.
    fn from_blobs(name: String, blobs: &[&[u8]]) -> (Backing, Vec<Range<usize>>) {
        let mut ranges = Vec::with_capacity(blobs.len());
        let mut end = 0usize;
        for b in blobs {
            let start = end.div_ceil(WEIGHT_ALIGN) * WEIGHT_ALIGN;
            end = start + b.len();
            ranges.push(start..end);
        }
        let mut buf = vec![Align64([0; WEIGHT_ALIGN]); end.div_ceil(WEIGHT_ALIGN)];
        let bytes = bytemuck::cast_slice_mut::<Align64, u8>(&mut buf);
        for (b, r) in blobs.iter().zip(&ranges) {
            bytes[r.clone()].copy_from_slice(b);
        }
        (Backing { name, bytes: Bytes::Owned { buf, len: end } }, ranges)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped(m) => m,
            Bytes::Owned { buf, len } => &bytemuck::cast_slice(buf)[..*len],
        }
    }

    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped(_))
    }
}

/// A plan's weight blobs: `Send + Sync`, cheap to clone (two reference counts), each blob a
/// 64-byte aligned `&[u8]` into the mapped file (or the aligned in-memory copy). Engines keep
/// [`WeightView`]s into it instead of copying weights out.
#[derive(Clone)]
pub struct WeightStore {
    backing: Arc<Backing>,
    blobs: Arc<[Range<usize>]>,
}

impl WeightStore {
    pub(crate) fn new(backing: Arc<Backing>, blobs: Vec<Range<usize>>) -> WeightStore {
        WeightStore { backing, blobs: blobs.into() }
    }

    /// A store over in-memory blobs (an engine built in this process, never written to a file).
    /// Copies them once into one 64-byte aligned buffer.
    pub fn from_blobs(blobs: &[&[u8]]) -> WeightStore {
        let (backing, ranges) = Backing::from_blobs("<memory>".to_string(), blobs);
        WeightStore::new(Arc::new(backing), ranges)
    }

    /// Number of blobs.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Total bytes of all blobs (without padding).
    pub fn total_bytes(&self) -> usize {
        self.blobs.iter().map(|r| r.len()).sum()
    }

    /// Whether the blobs are views into a memory-mapped file (as opposed to an in-memory copy).
    pub fn is_mapped(&self) -> bool {
        self.backing.is_mapped()
    }

    /// Blob `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.blobs.get(i).map(|r| &self.backing.as_slice()[r.clone()])
    }

    /// Blob `i`; an index past the end (say, from a corrupt metadata section) is an error
    /// naming the file.
    pub fn weight(&self, i: usize) -> Result<&[u8], PlanError> {
        self.get(i).ok_or_else(|| self.out_of_range(i))
    }

    /// Blob `i` as a slice of `T`, after checking that its length is a whole number of `T`s and
    /// its address is aligned for `T` (always true for alignments up to 64). The bytes are
    /// reinterpreted in the host's byte order: plans hold little-endian data, as every host
    /// kiln targets is.
    pub fn typed<T: bytemuck::Pod>(&self, i: usize) -> Result<&[T], PlanError> {
        cast(&self.backing, i, self.weight(i)?)
    }

    /// An owned handle on blob `i` (keeps the file mapped while it lives).
    pub fn view(&self, i: usize) -> Result<WeightView, PlanError> {
        let range = self.blobs.get(i).cloned().ok_or_else(|| self.out_of_range(i))?;
        Ok(WeightView { backing: self.backing.clone(), index: i, range })
    }

    fn out_of_range(&self, i: usize) -> PlanError {
        PlanError::corrupt(self.backing.name(), format!("weight {i} requested, the plan has {}", self.blobs.len()))
    }
}

impl fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightStore")
            .field("file", &self.backing.name())
            .field("blobs", &self.blobs.len())
            .field("bytes", &self.total_bytes())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

/// One weight blob, owned: `Send + Sync`, cheap to clone, derefs to its bytes. Holding one
/// keeps the plan's bytes (the mapping) alive.
#[derive(Clone)]
pub struct WeightView {
    backing: Arc<Backing>,
    index: usize,
    range: Range<usize>,
}

impl WeightView {
    pub fn bytes(&self) -> &[u8] {
        &self.backing.as_slice()[self.range.clone()]
    }

    /// The blob's index in its store.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The bytes as a slice of `T` (see [`WeightStore::typed`]).
    pub fn typed<T: bytemuck::Pod>(&self) -> Result<&[T], PlanError> {
        cast(&self.backing, self.index, self.bytes())
    }
}

impl Deref for WeightView {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl AsRef<[u8]> for WeightView {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl fmt::Debug for WeightView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WeightView({} weight {}, {} bytes)", self.backing.name(), self.index, self.range.len())
    }
}

fn cast<'a, T: bytemuck::Pod>(backing: &Backing, i: usize, bytes: &'a [u8]) -> Result<&'a [T], PlanError> {
    bytemuck::try_cast_slice(bytes).map_err(|e| {
        PlanError::corrupt(
            backing.name(),
            format!("weight {i} ({} bytes) cannot be read as {}: {e}", bytes.len(), std::any::type_name::<T>()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn stores_and_views_are_send_sync_and_clone() {
        assert_send_sync::<WeightStore>();
        assert_send_sync::<WeightView>();
    }

    #[test]
    fn in_memory_blobs_are_aligned_and_typed() {
        let a: Vec<u8> = (0..10).collect();
        let b: Vec<u8> = 1.5f32.to_le_bytes().repeat(3);
        let store = WeightStore::from_blobs(&[&a, &[], &b]);
        assert_eq!(store.len(), 3);
        assert!(!store.is_mapped());
        assert_eq!(store.weight(0).unwrap(), &a[..]);
        assert_eq!(store.weight(1).unwrap(), &[] as &[u8]);
        assert_eq!(store.typed::<f32>(2).unwrap(), &[1.5, 1.5, 1.5]);
        for i in 0..3 {
            assert_eq!(store.weight(i).unwrap().as_ptr() as usize % WEIGHT_ALIGN, 0);
        }
        assert!(matches!(store.weight(3), Err(PlanError::Corrupt { .. })));
        assert!(store.typed::<f32>(0).is_err(), "10 bytes are not whole f32s");
        let view = store.view(2).unwrap();
        drop(store);
        assert_eq!(view.typed::<u32>().unwrap()[0], 1.5f32.to_bits());
        assert_eq!(view.len(), 12);
    }
}
