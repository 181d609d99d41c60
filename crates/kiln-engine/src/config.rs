//! What the builder is asked to do: precisions, workspace, shape profile, timing cache, target,
//! optimization level (TensorRT's `IBuilderConfig`).

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The highest optimization level: every pass and tactic timing.
pub const MAX_OPT_LEVEL: u8 = 2;

/// Builder settings. `Default` is fp32, no workspace limit beyond 1 GiB, no profile (static
/// inputs only), no timing cache, the CPU, and the highest optimization level.
#[derive(Clone, Debug)]
pub struct BuilderConfig {
    /// Reduced precisions the builder may choose per layer; fp32 is always allowed.
    pub allow_fp16: bool,
    pub allow_bf16: bool,
    /// fp32 matrix products on tensor cores (TF32: 10-bit mantissas) where the backend has them.
    pub allow_tf32: bool,
    /// Scratch memory a single layer's tactic may use, in bytes; a tactic needing more is
    /// skipped.
    pub workspace_bytes: usize,
    /// Shape ranges of the inputs with symbolic dimensions.
    pub profile: OptimizationProfile,
    /// Where tactic timings are read from and written to.
    pub timing_cache: Option<PathBuf>,
    /// 0: the imported graph as is (a reference for comparisons); 1: graph simplification and
    /// fusion, default tactics; 2: everything, with tactics timed on the profile's opt shapes.
    pub opt_level: u8,
    /// Show a progress bar while timing tactics.
    pub progress: bool,
    /// Remove structured zeros (pruned channels, attention heads, provably constant layers) and
    /// everything that only fed them (opt level 1 and up; see `kiln_opt::optimize_with`).
    pub prune: bool,
}

impl Default for BuilderConfig {
    fn default() -> Self {
        BuilderConfig {
            allow_fp16: false,
            allow_bf16: false,
            allow_tf32: false,
            workspace_bytes: 1 << 30,
            profile: OptimizationProfile::default(),
            timing_cache: None,
            opt_level: MAX_OPT_LEVEL,
            progress: false,
            prune: true,
        }
    }
}

impl BuilderConfig {
    pub fn precisions(&self) -> crate::backend::Precisions {
        crate::backend::Precisions { fp16: self.allow_fp16, bf16: self.allow_bf16, tf32: self.allow_tf32 }
    }

    /// A stable hash of everything that changes the built engine (not the timing-cache path
    /// or the progress bar), recorded in the plan.
    pub fn hash(&self) -> u64 {
        let mut text = format!(
            "fp16={} bf16={} tf32={} ws={} opt={};",
            self.allow_fp16, self.allow_bf16, self.allow_tf32, self.workspace_bytes, self.opt_level
        );
        // Pruning on is the default; only turning it off changes the text, so hashes of plans
        // built before the switch existed stay valid.
        if !self.prune {
            text.push_str("noprune;");
        }
        for (name, r) in &self.profile.inputs {
            text.push_str(&format!("{name}:{:?}/{:?}/{:?};", r.min, r.opt, r.max));
        }
        xxhash_rust::xxh3::xxh3_64(text.as_bytes())
    }
}

/// Per input with symbolic dimensions: the smallest, typical and largest shape it will be run
/// with. The builder specializes every dimension whose min equals its max, times tactics at the
/// opt shape and sizes the activation arena for the max shape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptimizationProfile {
    pub inputs: BTreeMap<String, ShapeRange>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShapeRange {
    pub min: Vec<usize>,
    pub opt: Vec<usize>,
    pub max: Vec<usize>,
}

impl ShapeRange {
    /// One shape for all three (a static engine for this input).
    pub fn fixed(shape: Vec<usize>) -> Self {
        ShapeRange { min: shape.clone(), opt: shape.clone(), max: shape }
    }

    /// Checks min ≤ opt ≤ max per dimension and equal ranks.
    pub fn validate(&self, input: &str) -> Result<(), String> {
        if self.min.len() != self.opt.len() || self.opt.len() != self.max.len() {
            return Err(format!(
                "input '{input}': min/opt/max shapes have different ranks ({:?}, {:?}, {:?})",
                self.min, self.opt, self.max
            ));
        }
        for (axis, ((lo, mid), hi)) in self.min.iter().zip(&self.opt).zip(&self.max).enumerate() {
            if !(lo <= mid && mid <= hi) {
                return Err(format!("input '{input}': dimension {axis} needs min ≤ opt ≤ max, got {lo}, {mid}, {hi}"));
            }
        }
        Ok(())
    }

    /// Whether `shape` lies within the range.
    pub fn contains(&self, shape: &[usize]) -> bool {
        shape.len() == self.min.len()
            && shape.iter().zip(&self.min).zip(&self.max).all(|((s, lo), hi)| lo <= s && s <= hi)
    }
}

/// Parses a byte size such as `1G`, `512M`, `64K` or `1000` (binary multiples).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: usize = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("'{text}': unknown size suffix '{c}' (use K, M, G or T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: usize = digits.parse().map_err(|_| format!("'{text}' is not a byte size (e.g. 1G, 512M, 4096)"))?;
    n.checked_mul(mult).ok_or_else(|| format!("'{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("1X").is_err());
        assert!(parse_bytes("G").is_err());
        assert!(parse_bytes("99999999999999T").is_err());
    }

    #[test]
    fn ranges_are_checked() {
        let ok = ShapeRange { min: vec![1, 8], opt: vec![4, 8], max: vec![8, 8] };
        ok.validate("x").unwrap();
        assert!(ok.contains(&[2, 8]) && !ok.contains(&[9, 8]) && !ok.contains(&[2]));
        let bad = ShapeRange { min: vec![4], opt: vec![2], max: vec![8] };
        assert!(bad.validate("x").unwrap_err().contains("dimension 0"));
    }

    #[test]
    fn config_hash_tracks_what_changes_the_engine() {
        let a = BuilderConfig::default();
        let mut b = BuilderConfig { timing_cache: Some("x".into()), ..BuilderConfig::default() };
        assert_eq!(a.hash(), b.hash());
        b.allow_fp16 = true;
        assert_ne!(a.hash(), b.hash());
        let c = BuilderConfig { prune: false, ..BuilderConfig::default() };
        assert_ne!(a.hash(), c.hash());
    }
}
