//! Loading a model bundle (weights, tokenizer, chat template) and the generation loop:
//! prefill the prompt, then sample one token at a time until EOS, a stop string, or the
//! token budget.
use crate::chat::{ChatTemplate, Message};
use crate::gguf::Gguf;
use crate::llama::Llama;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Instant;

pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
}

impl LoadedModel {
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!("model file {} does not exist", path.display());
        }
        if path.is_dir() {
            bail!(
                "{} is a folder; a GGUF model file is expected",
                path.display()
            );
        }
        let g = Gguf::open(path)?;
        let model =
            Llama::from_gguf(&g).with_context(|| format!("cannot load {}", path.display()))?;
        let tokenizer = Tokenizer::from_gguf(&g)
            .with_context(|| format!("cannot build the tokenizer of {}", path.display()))?;
        let tok_text =
            |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
        let template = match g.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            Some(src) => Some(ChatTemplate::new(
                src,
                &tok_text(tokenizer.bos),
                &tok_text(tokenizer.eos),
            )?),
            None => None,
        };
        Ok(LoadedModel {
            model,
            tokenizer,
            template,
        })
    }

    /// Prompt token ids: raw text (with BOS if the model wants it) or a one-turn chat.
    pub fn prompt_tokens(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        prompt_tokens(&self.tokenizer, self.template.as_ref(), prompt, chat)
    }
}

/// Prompt token ids: raw text (with BOS if the model wants it) or a one-turn chat.
pub fn prompt_tokens(
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    prompt: &str,
    chat: bool,
) -> Result<Vec<u32>> {
    if !chat {
        return tokenizer.encode(prompt, true);
    }
    let t = template.context("this model has no chat template (tokenizer.chat_template)")?;
    let text = t.render(&[Message::new("user", prompt)], true)?;
    // Templates that write the BOS text themselves must not get a second one.
    let with_bos = !text.starts_with(&t.bos_token) || t.bos_token.is_empty();
    tokenizer.encode(&text, with_bos)
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    pub prompt_tokens: Vec<u32>,
    pub tokens: Vec<u32>,
    pub text: String,
    /// "stop" (EOS or a stop string) or "length".
    pub finish_reason: String,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

/// Generates after `prompt` on the CPU; `on_text` receives each new piece of text as it is
/// decided (text that could still turn into a stop string is held back until it cannot).
pub fn generate(
    m: &LoadedModel,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: impl FnMut(&str),
) -> Result<Generation> {
    let mut cache = m.model.new_cache();
    generate_with(
        &m.tokenizer,
        m.model.config.context_length,
        prompt,
        opts,
        |toks| m.model.forward(toks, &mut cache, false),
        on_text,
    )
}

/// Generates on a GPU copy of the model (greedy or sampled on the host from the last logits).
pub fn generate_gpu(
    m: &LoadedModel,
    gpu: &crate::llama_gpu::GpuLlama,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: impl FnMut(&str),
) -> Result<Generation> {
    let cap = (prompt.len() + opts.max_tokens + 1).min(m.model.config.context_length);
    let mut cache = gpu.new_cache(1, cap)?;
    let v = m.model.config.vocab_size;
    generate_with(
        &m.tokenizer,
        m.model.config.context_length,
        prompt,
        opts,
        |toks| {
            let logits = gpu.logits_to_host(&gpu.forward(toks, &mut cache)?)?;
            Ok(logits[logits.len() - v..].to_vec())
        },
        on_text,
    )
}

/// Incremental detokenization with stop strings: each pushed token yields the text that is
/// safe to show (an incomplete UTF-8 tail, or a suffix that may begin a stop string, is held
/// back), and whether a stop string ended the text (which is then cut before it).
pub struct TextStream {
    pub tokens: Vec<u32>,
    pub text: String,
    stop: Vec<String>,
    /// Bytes of `text` already handed out.
    emitted: usize,
}

impl TextStream {
    pub fn new(stop: &[String]) -> Self {
        TextStream {
            tokens: vec![],
            text: String::new(),
            stop: stop.to_vec(),
            emitted: 0,
        }
    }

    /// Adds a generated token: (new text to show, stopped by a stop string).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<(String, bool)> {
        self.tokens.push(id);
        self.text = tokenizer.decode(&self.tokens)?;
        if let Some(cut) = self
            .stop
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(cut);
            return Ok((self.finish(), true));
        }
        let text = &self.text;
        let mut safe = text.len()
            - if text.ends_with('\u{FFFD}') {
                '\u{FFFD}'.len_utf8()
            } else {
                0
            };
        for s in &self.stop {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && text[..safe].ends_with(&s[..k]) {
                    safe = safe.min(text[..safe].len() - k);
                    break;
                }
            }
        }
        if safe > self.emitted && text.is_char_boundary(safe) {
            let delta = text[self.emitted..safe].to_string();
            self.emitted = safe;
            return Ok((delta, false));
        }
        Ok((String::new(), false))
    }

    /// The text not handed out yet (at the end of generation).
    pub fn finish(&mut self) -> String {
        if self.text.len() > self.emitted && self.text.is_char_boundary(self.emitted) {
            let rest = self.text[self.emitted..].to_string();
            self.emitted = self.text.len();
            return rest;
        }
        String::new()
    }
}

/// The generation loop over any forward function (`forward(tokens)` runs the tokens after
/// what it has seen and returns the last token's logits); `ctx` is the model's context.
pub fn generate_with(
    tokenizer: &Tokenizer,
    ctx: usize,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut forward: impl FnMut(&[u32]) -> Result<Vec<f32>>,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    opts.sampling.validate()?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    if prompt.len() >= ctx {
        bail!(
            "the prompt has {} tokens; the model's context is {ctx} tokens",
            prompt.len()
        );
    }
    let max_tokens = opts.max_tokens.min(ctx - prompt.len());
    let mut sampler = Sampler::new(opts.sampling.clone());
    let t0 = Instant::now();
    let mut logits = forward(prompt)?;
    let prefill_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut stream = TextStream::new(&opts.stop);
    let mut finish = "length";
    while stream.tokens.len() < max_tokens {
        let next = sampler.sample(&logits);
        if tokenizer.is_stop(next) {
            finish = "stop";
            break;
        }
        let (delta, stopped) = stream.push(tokenizer, next)?;
        if !delta.is_empty() {
            on_text(&delta);
        }
        if stopped {
            finish = "stop";
            break;
        }
        if stream.tokens.len() == max_tokens {
            break;
        }
        logits = forward(&[next])?;
    }
    let rest = stream.finish();
    if !rest.is_empty() {
        on_text(&rest);
    }
    let (tokens, text) = (stream.tokens, stream.text);
    Ok(Generation {
        prompt_tokens: prompt.to_vec(),
        tokens,
        text,
        finish_reason: finish.into(),
        prefill_seconds,
        decode_seconds: t1.elapsed().as_secs_f64(),
    })
}
