//! The builder/engine benchmark on the reference models (scripts/gen_models.py writes them):
//! per model, ONNX nodes vs engine layers, arena bytes vs peak live activation bytes, build time
//! cold and with a warm timing cache, plan load time (file to ready-to-run context, median of
//! 10), and the engine's largest relative error against the unoptimized network.
//!
//! usage: cargo bench -p kiln --bench engine_build -- [MODELS_DIR] [MODEL ...]
//! (default target/models and all three models present there)

mod common;

use common::{random_inputs, shapes};
use kiln::{BuilderConfig, ShapeRange, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let dir = PathBuf::from(args.first().cloned().unwrap_or_else(|| "target/models".into()));
    let wanted: Vec<String> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        ["resnet50", "mobilenetv2", "bert_base"].iter().map(|s| s.to_string()).collect()
    };
    let scratch = std::env::temp_dir().join(format!("kiln-engine-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    println!(
        "| model | ONNX nodes | engine layers | ratio | arena MB | peak live MB | arena/peak | build cold s | build warm-cache s | plan load ms | max rel err vs opt 0 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for name in wanted {
        let path = dir.join(format!("{name}.onnx"));
        if !path.exists() {
            eprintln!("{}: missing (run scripts/gen_models.py)", path.display());
            continue;
        }
        match bench_model(&name, &path, &scratch) {
            Ok(row) => println!("{row}"),
            Err(e) => println!("| {name} | error: {e} |"),
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

fn bench_model(name: &str, path: &Path, scratch: &Path) -> Result<String, kiln::Error> {
    let model = kiln::load_onnx(path)?;
    let net = &model.network;
    let mut config = BuilderConfig::default();
    for (input, shape) in shapes(net) {
        config.profile.inputs.insert(input, ShapeRange::fixed(shape));
    }
    let cache = scratch.join(format!("{name}.timing"));
    let _ = std::fs::remove_file(&cache);

    // Cold: every tactic timed, the timing cache written. Warm: the same build reading it.
    config.timing_cache = Some(cache.clone());
    let t = Instant::now();
    let engine = kiln::build(net, &config)?;
    let cold = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let engine_warm = kiln::build(net, &config)?;
    let warm = t.elapsed().as_secs_f64();
    let same_tactics = engine.graph().layers.iter().zip(&engine_warm.graph().layers).all(|(a, b)| a.tactic == b.tactic);

    let plan = scratch.join(format!("{name}.plan"));
    engine.save(&plan)?;
    let mut loads = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let loaded = Arc::new(kiln::load_plan(&plan)?);
        let ctx = loaded.create_context();
        loads.push(t.elapsed().as_secs_f64() * 1e3);
        drop(ctx);
    }
    loads.sort_by(f64::total_cmp);
    let load_ms = loads[loads.len() / 2];

    // Accuracy: the loaded engine against the unoptimized network on the same random inputs.
    let loaded = Arc::new(kiln::load_plan(&plan)?);
    let inputs = random_inputs(net);
    let mut ctx = loaded.create_context();
    for (n, v) in &inputs {
        ctx.set_input(n, v)?;
    }
    ctx.execute()?;
    let got = ctx.outputs()?;
    let want = kiln::run(net, inputs)?;
    let mut err = 0f64;
    for ((_, g), (_, w)) in got.iter().zip(&want) {
        err = err.max(rel_err(g, w));
    }
    let g = engine.graph();
    let layers = g.layers.len();
    let nodes = g.build.source_layers;
    Ok(format!(
        "| {name} | {nodes} | {layers} | {:.0} % | {:.1} | {:.1} | {:.2} | {cold:.1} | {warm:.2}{} | {load_ms:.1} | {err:.1e} |",
        100.0 * layers as f64 / nodes as f64,
        g.arena_bytes as f64 / 1e6,
        g.peak_live_bytes as f64 / 1e6,
        g.arena_bytes as f64 / g.peak_live_bytes.max(1) as f64,
        if same_tactics { "" } else { " (tactics differ!)" },
    ))
}

fn rel_err(a: &Value, b: &Value) -> f64 {
    let (Some(a), Some(b)) = (a.as_tensor(), b.as_tensor()) else { return f64::NAN };
    if a.shape() != b.shape() {
        return f64::INFINITY;
    }
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max) / scale
}
