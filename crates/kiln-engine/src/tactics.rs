//! Tactic selection: of a layer's candidate implementations, keep the fastest on the profile's
//! opt shapes (kernel auto-tuning). Timings are remembered in a timing cache keyed by the
//! layer's signature and the device, so a rebuild skips the timing and picks the same tactics.

use crate::backend::{Arg, Backend, LayerDesc, LayerIo, OutputSlot, Produced, Tactic};
use crate::config::{BuilderConfig, MAX_OPT_LEVEL};
use crate::timing_cache::TimingCache;
use crate::EngineError;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_ir::{spec, Attribute, DType, Tensor, TensorData, Value, ValueType};
use std::time::Instant;

/// Runs per tactic when timing; the fastest is kept.
const TIMING_RUNS: usize = 5;

pub(crate) struct TacticSelector<'a> {
    backend: &'a dyn Backend,
    config: &'a BuilderConfig,
    cache: TimingCache,
    device: String,
    progress: Option<ProgressBar>,
    timed: usize,
    cached: usize,
}

impl<'a> TacticSelector<'a> {
    pub fn new(backend: &'a dyn Backend, config: &'a BuilderConfig) -> Result<Self, EngineError> {
        let cache = match &config.timing_cache {
            Some(path) => TimingCache::load(path)?,
            None => TimingCache::default(),
        };
        let progress = (config.progress && config.opt_level >= MAX_OPT_LEVEL).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} timing tactics: {pos} layers timed, {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        });
        Ok(TacticSelector { backend, config, cache, device: backend.device(), progress, timed: 0, cached: 0 })
    }

    /// The tactic for one layer.
    pub fn choose(&mut self, desc: &LayerDesc, candidates: Vec<Tactic>) -> Result<String, EngineError> {
        let layer = desc.layer;
        let fail = |message: String| EngineError::Layer { layer: layer.name.clone(), op: layer.op.clone(), message };
        if candidates.is_empty() {
            return Err(fail(format!("the {} backend has no implementation of {}", self.backend.name(), layer.op)));
        }
        let fitting: Vec<Tactic> = candidates
            .iter()
            .filter(|t| {
                let fits = t.workspace_bytes <= self.config.workspace_bytes;
                if !fits {
                    tracing::info!(
                        layer = %layer.name, tactic = %t.name, needs = t.workspace_bytes, limit = self.config.workspace_bytes,
                        "tactic skipped: needs more workspace than the limit"
                    );
                }
                fits
            })
            .cloned()
            .collect();
        let Some(first) = fitting.first() else {
            return Err(fail(format!(
                "every tactic needs more workspace than the limit of {} bytes (smallest: {} bytes)",
                self.config.workspace_bytes,
                candidates.iter().map(|t| t.workspace_bytes).min().unwrap_or(0)
            )));
        };
        if fitting.len() == 1 || self.config.opt_level < MAX_OPT_LEVEL {
            return Ok(first.name.clone());
        }
        let key = signature(desc, &fitting, &self.device);
        if let Some(t) = self.cache.get(&key).filter(|t| fitting.iter().any(|f| &f.name == t)) {
            self.cached += 1;
            return Ok(t.to_string());
        }
        if let Some(first) = fitting.first().and_then(|t| self.backend.time_tactic(desc, &t.name)) {
            // The backend times on its own device; each tactic once (the backend repeats).
            let mut times = Vec::new();
            for (k, t) in fitting.iter().enumerate() {
                let r = if k == 0 {
                    first.clone()
                } else {
                    self.backend.time_tactic(desc, &t.name).unwrap_or(Err("not timed".into()))
                };
                match r {
                    Ok(us) => times.push((t.name.clone(), us)),
                    Err(e) => {
                        tracing::info!(layer = %layer.name, tactic = %t.name, error = %e, "tactic failed while timing; skipped")
                    }
                }
            }
            let best = times.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map(|t| t.0.clone());
            let best = best.ok_or_else(|| fail("every tactic failed while timing".into()))?;
            tracing::debug!(layer = %layer.name, chosen = %best, ?times, "tactics timed on the device");
            self.cache.insert(key, best.clone(), times);
            self.timed += 1;
            return Ok(best);
        }
        let inputs = timing_inputs(desc).map_err(fail)?;
        let times = time_tactics(self.backend, desc, &fitting, &inputs);
        let mut best: Option<(f64, &Tactic)> = None;
        for (t, r) in fitting.iter().zip(&times) {
            match r {
                Ok(us) => {
                    if best.is_none_or(|(b, _)| *us < b) {
                        best = Some((*us, t));
                    }
                }
                Err(e) => {
                    tracing::info!(layer = %layer.name, tactic = %t.name, error = %e, "tactic failed while timing; skipped")
                }
            }
        }
        let times: Vec<(String, f64)> =
            fitting.iter().zip(&times).filter_map(|(t, r)| r.as_ref().ok().map(|us| (t.name.clone(), *us))).collect();
        let (_, tactic) = best.ok_or_else(|| fail("every tactic failed while timing".into()))?;
        tracing::debug!(layer = %layer.name, chosen = %tactic.name, ?times, "tactics timed");
        self.cache.insert(key, tactic.name.clone(), times);
        self.timed += 1;
        if let Some(bar) = &self.progress {
            bar.set_position(self.timed as u64);
            bar.set_message(format!("{} from the cache", self.cached));
        }
        Ok(tactic.name.clone())
    }

    /// Write the timing cache back and close the progress bar.
    pub fn finish(self) -> Result<(), EngineError> {
        if let Some(bar) = &self.progress {
            bar.finish_and_clear();
        }
        tracing::info!(timed = self.timed, from_cache = self.cached, "tactic selection done");
        match &self.config.timing_cache {
            Some(path) if self.timed > 0 => self.cache.save(path),
            _ => Ok(()),
        }
    }
}

/// A layer's identity for the timing cache: op, attributes (not its name or fused-node list),
/// input types at the opt shapes, weight shapes, the candidates and the device.
fn signature(desc: &LayerDesc, tactics: &[Tactic], device: &str) -> String {
    let mut text = format!("{}|{}|", desc.layer.op, device);
    for (name, attr) in desc.layer.attrs.iter() {
        if name != spec::FUSED_NODES_ATTR {
            let value = match attr {
                Attribute::Graph(_) | Attribute::Graphs(_) => "graph".to_string(),
                other => format!("{other:?}"),
            };
            text.push_str(&format!("{name}={value};"));
        }
    }
    for (ty, w) in desc.input_types.iter().zip(&desc.weights) {
        match (ty, w) {
            (_, Some(w)) => text.push_str(&format!("w:{}{:?};", w.dtype, w.shape)),
            (Some(t), None) => text.push_str(&format!("{t};")),
            (None, None) => text.push_str("-;"),
        }
    }
    for t in tactics {
        text.push_str(&format!("t:{};", t.name));
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// Random activations of the opt shapes (values in [-1, 1) for floats, zeros for integers,
/// which are valid indices), so a tactic can be timed without running the whole network.
fn timing_inputs(desc: &LayerDesc) -> Result<Vec<Option<Value>>, String> {
    let mut seed = 0x9e3779b97f4a7c15u64;
    desc.input_types
        .iter()
        .zip(&desc.weights)
        .map(|(ty, w)| {
            if w.is_some() {
                return Ok(None);
            }
            let Some(ValueType::Tensor(tt)) = ty else { return Ok(None) };
            let Some(shape) = tt.shape.as_deref().and_then(kiln_ir::concrete) else {
                return Err("input shape unknown at the opt shapes".to_string());
            };
            let n = kiln_ir::checked_numel(&shape).map_err(|e| e.to_string())?;
            let data = match tt.dtype {
                DType::F32 => TensorData::F32(
                    (0..n)
                        .map(|_| {
                            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                        })
                        .collect(),
                ),
                other => TensorData::zeros(other, n),
            };
            Tensor::new(shape, data).map(|t| Some(Value::Tensor(t))).map_err(|e| e.to_string())
        })
        .collect()
}

/// Each tactic's best time over a few runs, in microseconds (after one warm-up run each).
///
/// The candidates take turns — one run of each per round — so that a burst of other work on
/// the machine slows every candidate alike instead of whichever happened to be timed then (a
/// shared machine picked a tactic 30 % slower that way). A tactic clearly slower than the best
/// so far (3×) is given up on after its first timed run: it cannot win, and timing a slow
/// reference kernel in full would dominate the build.
///
/// The warm-up run keeps its results as values; the timed runs write into buffers of those
/// results' sizes, as an engine writes into its arena. Otherwise a kernel that writes its
/// output would pay for a fresh, page-faulting allocation per run, while one that returns a
/// shared value (a reference Split) would copy nothing: timing would favour the wrong one.
fn time_tactics(
    backend: &dyn Backend,
    desc: &LayerDesc,
    tactics: &[Tactic],
    inputs: &[Option<Value>],
) -> Vec<Result<f64, String>> {
    let mut candidates: Vec<Result<Candidate, String>> = tactics
        .iter()
        .map(|t| {
            let mut c = Candidate {
                kernel: backend.instantiate(desc, &t.name)?,
                slots: None,
                warm_up: 0.0,
                best: f64::INFINITY,
            };
            c.warm_up = c.run(desc, inputs)?; // also sizes the output buffers
            Ok(c)
        })
        .collect();
    let fastest_warm_up = candidates.iter().flatten().map(|c| c.warm_up).fold(f64::INFINITY, f64::min);
    for round in 0..TIMING_RUNS {
        let leader = candidates.iter().flatten().map(|c| c.best).fold(f64::INFINITY, f64::min);
        for c in candidates.iter_mut() {
            let Ok(cand) = c else { continue };
            let hopeless = if round == 0 { cand.warm_up > 3.0 * fastest_warm_up } else { cand.best > 3.0 * leader };
            if hopeless {
                continue;
            }
            match cand.run(desc, inputs) {
                Ok(us) => cand.best = cand.best.min(us),
                Err(e) => *c = Err(e),
            }
        }
    }
    // The fastest run: other work on the machine only ever adds time, so the minimum is the
    // least disturbed estimate.
    candidates.into_iter().map(|c| c.map(|c| if c.best.is_finite() { c.best } else { c.warm_up })).collect()
}

/// One tactic being timed: its kernel and, after the warm-up, its output buffers.
struct Candidate {
    kernel: std::sync::Arc<dyn crate::backend::LayerKernel>,
    /// Per output: an 8-byte-aligned buffer of the warm-up result's size.
    slots: Option<Vec<Option<Vec<u64>>>>,
    /// The warm-up run's time (what a tactic given up on before any timed run reports).
    warm_up: f64,
    best: f64,
}

impl Candidate {
    /// One run, in microseconds (the first one keeps its results as values and sizes `slots`).
    fn run(&mut self, desc: &LayerDesc, inputs: &[Option<Value>]) -> Result<f64, String> {
        let args: Vec<Option<Arg>> = inputs
            .iter()
            .zip(&desc.weights)
            .map(|(v, w)| match (v, w) {
                (Some(v), _) => Some(Arg::Value(v)),
                (None, Some(w)) => Some(Arg::Bytes { dtype: w.dtype, shape: w.shape, bytes: w.bytes }),
                (None, None) => None,
            })
            .collect();
        let warm_up = self.slots.is_none();
        let outputs = match &mut self.slots {
            None => desc.layer.outputs.iter().map(|o| o.map(|_| OutputSlot::Heap)).collect(),
            Some(bufs) => desc
                .layer
                .outputs
                .iter()
                .zip(bufs.iter_mut())
                .map(|(o, buf)| {
                    o.map(|_| match buf {
                        Some(b) => OutputSlot::Arena { bytes: bytemuck::cast_slice_mut(b.as_mut_slice()) },
                        None => OutputSlot::Heap,
                    })
                })
                .collect(),
        };
        let results = desc.layer.outputs.iter().map(|_| None).collect();
        let mut io = LayerIo { inputs: args, captures: Vec::new(), outputs, results };
        let start = Instant::now();
        self.kernel.run(&mut io)?;
        let us = start.elapsed().as_secs_f64() * 1e6;
        if warm_up {
            let sizes: Vec<Option<Vec<u64>>> = io
                .results
                .iter()
                .map(|r| match r {
                    Some(Produced::Value(Value::Tensor(t))) => {
                        Some(vec![0u64; (t.len() * t.dtype().size()).div_ceil(8)])
                    }
                    _ => None,
                })
                .collect();
            drop(io);
            self.slots = Some(sizes);
        }
        Ok(us)
    }
}
