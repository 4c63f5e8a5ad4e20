//! The OpenAI request bodies we accept, their validation, and the response shapes. Every
//! rejection is a 400 with OpenAI's error object naming the problem.
use anyhow::{bail, Result};
use engine::delethink::DelethinkSpec;
use model::SamplingParams;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// `stop`: one string or a list.
#[derive(Deserialize, Default, Clone)]
#[serde(untagged)]
pub enum Stop {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn list(&self) -> Vec<String> {
        match self {
            Stop::None => vec![],
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// Fields shared by both endpoints.
#[derive(Deserialize)]
pub struct Common {
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Stop,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Accepted and ignored (one choice is all we return; n > 1 is refused below).
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Extension (vLLM's): keep generating past the end-of-sequence token up to max_tokens.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Extension: reason with Delethink (`{"chunk": C, "carryover": m, "max_chunks": I}`,
    /// optional `"head"`, default 100); the reply carries `reasoning_content`.
    #[serde(default)]
    pub delethink: Option<DelethinkSpec>,
}

#[derive(Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: String,
    /// An assistant turn's reasoning sent back (kept or dropped by the server's
    /// `--think-history`).
    #[serde(default)]
    pub reasoning_content: Option<String>,
}

#[derive(Deserialize)]
pub struct ChatBody {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Deserialize)]
pub struct CompletionBody {
    pub prompt: String,
    #[serde(flatten)]
    pub common: Common,
}

/// A request body as `T`, or the message of the 400 that refuses it.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

impl ChatBody {
    /// The conversation as the chat template takes it.
    pub fn messages(&self) -> Result<Vec<model::Message>> {
        if self.messages.is_empty() {
            bail!("messages is empty");
        }
        Ok(self
            .messages
            .iter()
            .map(|x| model::Message {
                reasoning_content: x.reasoning_content.clone(),
                ..model::Message::new(&x.role, &x.content)
            })
            .collect())
    }
}

/// What a request asks of the engine once every field has been checked.
pub struct Checked {
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// A Delethink trace instead of one generation.
    pub delethink: Option<DelethinkSpec>,
}

impl Common {
    /// Every check of the shared fields against the model and a `prompt_len`-token prompt:
    /// [`Common::settings`], then the Delethink spec's own and its fit in the context.
    pub fn check(&self, served: &str, context: usize, prompt_len: usize) -> Result<Checked> {
        let (sampling, max_tokens) = self.settings(served, context, prompt_len)?;
        if let Some(spec) = self.delethink {
            spec.validate()?;
            // `check_fits` adds prompt + head + chunk: a client's huge numbers would overflow
            // the sum (and wrap to a small one that fits in a release build).
            if prompt_len
                .checked_add(spec.head)
                .and_then(|n| n.checked_add(spec.chunk))
                .is_none()
            {
                bail!(
                    "a delethink chunk of {} tokens cannot fit the model's context of {context} tokens",
                    spec.chunk
                );
            }
            spec.check_fits(prompt_len, context)?;
        }
        Ok(Checked {
            sampling,
            max_tokens,
            delethink: self.delethink,
        })
    }

    /// Sampling settings and max_tokens, checked against the model's context and the prompt.
    pub fn settings(
        &self,
        served: &str,
        context: usize,
        prompt_len: usize,
    ) -> Result<(SamplingParams, usize)> {
        if let Some(m) = &self.model {
            if m != served {
                bail!("the model '{m}' does not exist; this server serves '{served}'");
            }
        }
        if let Some(n) = self.n {
            if n != 1 {
                bail!("n = {n}: this server returns one choice per request (n = 1)");
            }
        }
        for (what, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if v.is_some_and(|v| v != 0.0) {
                bail!("{what} is not supported (only 0)");
            }
        }
        if prompt_len >= context {
            bail!("the prompt has {prompt_len} tokens; the model's context is {context} tokens");
        }
        let room = context - prompt_len;
        let max = match self.max_completion_tokens.or(self.max_tokens) {
            None => room.min(256),
            Some(m) if m < 1 => bail!("max_tokens must be at least 1, got {m}"),
            Some(m) if m as u64 > room as u64 => bail!(
                "max_tokens = {m} does not fit: the prompt has {prompt_len} tokens and the context is {context} ({room} left)"
            ),
            Some(m) => m as usize,
        };
        let top_k = match self.top_k {
            None | Some(-1) => 0,
            Some(k) if k < 0 => bail!("top_k must be -1 (off) or positive, got {k}"),
            Some(k) => k as usize,
        };
        let d = SamplingParams::default();
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            seed: self.seed.unwrap_or(d.seed),
        };
        p.validate()?;
        Ok((p, max))
    }
}

/// OpenAI's error object.
pub fn error_body(message: &str, kind: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
}

pub fn usage_json(u: &engine::Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}
