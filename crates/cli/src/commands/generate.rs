use super::ModelArgs;
use anyhow::Result;
use clap::{Args, ValueEnum};
use model::{GenerateOptions, SamplingParams};
use std::io::Write;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this text appears (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            seed: self.seed,
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Wrap the prompt in the model's chat template as one user turn.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let device = a.model.device()?;
    let m = a.model.load_any()?;
    let runner = m.runner_with(device, a.model.gpu_weights.get())?;
    let prompt = m.prompt_tokens(&a.prompt, a.chat)?;
    let run = |on_text: &mut dyn FnMut(&str)| -> Result<model::Generation> {
        runner.generate(&prompt, &opts_of(&a), on_text)
    };
    match a.format {
        Format::Text => {
            let mut out = std::io::stdout();
            run(&mut |s: &str| {
                let _ = out.write_all(s.as_bytes());
                let _ = out.flush();
            })?;
            println!();
        }
        Format::Json => {
            let g = run(&mut |_: &str| {})?;
            let j = serde_json::json!({"prompt_tokens": g.prompt_tokens, "tokens": g.tokens, "text": g.text});
            println!("{j}");
        }
    }
    Ok(())
}

fn opts_of(a: &GenerateArgs) -> GenerateOptions {
    GenerateOptions {
        max_tokens: a.max_tokens,
        sampling: a.sampling.params(),
        stop: a.sampling.stop.clone(),
    }
}
