//! Speculative decoding: cheap guesses of the next k tokens, checked by one forward of the
//! served model over all of them (research/serving.md §1.7, §8.3).
//!
//! - Drafts come from prompt lookup (the longest recent n-gram of the context seen earlier in
//!   it, and the tokens that followed it: vLLM's `ngram` method) or from a draft model (any
//!   model `hybrid` loads with the same vocabulary, run greedily for k tokens).
//! - Verification runs the sampled token and the k drafts in one forward whose recurrent
//!   layers keep their state after every position (lanes); the commit keeps the lane of the
//!   last accepted token and cuts the attention caches back, so no token runs twice
//!   ([`crate::backend::Backend::verify`]).
//! - Greedy outputs are those of plain decoding; with sampling, drafts are accepted by
//!   speculative sampling, which keeps the served model's distribution
//!   ([`model::Sampler::verify_draft`]).
use crate::backend::Backend;
use anyhow::{bail, Context, Result};
use model::hybrid::HybridModel;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Prompt lookup tries the context's last 4, then 3, then 2 tokens.
pub const NGRAM_MAX: usize = 4;
pub const NGRAM_MIN: usize = 2;

#[derive(Clone)]
pub enum Method {
    /// Prompt lookup over the sequence's own tokens.
    Ngram,
    /// A draft model, loaded once and run on the engine's device.
    Model {
        path: PathBuf,
        model: Arc<HybridModel>,
    },
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Ngram => write!(f, "ngram"),
            Method::Model { path, .. } => write!(f, "model:{}", path.display()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SpecConfig {
    pub method: Method,
    /// Draft tokens per verification (vLLM's `num_speculative_tokens`).
    pub k: usize,
}

impl SpecConfig {
    /// `ngram` or `model:PATH` (a GGUF file or a hybrid folder), with k draft tokens.
    pub fn parse(method: &str, k: usize) -> Result<Self> {
        if k == 0 || k > 16 {
            bail!("--num-speculative-tokens must be between 1 and 16, got {k}");
        }
        let method = match method.split_once(':') {
            None if method == "ngram" => Method::Ngram,
            Some(("model", path)) if !path.is_empty() => {
                let path = PathBuf::from(path);
                let draft = crate::ServeModel::load(&path, "draft")
                    .with_context(|| format!("cannot load the draft model {}", path.display()))?;
                Method::Model {
                    path,
                    model: Arc::new(draft.model),
                }
            }
            _ => bail!(
                "--speculative must be 'ngram' or 'model:PATH' (a GGUF file or a hybrid folder), got '{method}'"
            ),
        };
        Ok(SpecConfig { method, k })
    }

    /// The draft model must speak the served model's vocabulary.
    pub fn check_vocab(&self, served: &HybridModel) -> Result<()> {
        if let Method::Model { path, model } = &self.method {
            let (d, s) = (model.config.vocab_size, served.config.vocab_size);
            if d != s {
                bail!(
                    "the draft model {} has a vocabulary of {d} tokens, the served model {s}: drafts must use the same tokenizer",
                    path.display()
                );
            }
        }
        Ok(())
    }
}

/// Up to `k` tokens that followed the most recent earlier occurrence of the context's last
/// n tokens (n from [`NGRAM_MAX`] down to [`NGRAM_MIN`]); none when no n-gram recurs.
pub fn ngram_drafts(context: &[u32], k: usize) -> Vec<u32> {
    let len = context.len();
    for n in (NGRAM_MIN..=NGRAM_MAX).rev() {
        if len <= n {
            continue;
        }
        let tail = &context[len - n..];
        if let Some(start) = (0..len - n).rev().find(|&s| &context[s..s + n] == tail) {
            let from = start + n;
            return context[from..(from + k).min(len)].to_vec();
        }
    }
    vec![]
}

/// Proposes drafts for the running sequences (identified by the engine's sequence ids).
pub trait Drafter {
    /// Up to `k` draft tokens to follow `context` (the sequence's tokens so far, ending with
    /// the token about to be verified).
    fn propose(&mut self, seq: u64, context: &[u32], k: usize) -> Result<Vec<u32>>;
    /// The sequence finished or was preempted: its draft state goes.
    fn forget(&mut self, seq: u64);
}

pub struct NgramDrafter;

impl Drafter for NgramDrafter {
    fn propose(&mut self, _seq: u64, context: &[u32], k: usize) -> Result<Vec<u32>> {
        Ok(ngram_drafts(context, k))
    }
    fn forget(&mut self, _seq: u64) {}
}

/// A draft model on a backend: per sequence, a state holding the committed tokens it has
/// seen. A proposal first runs the tokens committed since the last one (the accepted drafts
/// and the new token, one forward), takes the argmax, then runs k−1 more single tokens on a
/// throw-away copy of the state, so rejected drafts never have to be undone.
pub struct DraftModel<B: Backend> {
    backend: B,
    seqs: HashMap<u64, DraftSeq<B::State>>,
}

struct DraftSeq<S> {
    state: S,
    fed: Vec<u32>,
}

impl<B: Backend> DraftModel<B> {
    pub fn new(backend: B) -> Self {
        DraftModel {
            backend,
            seqs: HashMap::new(),
        }
    }
}

impl<B: Backend> Drafter for DraftModel<B> {
    fn propose(&mut self, seq: u64, context: &[u32], k: usize) -> Result<Vec<u32>> {
        if k == 0 || context.is_empty() {
            return Ok(vec![]);
        }
        let entry = match self.seqs.remove(&seq) {
            // The context only grows while a sequence runs; anything else starts over.
            Some(d) if d.fed.len() < context.len() && context.starts_with(&d.fed) => d,
            _ => DraftSeq {
                state: self.backend.new_state()?,
                fed: vec![],
            },
        };
        let mut d = entry;
        let logits = self
            .backend
            .forward(&context[d.fed.len()..], &mut d.state)?;
        d.fed = context.to_vec();
        let mut drafts = vec![model::sampling::argmax(&logits)];
        if k > 1 {
            let mut ahead = self.backend.fork(&d.state, k)?;
            while drafts.len() < k {
                let last = *drafts.last().expect("one draft at least");
                let l = self.backend.forward(&[last], &mut ahead)?;
                drafts.push(model::sampling::argmax(&l));
            }
        }
        self.seqs.insert(seq, d);
        Ok(drafts)
    }
    fn forget(&mut self, seq: u64) {
        self.seqs.remove(&seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_lookup_takes_the_longest_most_recent_ngram() {
        // "1 2 3" recurs; the latest earlier "2 3" is followed by 9.
        let ctx = [1, 2, 3, 4, 5, 6, 2, 3, 9, 7, 1, 2, 3];
        assert_eq!(ngram_drafts(&ctx, 3), vec![4, 5, 6]);
        let ctx = [5, 2, 3, 8, 8, 2, 3, 9, 7, 0, 2, 3];
        assert_eq!(ngram_drafts(&ctx, 2), vec![9, 7]);
        // The continuation stops at the end of the context.
        assert_eq!(ngram_drafts(&[7, 8, 7, 8], 5), vec![7, 8]);
        // Nothing recurs, or too short.
        assert!(ngram_drafts(&[1, 2, 3, 4], 3).is_empty());
        assert!(ngram_drafts(&[1, 1], 3).is_empty());
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let e = SpecConfig::parse("ngram", 0).unwrap_err().to_string();
        assert!(e.contains("--num-speculative-tokens"), "{e}");
        let e = SpecConfig::parse("eagle", 3).unwrap_err().to_string();
        assert!(e.contains("'ngram' or 'model:PATH'"), "{e}");
        let e = SpecConfig::parse("model:/no/such/model", 3)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot load the draft model /no/such/model"),
            "{e}"
        );
    }
}
