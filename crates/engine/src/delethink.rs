//! Delethink (the Markovian Thinker, research/delethink-mqar.md §1.2, §6.1): reasoning in
//! chunks of bounded context. Chunk 1 generates up to C tokens after the query q; its first
//! H (100) tokens are folded into the query. Every later chunk starts from q ⊕ head plus the
//! last m tokens of the previous chunk (the carryover) and generates up to C − m tokens. The
//! trace ends at a stop token or after I chunks. Peak context: |q| + H + C, whatever the trace
//! length; thinking budget C + (I − 1)(C − m).
//!
//! At each boundary the previous chunk's state is dropped. The state after q ⊕ head is a
//! snapshot taken when chunk 1 passes it (keys/values in shared paged blocks, recurrent states
//! copied), restored at every boundary; only the carryover is prefilled — the paper's
//! semantics (the query's keys do not depend on the chunk) with its O(m²) re-encoding, and
//! the way a hybrid must do it (a recurrent state cannot drop the tail it has absorbed).
use crate::engine::ServeModel;
use crate::prefix::state_bytes;
use anyhow::{bail, Result};
use model::hybrid::{HybridModel, LayerState};
use model::{Sampler, SamplingParams, TextStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct DelethinkSpec {
    /// C: tokens of thinking context per chunk.
    pub chunk: usize,
    /// m: tokens carried from one chunk into the next.
    pub carryover: usize,
    /// I: the most chunks a trace may run.
    pub max_chunks: usize,
    /// H: tokens of the first chunk folded into the query (the paper: 100).
    #[serde(default = "default_head")]
    pub head: usize,
}

fn default_head() -> usize {
    100
}

impl DelethinkSpec {
    pub fn validate(&self) -> Result<()> {
        if self.chunk == 0 || self.max_chunks == 0 {
            bail!("delethink needs chunk >= 1 and max_chunks >= 1");
        }
        if self.carryover >= self.chunk {
            bail!(
                "delethink's carryover ({}) must be smaller than its chunk ({}): each chunk after the first generates chunk - carryover tokens",
                self.carryover,
                self.chunk
            );
        }
        if self.head > self.chunk {
            bail!(
                "delethink's head ({}) cannot exceed its chunk ({})",
                self.head,
                self.chunk
            );
        }
        Ok(())
    }

    /// C + (I − 1)(C − m).
    pub fn max_thinking_tokens(&self) -> usize {
        self.chunk + (self.max_chunks - 1) * (self.chunk - self.carryover)
    }

    /// The longest context a chunk holds: |q| + H + C.
    pub fn peak_context(&self, query: usize) -> usize {
        query + self.head + self.chunk
    }

    /// An error unless a chunk after a `query`-token prompt fits a `context`-token model.
    pub fn check_fits(&self, query: usize, context: usize) -> Result<()> {
        let peak = self.peak_context(query);
        if peak > context {
            bail!(
                "a delethink chunk needs up to {peak} tokens of context (prompt {query} + head {} + chunk {}); the model's context is {context} tokens",
                self.head,
                self.chunk
            );
        }
        Ok(())
    }
}

/// One chunk of a trace.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Chunk {
    /// The tokens its context starts from: q for chunk 1, q ⊕ head ⊕ carryover after.
    pub context: Vec<u32>,
    /// Tokens run through the model to build that context (the carryover when the snapshot
    /// of q ⊕ head is restored).
    pub prefilled: usize,
    /// What it generated.
    pub tokens: Vec<u32>,
    /// The most tokens its cache held.
    pub peak_cache_tokens: usize,
    /// Bytes of its state at its end (keys/values and recurrent states): the chunk's peak.
    pub peak_cache_bytes: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Trace {
    pub chunks: Vec<Chunk>,
    /// Every chunk's tokens, in order (what a reader of the trace sees).
    pub tokens: Vec<u32>,
    pub text: String,
    /// "stop" (a stop token or string), "length" (I chunks ran out) or "cancelled".
    pub finish_reason: String,
}

impl Trace {
    pub fn peak_cache_bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.peak_cache_bytes)
            .max()
            .unwrap_or(0)
    }

    pub fn peak_cache_tokens(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.peak_cache_tokens)
            .max()
            .unwrap_or(0)
    }
}

/// What [`think`] reports while it runs.
pub enum Event<'a> {
    /// Text of the trace, as it is decoded.
    Text(&'a str),
    /// A new chunk starts (1-based) from a context of this many tokens.
    Boundary { chunk: usize, context: usize },
}

/// Runs a Delethink trace after `query` (prompt token ids, chat template applied).
pub fn think(
    m: &ServeModel,
    query: &[u32],
    spec: &DelethinkSpec,
    sampling: &SamplingParams,
    stop: &[String],
    mut on: impl FnMut(Event),
) -> Result<Trace> {
    think_with(m, query, spec, sampling, stop, false, |e| {
        on(e);
        true
    })
}

/// [`think`]; with `ignore_stop`, stop tokens do not end the trace (benchmarks of a given
/// trace length, as vLLM's `ignore_eos`); `on` returning false cancels the trace (finish
/// reason "cancelled": a client went away).
pub fn think_with(
    m: &ServeModel,
    query: &[u32],
    spec: &DelethinkSpec,
    sampling: &SamplingParams,
    stop: &[String],
    ignore_stop: bool,
    on: impl FnMut(Event) -> bool,
) -> Result<Trace> {
    sampling.validate()?;
    // Both the token and the boundary callbacks report through `on`, one at a time.
    let on = std::cell::RefCell::new(on);
    spec.check_fits(query.len(), m.context)?;
    let mut sampler = Sampler::new(sampling.clone());
    let mut stream = TextStream::new(stop);
    let mut err = None;
    let (chunks, finish) = think_tokens(
        &m.model,
        query,
        spec,
        |logits| sampler.sample(logits),
        |id| !ignore_stop && m.tokenizer.is_stop(id),
        |id| match stream.push(&m.tokenizer, id) {
            Ok((delta, stopped)) => {
                if !delta.is_empty() && !(on.borrow_mut())(Event::Text(&delta)) {
                    Flow::Cancel
                } else if stopped {
                    Flow::Stop
                } else {
                    Flow::Go
                }
            }
            Err(e) => {
                err = Some(e);
                Flow::Cancel
            }
        },
        |chunk, context| (on.borrow_mut())(Event::Boundary { chunk, context }),
    )?;
    if let Some(e) = err {
        return Err(e);
    }
    let rest = stream.finish();
    if !rest.is_empty() && finish != "cancelled" {
        (on.borrow_mut())(Event::Text(&rest));
    }
    let tokens = chunks.iter().flat_map(|c| c.tokens.clone()).collect();
    Ok(Trace {
        chunks,
        tokens,
        text: stream.text,
        finish_reason: finish.into(),
    })
}

/// What to do after a generated token.
pub enum Flow {
    Go,
    /// End the trace with this token kept (a stop string).
    Stop,
    /// End the trace now ("cancelled").
    Cancel,
}

/// The Delethink loop over token ids alone, for any [`HybridModel`] (also models without a
/// tokenizer, e.g. the synthetic ones of `hybrid train-markov`): `sample(logits)` picks the
/// next token; a token for which `is_stop` holds ends the trace and is not kept;
/// `on_token` sees every kept token; `on_boundary(chunk, context)` returning false cancels.
/// Returns the chunks and the finish reason ("stop", "length", "cancelled").
pub fn think_tokens(
    model: &HybridModel,
    query: &[u32],
    spec: &DelethinkSpec,
    mut sample: impl FnMut(&[f32]) -> u32,
    is_stop: impl Fn(u32) -> bool,
    mut on_token: impl FnMut(u32) -> Flow,
    mut on_boundary: impl FnMut(usize, usize) -> bool,
) -> Result<(Vec<Chunk>, &'static str)> {
    spec.validate()?;
    if query.is_empty() {
        bail!("the prompt is empty");
    }
    let mut chunks: Vec<Chunk> = vec![];
    // The state after q ⊕ head and the head's tokens, once chunk 1 has passed them.
    let mut snapshot: Option<(Vec<LayerState>, Vec<u32>)> = None;
    let mut finish = "length";
    'chunks: for i in 0..spec.max_chunks {
        let (mut states, context, prefilled) = if i == 0 {
            (model.new_state(1), query.to_vec(), query.len())
        } else {
            let prev = &chunks[i - 1].tokens;
            let tail = &prev[prev.len().saturating_sub(spec.carryover)..];
            let Some((s, head)) = &snapshot else {
                bail!("delethink lost the state after the query and head");
            };
            let mut context = query.to_vec();
            context.extend(head);
            context.extend_from_slice(tail);
            (s.clone(), context, tail.len())
        };
        if !on_boundary(i + 1, context.len()) {
            finish = "cancelled";
            break;
        }
        let fresh = &context[context.len() - prefilled..];
        if fresh.is_empty() {
            bail!("delethink chunk {} has nothing to continue from", i + 1);
        }
        let mut logits = model.forward(fresh, 1, &mut states, false)?;
        if i == 0 && spec.head == 0 {
            snapshot = Some((states.clone(), vec![]));
        }
        let budget = if i == 0 {
            spec.chunk
        } else {
            spec.chunk - spec.carryover
        };
        let mut out: Vec<u32> = vec![];
        let mut held = context.len();
        let mut peak_tokens = held;
        while out.len() < budget {
            let next = sample(&logits);
            let flow = if is_stop(next) {
                Flow::Cancel
            } else {
                out.push(next);
                on_token(next)
            };
            if !matches!(flow, Flow::Go) {
                finish = match (is_stop(next), flow) {
                    (true, _) | (false, Flow::Stop) => "stop",
                    _ => "cancelled",
                };
                chunks.push(Chunk {
                    context,
                    prefilled,
                    tokens: out,
                    peak_cache_tokens: peak_tokens,
                    peak_cache_bytes: state_bytes(&states),
                });
                break 'chunks;
            }
            if out.len() == budget {
                break;
            }
            logits = model.forward(&[next], 1, &mut states, false)?;
            held += 1;
            peak_tokens = peak_tokens.max(held);
            if i == 0 && out.len() == spec.head && snapshot.is_none() {
                snapshot = Some((states.clone(), out.clone()));
            }
        }
        let peak_cache_bytes = state_bytes(&states);
        if i == 0 && snapshot.is_none() {
            // The head is the whole first chunk: its last token was never run.
            if let Some(&last) = out.last() {
                model.forward(&[last], 1, &mut states, false)?;
            }
            snapshot = Some((states, out.clone()));
        }
        chunks.push(Chunk {
            context,
            prefilled,
            tokens: out,
            peak_cache_tokens: peak_tokens,
            peak_cache_bytes,
        });
    }
    Ok((chunks, finish))
}

/// Splits a trace's text into reasoning and answer at the first `</think>` (a leading
/// `<think>` dropped), as vLLM's `deepseek_r1` reasoning parser and the Markovian Thinker's
/// grader do: without `</think>` the whole trace is reasoning and there is no answer.
#[derive(Default)]
pub struct ThinkSplitter {
    pending: String,
    answering: bool,
    started: bool,
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

impl ThinkSplitter {
    /// Feeds decoded text; returns (reasoning, answer) text that is now certain. A possible
    /// beginning of `</think>` is held back until the next call or [`Self::finish`].
    pub fn push(&mut self, text: &str) -> (String, String) {
        self.pending.push_str(text);
        if !self.started {
            let t = self.pending.trim_start();
            if t.len() < OPEN.len() && OPEN.starts_with(t) {
                return (String::new(), String::new());
            }
            if let Some(rest) = t.strip_prefix(OPEN) {
                self.pending = rest.to_string();
            }
            self.started = true;
        }
        if self.answering {
            return (String::new(), std::mem::take(&mut self.pending));
        }
        if let Some(i) = self.pending.find(CLOSE) {
            let reasoning = self.pending[..i].to_string();
            let answer = self.pending[i + CLOSE.len()..].to_string();
            self.pending.clear();
            self.answering = true;
            return (reasoning, answer);
        }
        // Hold back the longest suffix that could start `</think>`.
        let keep = (1..CLOSE.len())
            .rev()
            .find(|&k| {
                self.pending
                    .is_char_boundary(self.pending.len().saturating_sub(k))
                    && self.pending.ends_with(&CLOSE[..k])
            })
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, String::new())
    }

    /// (reasoning, answer) of a whole text at once.
    pub fn split_text(text: &str) -> (String, String) {
        let mut s = ThinkSplitter::default();
        let (mut r, mut a) = s.push(text);
        let (r2, a2) = s.finish();
        r.push_str(&r2);
        a.push_str(&a2);
        (r, a)
    }

    /// What is left at the end of the trace.
    pub fn finish(&mut self) -> (String, String) {
        let rest = std::mem::take(&mut self.pending);
        if self.answering {
            (String::new(), rest)
        } else {
            (rest, String::new())
        }
    }
}

/// Tokens of the trace up to and including the first `</think>` (all of them without one).
pub fn reasoning_tokens(m: &ServeModel, trace: &[u32]) -> usize {
    let Ok(close) = m.tokenizer.encode(CLOSE, false) else {
        return trace.len();
    };
    if close.is_empty() {
        return trace.len();
    }
    trace
        .windows(close.len())
        .position(|w| w == &close[..])
        .map_or(trace.len(), |i| i + close.len())
}

#[cfg(test)]
mod tests {
    use super::ThinkSplitter;

    fn split(parts: &[&str]) -> (String, String) {
        let mut s = ThinkSplitter::default();
        let (mut r, mut a) = (String::new(), String::new());
        for p in parts {
            let (x, y) = s.push(p);
            r += &x;
            a += &y;
        }
        let (x, y) = s.finish();
        (r + &x, a + &y)
    }

    #[test]
    fn splits_at_the_first_close_tag_even_across_deltas() {
        assert_eq!(
            split(&["<think>plan", " more</thi", "nk>The answer"]),
            ("plan more".into(), "The answer".into())
        );
        assert_eq!(
            split(&["no tags at all"]),
            ("no tags at all".into(), "".into())
        );
        assert_eq!(
            split(&["<", "think>a</think>b</think>c"]),
            ("a".into(), "b</think>c".into())
        );
        assert_eq!(split(&["x <", "y"]), ("x <y".into(), "".into()));
    }
}
