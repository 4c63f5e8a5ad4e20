//! Passkey retrieval: a short number hidden in filler, asked for at the end.
//!
//! Source: Mohtashami & Jaggi, "Landmark Attention: Random-Access Infinite Context Length for
//! Transformers" (NeurIPS 2023), §4.2 and `run_test.py` of epfml/landmark-attention. Two forms:
//!
//! - `passkey`: token level, for tiny synthetic models trained from scratch. Reserved ids mark
//!   the key and the query; the digits have their own ids; everything else is filler.
//! - `passkey_text`: the paper's English prompt, for real models behind a tokenizer.
//!
//! Token layout of one example (N seq_len, L passkey_len, F = N - 2 - 2L filler tokens):
//! ```text
//! [filler × a] KEY d1 .. dL [filler × b] QUERY d1 .. dL        a + b = F
//!                                          ^ labels d1 .. dL sit at QUERY, d1 .. d(L-1)
//! ```
//! Only the answer digits are supervised, by next-token prediction: the label at a position is
//! the digit that follows it. Depth = a / F (0: key first, 1: key right before the query);
//! distance = b.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::rng::SplitMix64;
use crate::loss::IGNORE_INDEX;

/// Token 0 is left unused (padding for whoever batches ragged data).
pub const KEY_MARKER: u32 = 1;
pub const QUERY_MARKER: u32 = 2;
/// Digit k is token `DIGIT_BASE + k`, k in 0..10.
pub const DIGIT_BASE: u32 = 3;
/// Filler tokens are [FIRST_FILLER, vocab).
pub const FIRST_FILLER: u32 = DIGIT_BASE + 10;

/// Where the key goes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Placement {
    /// Fraction in [0, 1] of the filler placed before the key (rounded to a token).
    Depth(f64),
    /// Exactly this many filler tokens between the last key digit and the query marker.
    Distance(usize),
    /// Depth uniform over all F + 1 possible positions, drawn per example (for training).
    Random,
}

/// What the filler is.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Filler {
    /// Every filler token uniform over the filler ids: noise the model must learn to skip.
    Uniform,
    /// A phrase of `period` filler tokens, drawn per example and repeated, like the paper's
    /// repeated "The grass is green..." text: predictable filler, as in the text version.
    Repeat { period: usize },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PasskeyConfig {
    /// Vocabulary size; must leave at least one filler id (> FIRST_FILLER).
    pub vocab: usize,
    /// N: tokens per example, the answer digits included.
    pub seq_len: usize,
    /// L: digits in the passkey.
    pub passkey_len: usize,
    pub placement: Placement,
    pub filler: Filler,
}

impl PasskeyConfig {
    /// Filler tokens per example: F = N - 2 - 2L.
    pub fn filler_len(&self) -> usize {
        self.seq_len - 2 - 2 * self.passkey_len
    }

    pub fn validate(&self) -> Result<()> {
        if self.vocab <= FIRST_FILLER as usize {
            bail!(
                "passkey: vocab {} leaves no filler tokens (need > {FIRST_FILLER})",
                self.vocab
            );
        }
        if self.passkey_len == 0 {
            bail!("passkey: passkey_len must be at least 1");
        }
        if self.seq_len < 2 + 2 * self.passkey_len {
            bail!(
                "passkey: seq_len {} is shorter than two markers and two copies of {} digits",
                self.seq_len,
                self.passkey_len
            );
        }
        match self.placement {
            Placement::Depth(d) if !(0.0..=1.0).contains(&d) => {
                bail!("passkey: depth {d} is outside [0, 1]")
            }
            Placement::Distance(b) if b > self.filler_len() => {
                bail!(
                    "passkey: distance {b} exceeds the {} filler tokens",
                    self.filler_len()
                )
            }
            _ => {}
        }
        if let Filler::Repeat { period: 0 } = self.filler {
            bail!("passkey: repeat period must be at least 1");
        }
        Ok(())
    }
}

/// A batch of token-level passkey examples, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct PasskeyBatch {
    pub inputs: Vec<u32>, // [B, N]
    pub labels: Vec<i64>, // [B, N], L supervised positions per example
    pub batch: usize,
    pub seq_len: usize,
    /// Position of KEY_MARKER in each example [B]: bins accuracy by depth.
    pub key_pos: Vec<usize>,
    /// Position of QUERY_MARKER, the same in every example: N - L - 1.
    pub query_pos: usize,
}

/// Generate `batch` token-level passkey examples from `seed`.
pub fn passkey(cfg: &PasskeyConfig, batch: usize, seed: u64) -> Result<PasskeyBatch> {
    cfg.validate()?;
    let (n, l, f) = (cfg.seq_len, cfg.passkey_len, cfg.filler_len());
    let n_fill = (cfg.vocab - FIRST_FILLER as usize) as u64;
    let mut rng = SplitMix64::new(seed);
    let mut inputs = Vec::with_capacity(batch * n);
    let mut labels = vec![IGNORE_INDEX; batch * n];
    let mut key_pos = Vec::with_capacity(batch);

    for y in labels.chunks_mut(n) {
        let before = match cfg.placement {
            Placement::Depth(d) => (d * f as f64).round() as usize,
            Placement::Distance(b) => f - b,
            Placement::Random => rng.below(f as u64 + 1) as usize,
        };
        let digits: Vec<u32> = (0..l).map(|_| DIGIT_BASE + rng.below(10) as u32).collect();
        // [F] filler tokens; the key block is spliced in after the first `before`. A repeated
        // phrase runs on across the key, so the filler after it stays in phase.
        let fill: Vec<u32> = match cfg.filler {
            Filler::Uniform => (0..f)
                .map(|_| FIRST_FILLER + rng.below(n_fill) as u32)
                .collect(),
            Filler::Repeat { period } => {
                let phrase: Vec<u32> = (0..period)
                    .map(|_| FIRST_FILLER + rng.below(n_fill) as u32)
                    .collect();
                (0..f).map(|i| phrase[i % period]).collect()
            }
        };
        let start = inputs.len();
        inputs.extend_from_slice(&fill[..before]);
        key_pos.push(before);
        inputs.push(KEY_MARKER);
        inputs.extend_from_slice(&digits);
        inputs.extend_from_slice(&fill[before..]);
        let q = inputs.len() - start;
        inputs.push(QUERY_MARKER);
        inputs.extend_from_slice(&digits);
        // Next-token labels: the query marker predicts d1, digit j predicts digit j+1.
        for (j, &d) in digits.iter().enumerate() {
            y[q + j] = d as i64;
        }
    }
    Ok(PasskeyBatch {
        inputs,
        labels,
        batch,
        seq_len: n,
        key_pos,
        query_pos: n - l - 1,
    })
}

/// Fraction of examples whose every supervised position is predicted right (a passkey is only
/// retrieved if all its digits are). pred, labels: [B, N]. Examples without labels are skipped;
/// NaN when none has any.
pub fn exact_match(pred: &[u32], labels: &[i64], seq_len: usize) -> f64 {
    assert_eq!(
        pred.len(),
        labels.len(),
        "exact_match: pred and labels differ in length"
    );
    assert!(
        seq_len > 0 && labels.len().is_multiple_of(seq_len),
        "exact_match: length is not B*N"
    );
    let (mut hits, mut examples) = (0usize, 0usize);
    for (p, y) in pred.chunks(seq_len).zip(labels.chunks(seq_len)) {
        let mut supervised = p
            .iter()
            .zip(y)
            .filter(|(_, &l)| l != IGNORE_INDEX)
            .peekable();
        if supervised.peek().is_none() {
            continue;
        }
        examples += 1;
        hits += supervised.all(|(&pi, &l)| pi as i64 == l) as usize;
    }
    if examples == 0 {
        f64::NAN
    } else {
        hits as f64 / examples as f64
    }
}

const TASK_DESCRIPTION: &str =
    "There is an important info hidden inside a lot of irrelevant text. \
Find it and memorize them. I will quiz you about the important information there.";
const GARBAGE: [&str; 5] = [
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
];
const FINAL_QUESTION: &str = "What is the pass key? The pass key is";

/// `n` filler sentences, cycling through the paper's five from the first.
fn garbage(n: usize) -> String {
    (0..n)
        .map(|i| GARBAGE[i % GARBAGE.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The paper's passkey prompt with `filler_sentences` filler sentences (about 5 tokens each),
/// `depth` in [0, 1] of them before the key. Returns (prompt, answer); the answer is a 5-digit
/// number that a model continues the prompt with (after a space: the prompt ends "...is").
///
/// Lines as in landmark-attention's `generate_prompt_landmark`: description, filler before,
/// "The pass key is K. Remember it. K is the pass key.", filler after, question. Differences:
/// filler is counted in sentences, not characters, and K is uniform over 10000..=99999 instead of
/// 1..=50000, so every answer has the same number of digits.
pub fn passkey_text(filler_sentences: usize, depth: f64, seed: u64) -> (String, String) {
    assert!(
        (0.0..=1.0).contains(&depth),
        "passkey_text: depth {depth} is outside [0, 1]"
    );
    let mut rng = SplitMix64::new(seed);
    let key = 10_000 + rng.below(90_000);
    let before = (depth * filler_sentences as f64).round() as usize;
    let info = format!("The pass key is {key}. Remember it. {key} is the pass key.");
    let lines = [
        TASK_DESCRIPTION.to_string(),
        garbage(before),
        info,
        garbage(filler_sentences - before),
        FINAL_QUESTION.to_string(),
    ];
    (lines.join("\n"), key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(placement: Placement, filler: Filler) -> PasskeyConfig {
        PasskeyConfig {
            vocab: 64,
            seq_len: 40,
            passkey_len: 5,
            placement,
            filler,
        }
    }

    /// Checks one example against the layout in the module doc; returns (before, digits).
    fn check_example(c: &PasskeyConfig, x: &[u32], y: &[i64]) -> (usize, Vec<u32>) {
        let (n, l) = (c.seq_len, c.passkey_len);
        assert_eq!(x.len(), n);
        let k = x.iter().position(|&t| t == KEY_MARKER).expect("key marker");
        let q = n - l - 1;
        assert_eq!(x[q], QUERY_MARKER);
        assert_eq!(
            x.iter()
                .filter(|&&t| t == KEY_MARKER || t == QUERY_MARKER)
                .count(),
            2
        );
        let digits = x[k + 1..k + 1 + l].to_vec();
        assert!(digits
            .iter()
            .all(|&d| (DIGIT_BASE..FIRST_FILLER).contains(&d)));
        assert_eq!(x[q + 1..], digits[..], "answer repeats the key");
        for (i, &t) in x.iter().enumerate() {
            let special = i == k || i == q || (k < i && i <= k + l) || i > q;
            assert_eq!(special, t < FIRST_FILLER, "position {i} token {t}");
            assert!((t as usize) < c.vocab && t != 0);
        }
        for (i, &lab) in y.iter().enumerate() {
            if (q..q + l).contains(&i) {
                assert_eq!(lab, x[i + 1] as i64, "label is the next token");
            } else {
                assert_eq!(lab, IGNORE_INDEX);
            }
        }
        (k, digits)
    }

    #[test]
    fn layout_and_labels() {
        for filler in [Filler::Uniform, Filler::Repeat { period: 3 }] {
            let c = cfg(Placement::Random, filler);
            let b = passkey(&c, 50, 1).unwrap();
            assert_eq!(
                (b.inputs.len(), b.labels.len(), b.key_pos.len()),
                (2000, 2000, 50)
            );
            assert_eq!(b.query_pos, 34);
            for i in 0..50 {
                let r = i * 40..(i + 1) * 40;
                let (k, _) = check_example(&c, &b.inputs[r.clone()], &b.labels[r]);
                assert_eq!(k, b.key_pos[i]);
            }
            // Random placement reaches both ends over many examples.
            let many = passkey(&c, 2000, 2).unwrap();
            assert!(many.key_pos.contains(&0) && many.key_pos.contains(&c.filler_len()));
        }
    }

    #[test]
    fn depth_and_distance_place_the_key() {
        let f = cfg(Placement::Random, Filler::Uniform).filler_len(); // 28
        for (placement, want) in [
            (Placement::Depth(0.0), 0),
            (Placement::Depth(0.5), 14),
            (Placement::Depth(1.0), f),
            (Placement::Distance(0), f),
            (Placement::Distance(10), f - 10),
            (Placement::Distance(f), 0),
        ] {
            let c = cfg(placement, Filler::Uniform);
            let b = passkey(&c, 4, 3).unwrap();
            assert!(
                b.key_pos.iter().all(|&k| k == want),
                "{placement:?}: {:?}",
                b.key_pos
            );
            for i in 0..4 {
                let r = i * 40..(i + 1) * 40;
                check_example(&c, &b.inputs[r.clone()], &b.labels[r]);
            }
        }
    }

    #[test]
    fn repeated_filler_is_periodic_across_the_key() {
        let c = cfg(Placement::Depth(0.5), Filler::Repeat { period: 4 });
        let b = passkey(&c, 1, 9).unwrap();
        let fill: Vec<u32> = b
            .inputs
            .iter()
            .copied()
            .filter(|&t| t >= FIRST_FILLER)
            .collect();
        assert_eq!(fill.len(), c.filler_len());
        for i in 4..fill.len() {
            assert_eq!(fill[i], fill[i - 4]);
        }
    }

    #[test]
    fn invalid_configs_are_errors() {
        let ok = cfg(Placement::Depth(0.5), Filler::Uniform);
        for (c, words) in [
            (
                PasskeyConfig {
                    vocab: 13,
                    ..ok.clone()
                },
                "no filler",
            ),
            (
                PasskeyConfig {
                    passkey_len: 0,
                    ..ok.clone()
                },
                "passkey_len",
            ),
            (
                PasskeyConfig {
                    seq_len: 11,
                    ..ok.clone()
                },
                "shorter",
            ),
            (
                PasskeyConfig {
                    placement: Placement::Depth(1.5),
                    ..ok.clone()
                },
                "depth",
            ),
            (
                PasskeyConfig {
                    placement: Placement::Distance(29),
                    ..ok.clone()
                },
                "distance",
            ),
            (
                PasskeyConfig {
                    filler: Filler::Repeat { period: 0 },
                    ..ok.clone()
                },
                "period",
            ),
        ] {
            let err = passkey(&c, 1, 0).unwrap_err().to_string();
            assert!(err.contains(words), "{c:?}: {err}");
        }
        // No filler at all is a valid (trivial) example.
        let tight = PasskeyConfig { seq_len: 12, ..ok };
        let b = passkey(&tight, 2, 0).unwrap();
        check_example(&tight, &b.inputs[..12], &b.labels[..12]);
    }

    #[test]
    fn deterministic_per_seed() {
        let c = cfg(Placement::Random, Filler::Uniform);
        assert_eq!(passkey(&c, 5, 4).unwrap(), passkey(&c, 5, 4).unwrap());
        assert_ne!(
            passkey(&c, 5, 4).unwrap().inputs,
            passkey(&c, 5, 5).unwrap().inputs
        );
    }

    #[test]
    fn exact_match_needs_every_digit() {
        let c = cfg(Placement::Depth(0.3), Filler::Uniform);
        let b = passkey(&c, 3, 6).unwrap();
        let mut pred: Vec<u32> = b.labels.iter().map(|&l| l.max(0) as u32).collect();
        assert_eq!(exact_match(&pred, &b.labels, 40), 1.0);
        pred[b.query_pos + 4] += 1; // last digit of example 0 wrong
        assert!((exact_match(&pred, &b.labels, 40) - 2.0 / 3.0).abs() < 1e-12);
        assert!(exact_match(&[0; 4], &[IGNORE_INDEX; 4], 4).is_nan());
    }

    #[test]
    fn text_prompt_matches_the_paper() {
        let (prompt, answer) = passkey_text(10, 0.3, 1);
        assert_eq!(answer.len(), 5);
        let lines: Vec<&str> = prompt.split('\n').collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], TASK_DESCRIPTION);
        assert_eq!(
            lines[1],
            "The grass is green. The sky is blue. The sun is yellow."
        );
        assert_eq!(
            lines[2],
            format!("The pass key is {answer}. Remember it. {answer} is the pass key.")
        );
        assert_eq!(lines[3].matches('.').count(), 7);
        assert_eq!(lines[4], "What is the pass key? The pass key is");
        assert_eq!(passkey_text(10, 0.3, 1), (prompt, answer.clone()));
        assert_ne!(passkey_text(10, 0.3, 2).1, answer);
        // Depth moves the key; total filler stays the same.
        let (p0, _) = passkey_text(20, 0.0, 3);
        let (p1, _) = passkey_text(20, 1.0, 3);
        assert!(p0.split('\n').nth(1).unwrap().is_empty());
        assert!(p1.split('\n').nth(3).unwrap().is_empty());
        assert_eq!(p0.len(), p1.len());
    }
}
