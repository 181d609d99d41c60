//! `kiln info`: what a model is made of, and what kiln cannot run, before trying to.

use anyhow::Result;
use std::path::Path;

pub fn info(model: &Path) -> Result<()> {
    let s = kiln::onnx::summarize_file(model)?;
    println!("model: {}", model.display());
    if !s.unsupported.is_empty() {
        println!("UNSUPPORTED ops ({}): kiln cannot run this model as is", s.unsupported.len());
        for (op, (count, reason)) in &s.unsupported {
            println!("  {op} ×{count}: {reason}");
        }
    }
    if !s.producer.is_empty() {
        println!("producer: {}", s.producer);
    }
    let opsets: Vec<String> = s.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
    println!("ir_version: {}   opsets: {}", s.ir_version, opsets.join(", "));
    println!("inputs:");
    for (name, ty) in &s.inputs {
        println!("  {name}: {ty}");
    }
    println!("outputs:");
    for (name, ty) in &s.outputs {
        println!("  {name}: {ty}");
    }
    let nodes: usize = s.op_counts.values().sum();
    println!("ops ({nodes} nodes, {} kinds):", s.op_counts.len());
    let mut counts: Vec<_> = s.op_counts.iter().collect();
    counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (op, n) in counts {
        println!("  {op:<28} {n}");
    }
    println!("parameters: {} ({})", s.parameters, human_count(s.parameters));
    if s.unsupported.is_empty() {
        // A full import also checks types and shapes, so problems show here rather than at run.
        match kiln::load_onnx(model) {
            Ok(m) => println!("import: ok ({} layers)", m.network.layers().len()),
            Err(e) => println!("import: FAILED: {e}"),
        }
    }
    Ok(())
}

fn human_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}G", n as f64 / 1e9),
    }
}
