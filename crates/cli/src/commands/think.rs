//! `hybrid think`: a Delethink trace (bounded-context reasoning in chunks, see
//! `engine::delethink`) streamed to stdout, with each chunk boundary marked on stderr.
use super::generate::{Format, SamplingArgs};
use anyhow::Result;
use clap::Args;
use engine::delethink::{think, DelethinkSpec, Event};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ThinkArgs {
    /// A GGUF file or a hybrid folder (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub prompt: String,
    /// C: tokens of thinking context per chunk.
    #[arg(long, default_value_t = 1024)]
    pub chunk: usize,
    /// m: tokens carried from one chunk into the next (the paper: C / 2).
    #[arg(long, default_value_t = 512)]
    pub carryover: usize,
    /// I: the most chunks.
    #[arg(long, default_value_t = 5)]
    pub max_chunks: usize,
    /// H: tokens of the first chunk folded into the query.
    #[arg(long, default_value_t = 100)]
    pub head: usize,
    /// Send the prompt as is instead of as one user turn of the chat template.
    #[arg(long)]
    pub raw: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: ThinkArgs) -> Result<()> {
    let path = a
        .model
        .clone()
        .unwrap_or_else(model::fetch::default_model_path);
    let m = engine::ServeModel::load(&path, "model")?;
    let query = model::prompt_tokens(&m.tokenizer, m.template.as_ref(), &a.prompt, !a.raw)?;
    let spec = DelethinkSpec {
        chunk: a.chunk,
        carryover: a.carryover,
        max_chunks: a.max_chunks,
        head: a.head,
    };
    let text = matches!(a.format, Format::Text);
    let mut out = std::io::stdout();
    let trace = think(
        &m,
        &query,
        &spec,
        &a.sampling.params(),
        &a.sampling.stop,
        |e| {
            if !text {
                return;
            }
            match e {
                Event::Text(t) => {
                    let _ = out.write_all(t.as_bytes());
                    let _ = out.flush();
                }
                Event::Boundary { chunk, context } => {
                    if chunk > 1 {
                        eprintln!("\n[delethink: chunk {chunk}, context {context} tokens]");
                    }
                }
            }
        },
    )?;
    if text {
        println!();
        eprintln!(
            "[delethink: {} chunks, {} tokens, finish {}, peak cache {} tokens]",
            trace.chunks.len(),
            trace.tokens.len(),
            trace.finish_reason,
            trace.peak_cache_tokens()
        );
    } else {
        let j = serde_json::json!({"prompt_tokens": query, "spec": spec, "trace": trace,
            "peak_cache_tokens": trace.peak_cache_tokens()});
        println!("{j}");
    }
    Ok(())
}
