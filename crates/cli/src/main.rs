//! `hybrid`: convert full-attention models into hybrids, serve them, measure where each wins.
//! This file parses the command line and maps every error to one line and a non-zero exit.
mod commands;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hybrid",
    version,
    about = "Hybrid-attention language models: convert, serve, measure"
)]
struct Cli {
    /// CPU threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) into the cache.
    Fetch,
    /// Generate a continuation of a prompt.
    Generate(commands::generate::GenerateArgs),
    /// Talk to a model interactively (tokens stream as they are generated).
    Chat(commands::chat::ChatArgs),
    /// Show a model's architecture, layers, parameters and cache bytes.
    Inspect(commands::inspect::InspectArgs),
    /// Convert a full-attention model into a hybrid with learned layer placement (resumable).
    Convert(commands::convert::ConvertArgs),
    /// Write a model as a transformers checkpoint (Llama, Qwen2 or Qwen3 layout) where one
    /// reads it exactly.
    Export(commands::export::ExportArgs),
    /// Serve a model over an OpenAI-compatible HTTP API (prefix caching that works for hybrids).
    Serve(commands::serve::ServeArgs),
    /// Reason in chunks of bounded context (Delethink): query + head + carryover per chunk.
    Think(commands::think::ThinkArgs),
    /// Delethink from scratch: train a small model on a Markovian task and its control, answer
    /// with plain chain of thought and with Delethink.
    TrainMarkov(commands::train_markov::TrainMarkovArgs),
    /// Train small models from scratch on a synthetic recall task and report accuracy.
    TrainSynthetic(commands::train_synthetic::TrainSyntheticArgs),
    /// Where FA, hybrids and Delethink win: a calibrated time and memory model from configs
    /// (presets or config.json), with the article's workloads. Markdown + JSON + plots.
    Cost(commands::cost::CostArgs),
    /// The NVIDIA libraries and GPU this machine offers (JSON).
    Device,
    /// Benchmarks (JSON on stdout).
    Bench {
        #[command(subcommand)]
        what: commands::bench::BenchCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tensor::init_threads(
        cli.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    );
    let result = tensor::run_in_pool(|| match cli.command {
        Command::Fetch => model::fetch::fetch_default_model().map(|p| println!("{}", p.display())),
        Command::Generate(a) => commands::generate::run(a),
        Command::Chat(a) => commands::chat::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Convert(a) => commands::convert::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Think(a) => commands::think::run(a),
        Command::TrainMarkov(a) => commands::train_markov::run(a),
        Command::TrainSynthetic(a) => commands::train_synthetic::run_cmd(a),
        Command::Cost(a) => commands::cost::run(a),
        Command::Device => commands::device::info(),
        Command::Bench { what } => commands::bench::run(what),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
