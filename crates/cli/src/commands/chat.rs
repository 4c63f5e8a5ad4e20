//! Interactive chat: the conversation is re-rendered through the chat template every turn
//! and tokens stream to the terminal as they are generated.
use super::generate::SamplingArgs;
use super::ModelArgs;
use anyhow::{Context, Result};
use clap::Args;
use model::{GenerateOptions, Message};
use std::io::{BufRead, Write};

#[derive(Args, Clone, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// An optional system message.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let device = a.model.device()?;
    let m = a.model.load_any()?;
    let runner = m.runner_with(device, a.model.gpu_weights.get())?;
    let tmpl = m.template().context("this model has no chat template")?;
    let mut messages: Vec<Message> = a.system.iter().map(|s| Message::new("system", s)).collect();
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling: a.sampling.params(),
        stop: a.sampling.stop.clone(),
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    eprintln!(
        "chatting with {} on {device} (empty line or Ctrl-D to quit)",
        a.model.model_path()?.display()
    );
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        messages.push(Message::new("user", line.trim_end()));
        let text = tmpl.render(&messages, true)?;
        let with_bos = tmpl.bos_token.is_empty() || !text.starts_with(&tmpl.bos_token);
        let prompt = m.tokenizer().encode(&text, with_bos)?;
        let on_text = |s: &str| {
            let _ = out.write_all(s.as_bytes());
            let _ = out.flush();
        };
        let g = runner.generate(&prompt, &opts, on_text)?;
        writeln!(out)?;
        messages.push(Message::new("assistant", &g.text));
    }
    Ok(())
}
