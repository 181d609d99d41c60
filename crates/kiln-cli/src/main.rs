//! The `kiln` command-line tool.

mod cmd_bench;
mod cmd_build;
mod cmd_compare;
mod cmd_info;
mod cmd_inspect;
mod cmd_run;
mod model;
mod npy;
mod shapes;
mod stats;
mod trace;

use clap::{Parser, Subcommand};
use model::BuildFlags;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "kiln", version, about = "kiln: compile and run ONNX models")]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's inputs, outputs, ops and parameters; unsupported ops first.
    Info { model: PathBuf },
    /// Run an ONNX model or a plan on the CPU and write every output as .npy.
    Run {
        /// An ONNX file or a plan (told apart by content).
        model: PathBuf,
        /// Bind an input from a .npy file: NAME=FILE.npy (repeatable). Inputs not given get
        /// random values from a fixed seed.
        #[arg(long = "input", value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Concrete shape for an input with symbolic dims: NAME=1x3x224x224 (repeatable). For a
        /// plan it must lie within the engine's profile; random inputs default to the profile's
        /// opt shape.
        #[arg(long = "shape", value_name = "NAME=DIMS")]
        shapes: Vec<String>,
        /// Directory for the outputs (<name>.npy each).
        #[arg(long, default_value = "kiln-out")]
        output_dir: PathBuf,
        /// Seed for random inputs (floats in [-1, 1), integers in [0, 2)).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// 0: run the graph as imported; 1: simplify it first (constant folding, no-op removal,
        /// common-subexpression merging, dead-layer elimination). Ignored for a plan.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
        opt_level: u8,
        /// With --opt-level 1: keep structured zeros (no channel, head or constant pruning).
        #[arg(long)]
        no_prune: bool,
    },
    /// Build an optimized engine from an ONNX model and save it as a plan file.
    Build {
        model: PathBuf,
        /// The plan file to write.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        #[command(flatten)]
        build: BuildFlags,
    },
    /// Measure an engine's latency and throughput (a plan, or an ONNX model built first).
    Bench {
        /// A plan, or an ONNX file (built with the build flags).
        model: PathBuf,
        /// Timed runs.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
        iterations: u64,
        /// Untimed runs first.
        #[arg(long, default_value_t = 10)]
        warmup: u64,
        /// Threads of the kernels' thread pool [default: one per core].
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        threads: Option<u64>,
        /// Input shape to run at: NAME=1x3x224x224 (repeatable; within a plan's profile).
        /// Inputs not given run at the profile's opt shape.
        #[arg(long = "shape", value_name = "NAME=DIMS")]
        shapes: Vec<String>,
        /// Print only {"latency_ms": {min, mean, median, p90, p99}, "throughput_per_s": N} on
        /// stdout (everything else goes to stderr).
        #[arg(long)]
        json: bool,
        /// Also print a per-layer time table (median per layer, share of the total).
        #[arg(long)]
        profile: bool,
        /// Write a Chrome trace-event file of every timed run's layers (opens in Perfetto).
        #[arg(long, value_name = "FILE.json")]
        trace: Option<PathBuf>,
        /// Seed for the random inputs (floats in [-1, 1), integers in [0, 2), so index inputs
        /// such as token ids and token types stay in range).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// GPU engines: launch every layer on every run instead of capturing a static run
        /// once as a CUDA graph and replaying it (the default where legal).
        #[arg(long)]
        no_cuda_graph: bool,
        #[command(flatten)]
        build: BuildFlags,
    },
    /// Show an engine's layers (with the ONNX nodes each fused, precision, tactic) and memory.
    Inspect {
        /// A plan, or an ONNX file (built with the build flags).
        model: PathBuf,
        /// Print JSON: {"layers": [{name, kind, fused_nodes, precision, tactic, ..}],
        /// "activation_bytes", "weight_bytes", ..}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        build: BuildFlags,
    },
    /// Compare the optimized engine with the unoptimized network on the same random inputs;
    /// fails when an output's relative error is above --rtol.
    Compare {
        model: PathBuf,
        /// Also compare every engine layer's output that the original network has by name.
        #[arg(long)]
        per_layer: bool,
        /// Input shape to run at: NAME=1x3x224x224 (repeatable); also the engine's static
        /// shape for inputs the profile flags leave out.
        #[arg(long = "shape", value_name = "NAME=DIMS")]
        shapes: Vec<String>,
        /// Largest allowed max|engine − reference| / max|reference| per output.
        #[arg(long, default_value_t = 1e-4)]
        rtol: f64,
        /// Seed for the random inputs (floats in [-1, 1), integers in [0, 2), so index inputs
        /// such as token ids and token types stay in range).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        build: BuildFlags,
    },
}

fn main() {
    // A closed pipe (`kiln inspect plan | head`) ends the process quietly, as for any Unix
    // tool: Rust ignores SIGPIPE, so every print after the reader went away would panic.
    #[cfg(unix)]
    // SAFETY: restoring the default action of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let result = match cli.command {
        Command::Info { model } => cmd_info::info(&model),
        Command::Run { model, inputs, shapes, output_dir, seed, opt_level, no_prune } => {
            cmd_run::run(&model, &inputs, &shapes, &output_dir, seed, opt_level, !no_prune)
        }
        Command::Build { model, output, build } => cmd_build::build(&model, &output, &build),
        Command::Bench {
            model,
            iterations,
            warmup,
            threads,
            shapes,
            json,
            profile,
            trace,
            seed,
            no_cuda_graph,
            build,
        } => {
            let opts = cmd_bench::BenchOptions {
                iterations: iterations as usize,
                warmup: warmup as usize,
                threads: threads.map(|n| n as usize),
                shapes,
                json,
                profile,
                trace,
                seed,
                cuda_graph: !no_cuda_graph,
            };
            cmd_bench::bench(&model, &opts, &build)
        }
        Command::Inspect { model, json, build } => cmd_inspect::inspect(&model, json, &build),
        Command::Compare { model, per_layer, shapes, rtol, seed, build } => {
            let opts = cmd_compare::CompareOptions { shapes, per_layer, rtol, seed };
            cmd_compare::compare(&model, &opts, &build)
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks (unique argument ids, …), which otherwise only run when a
    /// debug build parses that subcommand.
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
