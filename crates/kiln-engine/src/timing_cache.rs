//! The timing cache file: layer signature → chosen tactic (and the measured times), as JSON so
//! it can be read and diffed. A cache from an older format is ignored with a warning; a file
//! that is not a timing cache at all is an error.

use crate::EngineError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

const FORMAT: u32 = 1;
/// A timing cache larger than this is refused rather than read into memory.
const MAX_FILE_BYTES: u64 = 256 << 20;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TimingCache {
    format: u32,
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    tactic: String,
    /// (tactic, median microseconds) as measured.
    times_us: Vec<(String, f64)>,
}

impl TimingCache {
    /// Read a cache; a missing file is an empty cache (it is created on save).
    pub fn load(path: &Path) -> Result<TimingCache, EngineError> {
        let err = |message: String| EngineError::TimingCache { path: path.display().to_string(), message };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(TimingCache { format: FORMAT, ..Default::default() })
            }
            Err(e) => return Err(err(e.to_string())),
        };
        if meta.len() > MAX_FILE_BYTES {
            return Err(err(format!("{} bytes is larger than any timing cache kiln writes", meta.len())));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let cache: TimingCache =
            serde_json::from_str(&text).map_err(|e| err(format!("not a kiln timing cache: {e}")))?;
        if cache.format != FORMAT {
            tracing::warn!(path = %path.display(), found = cache.format, expected = FORMAT, "timing cache of another format ignored");
            return Ok(TimingCache { format: FORMAT, ..Default::default() });
        }
        tracing::info!(path = %path.display(), entries = cache.entries.len(), "timing cache loaded");
        Ok(cache)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(|e| e.tactic.as_str())
    }

    pub fn insert(&mut self, key: String, tactic: String, times_us: Vec<(String, f64)>) {
        self.entries.insert(key, Entry { tactic, times_us });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Write the cache (through a temporary file, so a crash never leaves half a cache).
    pub fn save(&self, path: &Path) -> Result<(), EngineError> {
        let err = |message: String| EngineError::TimingCache { path: path.display().to_string(), message };
        let mut out = TimingCache { format: FORMAT, entries: BTreeMap::new() };
        out.entries = self
            .entries
            .iter()
            .map(|(k, e)| (k.clone(), Entry { tactic: e.tactic.clone(), times_us: e.times_us.clone() }))
            .collect();
        let text = serde_json::to_string_pretty(&out).map_err(|e| err(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let dir = std::env::temp_dir().join(format!("kiln-tc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cache.json");
        let mut c = TimingCache::load(&path).unwrap();
        assert!(c.is_empty());
        c.insert("k1".into(), "gemm".into(), vec![("gemm".into(), 1.5), ("reference".into(), 9.0)]);
        c.save(&path).unwrap();
        let back = TimingCache::load(&path).unwrap();
        assert_eq!(back.get("k1"), Some("gemm"));
        std::fs::write(&path, "not json").unwrap();
        let e = TimingCache::load(&path).unwrap_err().to_string();
        assert!(e.contains("cache.json") && e.contains("not a kiln timing cache"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
