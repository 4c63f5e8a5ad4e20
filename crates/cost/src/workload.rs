//! Workloads (seconds for one request stream on the profile's machine):
//! - single-shot reasoning: a prompt, then N thinking tokens; with Delethink (chunk C,
//!   carryover m) the context stays within q + C: each chunk after the first re-prefills the
//!   carryover (and the query, unless the prefix cache keeps it) and decodes C − m tokens;
//! - multi-turn interleaved thinking: each turn appends a user message, decodes thinking and an
//!   answer, and (MiniMax-M2 style) keeps the thinking in the history; a share `hit` of the
//!   history comes from the prefix cache, the rest is prefilled again. FA + Delethink bounds
//!   each turn's thinking context to history + user + C, but the kept history still grows.
use crate::arch::Arch;
use crate::time::{decode_s, prefill_s, Profile};
use serde::Serialize;

/// Prefill chunk the workloads assume (tokens per engine step).
pub const CHUNK: usize = 2048;

pub fn single_shot(a: &Arch, p: &Profile, prompt: usize, think: usize) -> f64 {
    prefill_s(a, p, 0, prompt, CHUNK) + decode_s(a, p, 1, prompt, think)
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Delethink {
    pub chunk: usize,
    pub carryover: usize,
    /// The query's prefix is cached between chunks (only the carryover is re-prefilled).
    pub cached_query: bool,
}

pub fn single_shot_delethink(
    a: &Arch,
    p: &Profile,
    prompt: usize,
    think: usize,
    d: Delethink,
) -> f64 {
    let mut t = prefill_s(a, p, 0, prompt, CHUNK);
    let first = think.min(d.chunk);
    t += decode_s(a, p, 1, prompt, first);
    let mut done = first;
    while done < think {
        let n = (think - done).min(d.chunk - d.carryover);
        t += if d.cached_query {
            prefill_s(a, p, prompt, d.carryover, CHUNK)
        } else {
            prefill_s(a, p, 0, prompt + d.carryover, CHUNK)
        };
        t += decode_s(a, p, 1, prompt + d.carryover, n);
        done += n;
    }
    t
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Turns {
    pub system: usize,
    pub user: usize,
    pub think: usize,
    pub answer: usize,
    /// Share of the history served from the prefix cache (0: none, 1: all).
    pub hit: f64,
    /// Whether a turn's thinking stays in the history (MiniMax-M2) or is stripped (Qwen3).
    pub keep_think: bool,
}

/// Seconds of each turn, and the context at its end.
pub fn multi_turn(
    a: &Arch,
    p: &Profile,
    turns: usize,
    w: Turns,
    delethink: Option<Delethink>,
) -> Vec<(f64, usize)> {
    let mut history = w.system;
    let mut out = vec![];
    for _ in 0..turns {
        let cached = (history as f64 * w.hit) as usize;
        let mut t = prefill_s(a, p, cached, history - cached + w.user, CHUNK);
        let ctx = history + w.user;
        t += match delethink {
            // Thinking in chunks over history + user; the answer after the last chunk.
            Some(d) => {
                let mut s = decode_s(a, p, 1, ctx, w.think.min(d.chunk));
                let mut done = w.think.min(d.chunk);
                while done < w.think {
                    let n = (w.think - done).min(d.chunk - d.carryover);
                    s += prefill_s(a, p, ctx, d.carryover, CHUNK)
                        + decode_s(a, p, 1, ctx + d.carryover, n);
                    done += n;
                }
                s + decode_s(a, p, 1, ctx + d.chunk.min(w.think), w.answer)
            }
            None => decode_s(a, p, 1, ctx, w.think + w.answer),
        };
        history = ctx + w.answer + if w.keep_think { w.think } else { 0 };
        out.push((t, history));
    }
    out
}

/// One request of many sharing a `system`-token prompt: its prefill (the system prompt from
/// the cache when `cached`, else recomputed) and `answer` decoded tokens.
pub fn shared_prompt(
    a: &Arch,
    p: &Profile,
    system: usize,
    user: usize,
    answer: usize,
    cached: bool,
) -> f64 {
    let past = if cached { system } else { 0 };
    prefill_s(a, p, past, system + user - past, CHUNK) + decode_s(a, p, 1, system + user, answer)
}

/// The first turn count at which `b`'s cumulative time is below `a`'s (None within `max`).
pub fn crossover(a: &[(f64, usize)], b: &[(f64, usize)]) -> Option<(usize, usize)> {
    let (mut ca, mut cb) = (0.0, 0.0);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        ca += x.0;
        cb += y.0;
        if cb < ca {
            return Some((i + 1, y.1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::preset;
    use crate::time::{decode_step_s, Profile};

    fn h200() -> Profile {
        Profile {
            device: "test".into(),
            gemm_flops: 870e12,
            stream_bytes_per_s: 2.6e12,
            decode_kv_bytes_per_s: 2.0e12,
            flash_flops: 350e12,
            linear_token_heads_per_s: 2.3e8,
            layer_overhead_s: [
                ("attention".to_string(), 30e-6),
                ("linear".to_string(), 40e-6),
            ]
            .into(),
            prefill_overhead_s: [
                ("attention".to_string(), 60e-6),
                ("linear".to_string(), 80e-6),
            ]
            .into(),
            gpus: 8,
            memory_bytes: 141e9,
            sources: vec![],
        }
    }

    #[test]
    fn delethink_bounds_the_context_and_wins_long_single_shot_reasoning_for_fa() {
        let m2 = preset("minimax-m2").unwrap();
        let p = h200();
        let d = Delethink {
            chunk: 8192,
            carryover: 4096,
            cached_query: true,
        };
        let plain = single_shot(&m2, &p, 1024, 96 * 1024);
        let bounded = single_shot_delethink(&m2, &p, 1024, 96 * 1024, d);
        assert!(bounded < plain, "{bounded} vs {plain}");
        // Within one chunk Delethink is plain decoding.
        let short = (
            single_shot(&m2, &p, 1024, 4096),
            single_shot_delethink(&m2, &p, 1024, 4096, d),
        );
        assert!((short.0 - short.1).abs() < 1e-9);
    }

    #[test]
    fn the_hybrid_decodes_faster_at_long_context_and_prefix_caching_cuts_turn_costs() {
        let (fa, hy) = (preset("minimax-m2").unwrap(), preset("m2-hybrid").unwrap());
        let p = h200();
        assert!(decode_step_s(&hy, &p, 1, 128 * 1024) < decode_step_s(&fa, &p, 1, 128 * 1024));
        let w = Turns {
            system: 2000,
            user: 200,
            think: 2000,
            answer: 300,
            hit: 1.0,
            keep_think: true,
        };
        let cached: f64 = multi_turn(&fa, &p, 10, w, None).iter().map(|t| t.0).sum();
        let cold: f64 = multi_turn(&fa, &p, 10, Turns { hit: 0.0, ..w }, None)
            .iter()
            .map(|t| t.0)
            .sum();
        assert!(cached < cold);
        let turns = multi_turn(&fa, &p, 3, w, None);
        assert_eq!(turns[2].1, 2000 + 3 * 2500);
        let stripped = multi_turn(
            &fa,
            &p,
            3,
            Turns {
                keep_think: false,
                ..w
            },
            None,
        );
        assert_eq!(stripped[2].1, 2000 + 3 * 500);
    }
}
