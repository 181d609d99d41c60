//! The pruning benchmark (issue 6): for each reference model and each structurally pruned
//! variant gen_models.py writes (`--pruned`: MODEL_p30/_p50/_p70.onnx), the compiled pruned
//! engine's largest relative error against the zeroed model run unoptimized (opt level 0, on
//! kiln-cpu), its FLOPs as a share of the dense engine's, and the CPU latency of the pruned
//! engine over the dense one, both timed in the same loop, alternating, medians.
//!
//! usage: cargo bench -p kiln --bench prune -- [MODELS_DIR] [MODEL ...] [--threads N] [--iterations N]
//! (default target/models, resnet50 mobilenetv2 bert_base, 2 threads, 20 iterations; BERT runs
//! at batch 1, sequence 128)

mod common;

use common::{random_inputs, shapes};
use kiln::{BuilderConfig, Engine, Network, ShapeRange, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const SPARSITIES: [u32; 3] = [30, 50, 70];

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut positional = Vec::new();
    let (mut threads, mut iterations) = (2usize, 20usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().and_then(|v| v.parse().ok()).expect("--threads N"),
            "--iterations" => iterations = args.next().and_then(|v| v.parse().ok()).expect("--iterations N"),
            _ => positional.push(a),
        }
    }
    let dir = positional.first().cloned().unwrap_or_else(|| "target/models".into());
    // cargo runs benches in the crate's directory: a relative path is the workspace's.
    let dir = if Path::new(&dir).is_relative() && !Path::new(&dir).exists() {
        format!("{}/../../{dir}", env!("CARGO_MANIFEST_DIR"))
    } else {
        dir
    };
    let models: Vec<String> = if positional.len() > 1 {
        positional[1..].to_vec()
    } else {
        ["resnet50", "mobilenetv2", "bert_base"].iter().map(|s| s.to_string()).collect()
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    println!("CPU, {threads} threads, {iterations} iterations (alternating dense / pruned), medians");
    println!("| model | params % | engine FLOPs % of dense | max rel err vs zeroed model (opt 0) | dense ms | pruned ms | latency pruned/dense |");
    println!("|---|---|---|---|---|---|---|");
    for name in models {
        let dense_path = Path::new(&dir).join(format!("{name}.onnx"));
        if !dense_path.exists() {
            eprintln!("{}: missing (run scripts/gen_models.py --pruned)", dense_path.display());
            continue;
        }
        if let Err(e) = pool.install(|| bench_model(&name, &dir, &dense_path, iterations)) {
            println!("| {name} | error: {e} |");
        }
    }
}

fn config_for(net: &Network) -> BuilderConfig {
    let mut config = BuilderConfig { progress: false, ..BuilderConfig::default() };
    for (input, shape) in shapes(net) {
        config.profile.inputs.insert(input, ShapeRange::fixed(shape));
    }
    config
}

fn bench_model(name: &str, dir: &str, dense_path: &Path, iterations: usize) -> Result<(), kiln::Error> {
    let dense_net = kiln::load_onnx(dense_path)?.network;
    let dense = Arc::new(kiln::build(&dense_net, &config_for(&dense_net))?);
    let inputs = random_inputs(&dense_net);
    let dense_cost = dense.graph().build.cost;
    drop(dense_net);
    for s in SPARSITIES {
        let path = Path::new(dir).join(format!("{name}_p{s}.onnx"));
        if !path.exists() {
            eprintln!("{}: missing (run scripts/gen_models.py --pruned)", path.display());
            continue;
        }
        let net = kiln::load_onnx(&path)?.network;
        let pruned = Arc::new(kiln::build(&net, &config_for(&net))?);
        let cost = pruned.graph().build.cost;
        // Accuracy: the pruned engine against the zeroed model, unoptimized, on kiln-cpu.
        let got = run(&pruned, &inputs)?;
        let want = kiln::run(&net, inputs.clone())?;
        drop(net);
        let err = got.iter().zip(&want).map(|((_, g), (_, w))| rel_err(g, w)).fold(0f64, f64::max);
        let (d_ms, p_ms) = alternate(&dense, &pruned, &inputs, iterations)?;
        println!(
            "| {name} p{s} | {:.1} % | {:.1} % | {err:.1e} | {d_ms:.2} | {p_ms:.2} | {:.3} |",
            100.0 * cost.params as f64 / dense_cost.params as f64,
            100.0 * cost.flops as f64 / dense_cost.flops as f64,
            p_ms / d_ms,
        );
    }
    Ok(())
}

fn run(engine: &Arc<Engine>, inputs: &HashMap<String, Value>) -> Result<Vec<(String, Value)>, kiln::Error> {
    let mut ctx = engine.create_context();
    for (n, v) in inputs {
        ctx.set_input(n, v)?;
    }
    ctx.execute()?;
    Ok(ctx.outputs()?)
}

/// Median latency (ms) of each engine, timed in turns after one warm-up run each.
fn alternate(
    a: &Arc<Engine>,
    b: &Arc<Engine>,
    inputs: &HashMap<String, Value>,
    iterations: usize,
) -> Result<(f64, f64), kiln::Error> {
    let mut ctxs = [a.create_context(), b.create_context()];
    for ctx in &mut ctxs {
        for (n, v) in inputs {
            ctx.set_input(n, v)?;
        }
        ctx.execute()?;
    }
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..iterations {
        for (ctx, t) in ctxs.iter_mut().zip(&mut times) {
            let start = Instant::now();
            ctx.execute()?;
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [ta, tb] = &mut times;
    Ok((median(ta), median(tb)))
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
