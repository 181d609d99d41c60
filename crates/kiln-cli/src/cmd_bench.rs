//! `kiln bench`: latency and throughput of an engine (trtexec's timing), with an optional
//! per-layer profile and Chrome trace.

use crate::cmd_run::engine_inputs;
use crate::model::{load_or_build, BuildFlags};
use crate::shapes::{format_dims, parse_shapes};
use crate::stats::{median, Summary};
use crate::trace::{self, LayerRecord};
use anyhow::{Context, Result};
use kiln::engine::Profiler;
use kiln::{Engine, Value};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct BenchOptions {
    pub iterations: usize,
    pub warmup: usize,
    pub threads: Option<usize>,
    pub shapes: Vec<String>,
    pub json: bool,
    pub profile: bool,
    pub trace: Option<PathBuf>,
    pub seed: u64,
    /// GPU engines: capture static runs as a CUDA graph.
    pub cuda_graph: bool,
}

/// `--json` output, exactly these keys.
#[derive(Serialize)]
struct JsonReport {
    latency_ms: Summary,
    /// Device engines: GPU time per run from CUDA events (end-to-end latency above includes
    /// the host copies, as trtexec reports them apart).
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_ms: Option<Summary>,
    /// Inferences per second: runs per second × the batch (dimension 0 of the first input).
    throughput_per_s: f64,
}

/// Collects the layer records of the running iteration.
struct Recorder(Arc<Mutex<Vec<LayerRecord>>>);

impl Profiler for Recorder {
    fn layer_done(&mut self, layer: &str, op: &str, start: Instant, elapsed: Duration) {
        let record = LayerRecord { layer: layer.to_string(), op: op.to_string(), start, elapsed };
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(record);
    }
}

/// What the timed iterations measured.
struct Measured {
    latencies: Vec<Duration>,
    /// Per iteration, its layer records (empty unless profiling or tracing).
    layers: Vec<Vec<LayerRecord>>,
    threads: usize,
    /// GPU time of each timed run (device engines).
    device_ms: Vec<f64>,
}

pub fn bench(model: &std::path::Path, opts: &BenchOptions, flags: &BuildFlags) -> Result<()> {
    let shapes = parse_shapes(&opts.shapes)?;
    // With --json, everything but the JSON goes to stderr.
    let mut out: Box<dyn Write> =
        if opts.json { Box::new(std::io::stderr().lock()) } else { Box::new(std::io::stdout().lock()) };
    let engine = load_or_build(model, flags, &shapes, &mut out)?;
    let inputs = engine_inputs(&engine, &HashMap::new(), &shapes, opts.seed)?;
    for (name, value) in &inputs {
        if let Value::Tensor(t) = value {
            writeln!(out, "input  {name}: {} {}", t.dtype(), format_dims(t.shape()))?;
        }
    }
    let measured = match opts.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .context("creating the thread pool")?
            .install(|| measure(&engine, &inputs, opts))?,
        None => measure(&engine, &inputs, opts)?,
    };
    let ms: Vec<f64> = measured.latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let latency = Summary::of(&ms);
    let gpu = (!measured.device_ms.is_empty()).then(|| Summary::of(&measured.device_ms));
    let total_s: f64 = ms.iter().sum::<f64>() / 1e3;
    let runs_per_s = if total_s > 0.0 { ms.len() as f64 / total_s } else { 0.0 };
    let (batch, batch_from) = match inputs.first() {
        Some((name, Value::Tensor(t))) if !t.shape().is_empty() => (t.shape()[0], format!("dim 0 of '{name}'")),
        _ => (1, "no batched input".to_string()),
    };
    let per_s = runs_per_s * batch as f64;

    writeln!(
        out,
        "{} iterations after {} warm-up runs, {} thread{}",
        ms.len(),
        opts.warmup,
        measured.threads,
        if measured.threads == 1 { "" } else { "s" }
    )?;
    if opts.json {
        drop(out);
        let report = JsonReport { latency_ms: latency, gpu_ms: gpu, throughput_per_s: per_s };
        println!("{}", serde_json::to_string(&report)?);
        out = Box::new(std::io::stderr().lock());
    } else {
        writeln!(
            out,
            "latency (ms): min {:.3}  mean {:.3}  median {:.3}  p90 {:.3}  p99 {:.3}",
            latency.min, latency.mean, latency.median, latency.p90, latency.p99
        )?;
        if let Some(g) = &gpu {
            writeln!(
                out,
                "GPU time (ms, CUDA events): min {:.3}  mean {:.3}  median {:.3}  p90 {:.3}  p99 {:.3}",
                g.min, g.mean, g.median, g.p90, g.p99
            )?;
        }
        writeln!(out, "throughput: {runs_per_s:.1} runs/s × batch {batch} ({batch_from}) = {per_s:.1} inferences/s")?;
    }
    if opts.profile {
        write_profile(&mut out, &measured.layers)?;
    }
    if let Some(path) = &opts.trace {
        trace::write(path, &measured.layers)?;
        let events: usize = measured.layers.iter().map(Vec::len).sum();
        writeln!(out, "trace: {events} layer events written to {} (open in ui.perfetto.dev)", path.display())?;
    }
    Ok(())
}

/// Warm up, then time `opts.iterations` runs on one context. Inputs are bound before every
/// run, outside the timed part: the memory plan may reuse an input's arena memory once its
/// last reader ran, so a run can leave the inputs overwritten.
fn measure(engine: &Arc<Engine>, inputs: &[(String, Value)], opts: &BenchOptions) -> Result<Measured> {
    let mut ctx = engine.create_context();
    ctx.set_graph_capture(opts.cuda_graph);
    let bind = |ctx: &mut kiln::ExecutionContext| -> Result<()> {
        for (name, value) in inputs {
            ctx.set_input(name, value)?;
        }
        Ok(())
    };
    for _ in 0..opts.warmup {
        bind(&mut ctx)?;
        ctx.execute()?;
    }
    let records = Arc::new(Mutex::new(Vec::new()));
    let recording = opts.profile || opts.trace.is_some();
    if recording {
        ctx.set_profiler(Some(Box::new(Recorder(records.clone()))));
    }
    let mut latencies = Vec::with_capacity(opts.iterations);
    let mut layers = Vec::new();
    let mut device_ms = Vec::new();
    for _ in 0..opts.iterations {
        bind(&mut ctx)?;
        let t = Instant::now();
        ctx.execute()?;
        latencies.push(t.elapsed());
        if let Some(ms) = ctx.last_device_ms() {
            device_ms.push(ms);
        }
        if recording {
            layers.push(std::mem::take(&mut *records.lock().unwrap_or_else(|e| e.into_inner())));
        }
    }
    Ok(Measured { latencies, layers, threads: rayon::current_num_threads(), device_ms })
}

/// Per layer: the median of its times over the iterations and its share of the sum of the
/// medians, slowest first.
fn write_profile(out: &mut dyn Write, iterations: &[Vec<LayerRecord>]) -> Result<()> {
    let mut order: Vec<(String, String)> = Vec::new();
    let mut times: HashMap<String, Vec<f64>> = HashMap::new();
    for rec in iterations.iter().flatten() {
        let entry = times.entry(rec.layer.clone()).or_insert_with(|| {
            order.push((rec.layer.clone(), rec.op.clone()));
            Vec::new()
        });
        entry.push(rec.elapsed.as_secs_f64() * 1e3);
    }
    let mut rows: Vec<(String, String, f64)> =
        order.into_iter().map(|(layer, op)| (op, layer.clone(), median(&times[&layer]))).collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    let total: f64 = rows.iter().map(|r| r.2).sum();
    let w_name = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0).max(5);
    let w_op = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(2);
    writeln!(out, "per-layer time (median over {} iterations):", iterations.len())?;
    writeln!(out, "  {:<w_name$}  {:<w_op$}  {:>10}  {:>6}", "layer", "op", "median ms", "share")?;
    for (op, layer, ms) in &rows {
        let share = if total > 0.0 { 100.0 * ms / total } else { 0.0 };
        writeln!(out, "  {layer:<w_name$}  {op:<w_op$}  {ms:>10.4}  {share:>5.1}%")?;
    }
    writeln!(out, "  {:<w_name$}  {:<w_op$}  {total:>10.4}  100.0%", "total", "")?;
    Ok(())
}
