//! The model argument of `run`, `bench`, `inspect` and `compare`: a plan file (loaded) or an
//! ONNX file (imported and built with the build flags). The two are told apart by content — a
//! plan starts with the magic bytes `KILNPLAN` — not by extension.

use crate::shapes::{declared_inputs, format_dims, profile_from_flags, ProfileFlags};
use anyhow::{anyhow, bail, Context, Result};
use kiln::engine::{parse_bytes, MAX_OPT_LEVEL};
use kiln::{BuilderConfig, Engine, Network};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first bytes of every plan file.
pub const PLAN_MAGIC: &[u8; 8] = b"KILNPLAN";

/// The flags that configure a build (`kiln build`, and `bench`/`compare`/`inspect` given an
/// ONNX file).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct BuildFlags {
    /// Allow fp16 layers where the backend has them (fp32 is always allowed).
    #[arg(long)]
    pub fp16: bool,
    /// Allow bf16 layers where the backend has them.
    #[arg(long)]
    pub bf16: bool,
    #[command(flatten)]
    pub profile: ProfileFlags,
    /// Read tactic timings from this file and write new ones back (created if missing).
    #[arg(long, value_name = "FILE")]
    pub timing_cache: Option<PathBuf>,
    /// Scratch memory one layer's tactic may use: 1G, 512M, 4096 [default: 1G].
    #[arg(long, value_name = "SIZE")]
    pub workspace: Option<String>,
    /// 0: the imported graph as is; 1: graph optimization and fusion, default tactics;
    /// 2: everything, tactics timed at the opt shapes [default: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=MAX_OPT_LEVEL as i64))]
    pub opt_level: Option<u8>,
    /// No progress bar while timing tactics.
    #[arg(long)]
    pub quiet: bool,
    /// Device to build for: auto (the GPU where one is found, else the CPU), cpu or cuda.
    /// A plan always runs on the device it was built for.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: kiln::Device,
    /// Allow TF32 (tensor-core fp32 with 10-bit mantissas) for fp32 matrix products on the GPU.
    #[arg(long)]
    pub tf32: bool,
    /// Keep structured zeros: do not remove pruned channels, attention heads or provably
    /// constant layers.
    #[arg(long)]
    pub no_prune: bool,
}

impl BuildFlags {
    /// Whether any flag that changes a build was given (they do nothing for a plan).
    fn any_given(&self) -> bool {
        let p = &self.profile;
        self.fp16
            || self.bf16
            || self.tf32
            || self.timing_cache.is_some()
            || self.workspace.is_some()
            || self.opt_level.is_some()
            || self.no_prune
            || !(p.fixed.is_empty() && p.min.is_empty() && p.opt.is_empty() && p.max.is_empty())
    }

    /// The builder configuration for `net`; `fallback` gives the shape of inputs the profile
    /// flags leave out (see [`profile_from_flags`]).
    pub fn config(&self, net: &Network, fallback: &HashMap<String, Vec<usize>>) -> Result<BuilderConfig> {
        let workspace =
            self.workspace.as_deref().map(parse_bytes).transpose().map_err(|e| anyhow!("--workspace {e}"))?;
        let mut config = BuilderConfig {
            allow_fp16: self.fp16,
            allow_bf16: self.bf16,
            allow_tf32: self.tf32,
            profile: profile_from_flags(&self.profile, &declared_inputs(net), fallback)?,
            timing_cache: self.timing_cache.clone(),
            progress: !self.quiet,
            prune: !self.no_prune,
            ..BuilderConfig::default()
        };
        if let Some(bytes) = workspace {
            config.workspace_bytes = bytes;
        }
        if let Some(level) = self.opt_level {
            config.opt_level = level;
        }
        Ok(config)
    }
}

/// Whether `path` holds a plan (by its magic bytes).
pub fn is_plan(path: &Path) -> Result<bool> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut head = [0u8; 8];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]).with_context(|| format!("reading {}", path.display()))? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n == head.len() && &head == PLAN_MAGIC)
}

/// Load a plan (on the backend it was built for); errors name the file.
pub fn load_plan(path: &Path) -> Result<Engine> {
    kiln::load_plan(path).with_context(|| format!("loading plan {}", path.display()))
}

/// The engine for `model`: a plan is loaded (build flags are ignored, with a warning); an ONNX
/// file is imported and built with `flags`, and a build summary written to `report`.
pub fn load_or_build(
    model: &Path,
    flags: &BuildFlags,
    fallback: &HashMap<String, Vec<usize>>,
    report: &mut dyn Write,
) -> Result<Arc<Engine>> {
    if is_plan(model)? {
        if flags.any_given() {
            eprintln!("warning: {} is a plan; the build flags are ignored", model.display());
        }
        return Ok(Arc::new(load_plan(model)?));
    }
    let built = build_onnx(model, flags, fallback)?;
    built.write_summary(report, model, None)?;
    Ok(Arc::new(built.engine))
}

/// An engine built from an ONNX file, with what the summary reports.
pub struct Built {
    pub engine: Engine,
    pub network: Network,
    pub import_time: Duration,
    pub build_time: Duration,
}

/// Import `model` (which must be ONNX) and build it with `flags`.
pub fn build_onnx(model: &Path, flags: &BuildFlags, fallback: &HashMap<String, Vec<usize>>) -> Result<Built> {
    let t0 = Instant::now();
    let network = kiln::load_onnx(model)?.network;
    let import_time = t0.elapsed();
    let config = flags.config(&network, fallback)?;
    let t1 = Instant::now();
    let engine =
        kiln::build_for(&network, &config, flags.device).with_context(|| format!("building {}", model.display()))?;
    Ok(Built { engine, network, import_time, build_time: t1.elapsed() })
}

impl Built {
    /// The short summary `kiln build` prints: nodes → layers, memory, weights, time.
    pub fn write_summary(&self, w: &mut dyn Write, model: &Path, plan: Option<&Path>) -> Result<()> {
        let g = self.engine.graph();
        let elided = g.layers.iter().filter(|l| l.elided.is_some()).count();
        match plan {
            Some(p) => writeln!(w, "built {} → {}", model.display(), p.display())?,
            None => writeln!(w, "built {}", model.display())?,
        }
        writeln!(
            w,
            "  layers:      {} ONNX nodes → {} engine layers{}",
            g.build.source_layers,
            g.layers.len(),
            if elided > 0 { format!(" ({elided} elided by the memory plan)") } else { String::new() }
        )?;
        writeln!(
            w,
            "  activations: arena {}, peak live {}{}",
            human_bytes(g.arena_bytes),
            human_bytes(g.peak_live_bytes),
            if g.peak_live_bytes > 0 {
                format!(" (arena/peak {:.2})", g.arena_bytes as f64 / g.peak_live_bytes as f64)
            } else {
                String::new()
            }
        )?;
        writeln!(w, "  weights:     {} in {} tensors", human_bytes(self.engine.weight_bytes_total()), g.weights.len())?;
        writeln!(
            w,
            "  cost:        {} params, {:.3} GFLOPs per run",
            g.build.cost.params,
            g.build.cost.flops as f64 / 1e9
        )?;
        match &g.build.pruned {
            Some(p) => writeln!(
                w,
                "  pruned:      {} layer counts changed; params {:.1} %, FLOPs {:.1} % of the unpruned graph (kiln inspect lists them)",
                p.changes.len(),
                100.0 * p.after.params as f64 / p.before.params.max(1) as f64,
                100.0 * p.after.flops as f64 / p.before.flops.max(1) as f64
            )?,
            None if !g.build.prune => writeln!(w, "  pruned:      off (--no-prune)")?,
            None => {}
        }
        for (name, r) in &g.profile {
            if r.min == r.max {
                writeln!(w, "  input:       {name} {}", format_dims(&r.opt))?;
            } else {
                writeln!(
                    w,
                    "  input:       {name} min {} opt {} max {}",
                    format_dims(&r.min),
                    format_dims(&r.opt),
                    format_dims(&r.max)
                )?;
            }
        }
        let mut precisions = vec!["fp32"];
        if g.build.allow_fp16 {
            precisions.push("fp16");
        }
        if g.build.allow_bf16 {
            precisions.push("bf16");
        }
        if g.build.allow_tf32 {
            precisions.push("tf32");
        }
        writeln!(
            w,
            "  config:      {} backend, opt level {}, precisions {}, workspace {}",
            self.engine.backend_name(),
            g.build.opt_level,
            precisions.join("/"),
            human_bytes(g.build.workspace_bytes)
        )?;
        writeln!(
            w,
            "  time:        {} (import {}, build {})",
            human_duration(self.import_time + self.build_time),
            human_duration(self.import_time),
            human_duration(self.build_time)
        )?;
        Ok(())
    }
}

/// `123456` → `120.6 KiB`; under 1 KiB, exact bytes.
pub fn human_bytes(n: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `1.23 s`, or `45.6 ms` under a second.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

/// Refuse a plan where an ONNX file is needed.
pub fn require_onnx(model: &Path, why: &str) -> Result<()> {
    if is_plan(model)? {
        bail!("{} is a plan; {why}", model.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_told_by_their_magic() {
        let dir = std::env::temp_dir().join(format!("kiln-magic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plan = dir.join("model.onnx");
        std::fs::write(&plan, b"KILNPLAN\0\0\0\0").unwrap();
        assert!(is_plan(&plan).unwrap());
        let short = dir.join("short.plan");
        std::fs::write(&short, b"KILN").unwrap();
        assert!(!is_plan(&short).unwrap());
        assert!(is_plan(&dir.join("missing")).is_err());
    }

    #[test]
    fn byte_sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
    }
}
