//! The `kiln` command-line tool.

mod cmd_info;
mod cmd_run;
mod npy;
mod shapes;

use clap::{Parser, Subcommand};
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
    /// Run a model on the CPU and write every output as .npy.
    Run {
        model: PathBuf,
        /// Bind an input from a .npy file: NAME=FILE.npy (repeatable). Inputs not given get
        /// random values from a fixed seed.
        #[arg(long = "input", value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Concrete shape for an input with symbolic dims: NAME=1x3x224x224 (repeatable).
        #[arg(long = "shape", value_name = "NAME=DIMS")]
        shapes: Vec<String>,
        /// Directory for the outputs (<name>.npy each).
        #[arg(long, default_value = "kiln-out")]
        output_dir: PathBuf,
        /// Seed for random inputs.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// 0: run the graph as imported; 1: simplify it first (constant folding, no-op removal,
        /// common-subexpression merging, dead-layer elimination).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
        opt_level: u8,
    },
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let result = match cli.command {
        Command::Info { model } => cmd_info::info(&model),
        Command::Run { model, inputs, shapes, output_dir, seed, opt_level } => {
            cmd_run::run(&model, &inputs, &shapes, &output_dir, seed, opt_level)
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
