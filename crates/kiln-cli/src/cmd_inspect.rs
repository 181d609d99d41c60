//! `kiln inspect`: what an engine is made of — its layers with the ONNX nodes each one fused,
//! precision and tactic; activation and weight memory (TensorRT's engine inspector).

use crate::model::{human_bytes, load_or_build, BuildFlags};
use crate::shapes::format_dims;
use anyhow::Result;
use kiln::engine::Elision;
use kiln::Engine;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// `--json` output; the first keys are the stable interface, the rest may grow.
#[derive(Serialize)]
struct Report {
    layers: Vec<LayerReport>,
    /// Bytes of the activation arena each execution context allocates.
    activation_bytes: usize,
    weight_bytes: usize,
    /// The largest total of activations alive at one time (the arena's lower bound).
    peak_live_bytes: usize,
    weight_count: usize,
    backend: String,
    opt_level: u8,
    /// Layers of the network the engine was built from.
    source_layers: usize,
    inputs: Vec<IoReport>,
    outputs: Vec<IoReport>,
    /// Parameters and FLOPs of the engine's network at the opt shapes.
    params: u64,
    flops: u64,
    /// Whether pruning was enabled for the build.
    prune: bool,
    /// What pruning removed: per-layer changes, parameters and FLOPs before and after (`null`
    /// when off or nothing was removed).
    pruned: Option<kiln::opt::PruneReport>,
    /// Weights stored in a tactic's own layout (packed at build time) instead of the ONNX one.
    packed_weights: Vec<PackedWeightReport>,
}

#[derive(Serialize)]
struct PackedWeightReport {
    name: String,
    /// The tactic whose kernel reads it.
    tactic: String,
    /// Bytes of the packed form.
    bytes: usize,
}

#[derive(Serialize)]
struct LayerReport {
    name: String,
    /// The operator.
    kind: String,
    fused_nodes: Vec<String>,
    precision: String,
    tactic: String,
    /// `null`, or why the layer costs nothing at run time: "view" or "concat".
    elided: Option<&'static str>,
    outputs: Vec<String>,
}

#[derive(Serialize)]
struct IoReport {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    /// Shape range (inputs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    min: Option<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    opt: Option<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max: Option<Vec<usize>>,
}

pub fn inspect(model: &Path, json: bool, flags: &BuildFlags) -> Result<()> {
    // With --json, a build summary (ONNX input) goes to stderr so stdout is only the JSON.
    let engine = if json {
        load_or_build(model, flags, &HashMap::new(), &mut std::io::stderr().lock())?
    } else {
        load_or_build(model, flags, &HashMap::new(), &mut std::io::stdout().lock())?
    };
    let report = report(&engine);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&engine, &report);
    }
    Ok(())
}

fn report(engine: &Engine) -> Report {
    let g = engine.graph();
    let layers = g
        .layers
        .iter()
        .map(|el| LayerReport {
            name: el.layer.name.clone(),
            kind: el.layer.op.clone(),
            fused_nodes: kiln::ir::spec::fused_nodes(&el.layer),
            precision: el.precision.to_string(),
            tactic: el.tactic.clone(),
            elided: el.elided.map(|e| match e {
                Elision::View => "view",
                Elision::Concat => "concat",
            }),
            outputs: el.layer.outputs.iter().flatten().map(|id| g.tensors[id.0].name.clone()).collect(),
        })
        .collect();
    let type_of = |name: &str| engine.tensor_type(name).map_or_else(|| "?".to_string(), |t| t.to_string());
    let inputs = engine
        .input_names()
        .into_iter()
        .map(|name| {
            let range = g.profile.get(name);
            IoReport {
                name: name.to_string(),
                ty: type_of(name),
                min: range.map(|r| r.min.clone()),
                opt: range.map(|r| r.opt.clone()),
                max: range.map(|r| r.max.clone()),
            }
        })
        .collect();
    let outputs = engine
        .output_names()
        .into_iter()
        .map(|name| IoReport { name: name.to_string(), ty: type_of(name), min: None, opt: None, max: None })
        .collect();
    Report {
        layers,
        activation_bytes: g.arena_bytes,
        weight_bytes: engine.weight_bytes_total(),
        peak_live_bytes: g.peak_live_bytes,
        weight_count: g.weights.len(),
        backend: engine.backend_name().to_string(),
        opt_level: g.build.opt_level,
        source_layers: g.build.source_layers,
        inputs,
        outputs,
        params: g.build.cost.params,
        flops: g.build.cost.flops,
        prune: g.build.prune,
        pruned: g.build.pruned.clone(),
        packed_weights: g
            .weights
            .iter()
            .filter_map(|w| {
                let tactic = w.packed_for.clone()?;
                Some(PackedWeightReport { name: w.name.clone(), tactic, bytes: w.bytes })
            })
            .collect(),
    }
}

/// A percentage of `before` (100 % when before is 0).
fn percent(after: u64, before: u64) -> f64 {
    if before == 0 {
        100.0
    } else {
        100.0 * after as f64 / before as f64
    }
}

/// The pruning summary in words: totals, then the changed layers.
pub fn prune_summary(p: &kiln::opt::PruneReport) -> String {
    let mut s = format!(
        "pruned: {} layer counts changed, {} → {} layers; params {} → {} ({:.1} %), FLOPs {:.3} G → {:.3} G ({:.1} %)",
        p.changes.len(),
        p.layers_before,
        p.layers_after,
        p.before.params,
        p.after.params,
        percent(p.after.params, p.before.params),
        p.before.flops as f64 / 1e9,
        p.after.flops as f64 / 1e9,
        percent(p.after.flops, p.before.flops),
    );
    if p.before.unknown_layers > 0 {
        s.push_str(&format!(
            " (FLOPs only of layers with static shapes: {} had symbolic ones)",
            p.before.unknown_layers
        ));
    }
    for c in &p.changes {
        s.push_str(&format!("\n  {}: {} {} → {}", c.layer, c.what, c.before, c.after));
    }
    s
}

fn print_text(engine: &Engine, r: &Report) {
    let name = if engine.name().is_empty() { "(unnamed)" } else { engine.name() };
    println!(
        "engine: {name} for the {} backend, opt level {}, built from {} layers",
        r.backend, r.opt_level, r.source_layers
    );
    println!("inputs:");
    for i in &r.inputs {
        match (&i.min, &i.opt, &i.max) {
            (Some(lo), Some(mid), Some(hi)) if lo == hi => {
                println!("  {}: {}  shape {}", i.name, i.ty, format_dims(mid))
            }
            (Some(lo), Some(mid), Some(hi)) => println!(
                "  {}: {}  min {} opt {} max {}",
                i.name,
                i.ty,
                format_dims(lo),
                format_dims(mid),
                format_dims(hi)
            ),
            _ => println!("  {}: {}", i.name, i.ty),
        }
    }
    println!("outputs:");
    for o in &r.outputs {
        println!("  {}: {}", o.name, o.ty);
    }
    let elided = r.layers.iter().filter(|l| l.elided.is_some()).count();
    println!("layers: {}{}", r.layers.len(), if elided > 0 { format!(" ({elided} elided)") } else { String::new() });
    let tactic = |l: &LayerReport| match l.elided {
        Some(kind) => format!("elided ({kind})"),
        None => l.tactic.clone(),
    };
    let w_idx = r.layers.len().saturating_sub(1).to_string().len();
    let w_name = r.layers.iter().map(|l| l.name.chars().count()).max().unwrap_or(0).max(5);
    let w_op = r.layers.iter().map(|l| l.kind.len()).max().unwrap_or(0).max(2);
    let w_tactic = r.layers.iter().map(|l| tactic(l).len()).max().unwrap_or(0).max(6);
    println!(
        "  {:>w_idx$}  {:<w_name$}  {:<w_op$}  {:<9}  {:<w_tactic$}  fused ONNX nodes",
        "#", "layer", "op", "precision", "tactic"
    );
    for (i, l) in r.layers.iter().enumerate() {
        println!(
            "  {i:>w_idx$}  {:<w_name$}  {:<w_op$}  {:<9}  {:<w_tactic$}  {}",
            l.name,
            l.kind,
            l.precision,
            tactic(l),
            l.fused_nodes.join(", ")
        );
    }
    println!("activations: arena {}, peak live {}", human_bytes(r.activation_bytes), human_bytes(r.peak_live_bytes));
    println!("weights: {} in {} tensors", human_bytes(r.weight_bytes), r.weight_count);
    if !r.packed_weights.is_empty() {
        let bytes = r.packed_weights.iter().map(|w| w.bytes).sum::<usize>();
        println!("  {} stored packed for their tactics ({}):", r.packed_weights.len(), human_bytes(bytes));
        for w in &r.packed_weights {
            println!("    {}  {}  {}", w.name, w.tactic, human_bytes(w.bytes));
        }
    }
    println!("cost: {} params, {:.3} GFLOPs per run at the opt shapes", r.params, r.flops as f64 / 1e9);
    match &r.pruned {
        Some(p) => println!("{}", prune_summary(p)),
        None if r.opt_level == 0 => println!("pruned: not at opt level 0"),
        None if r.prune => println!("pruned: nothing (no structured zeros found)"),
        None => println!("pruned: off (--no-prune)"),
    }
}
