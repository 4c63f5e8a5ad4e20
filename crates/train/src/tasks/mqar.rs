//! MQAR, multi-query associative recall: the recall probe of Zoology.
//!
//! Source: Arora, Eyuboglu et al., "Zoology: Measuring and Improving Recall in Efficient Language
//! Models" (ICLR 2024); a port of `zoology/data/multiquery_ar.py::multiquery_ar` (HazyResearch/
//! zoology), notes in shared/research/delethink-mqar.md §3.1 and §6.2. Same layout, label
//! placement, query-slot law and assertions; the RNG is SplitMix64, not numpy's, so a seed gives
//! the same *distribution* as Zoology, not the same tokens.
//!
//! Legend: V vocab, N seq_len, D num_kv_pairs, P num_passes, B batch, cs = 2·D·P context size.
//!
//! One example (V=12, D=2, N=16, no random fillers; Zoology's docstring):
//! ```text
//! inputs: 2    8    4    7    0    0    4    0    0    0    0    0    2    0    0    0
//! labels: -100 -100 -100 -100 -100 -100 7    -100 -100 -100 -100 -100 8    -100 -100 -100
//!         |-- context k v k v --|   |-- query region: key k_j at offset 2·g_j --------|
//! ```
//! The label sits at the query key's own position (the model predicts the value next).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::rng::SplitMix64;
use crate::loss::IGNORE_INDEX;

/// Generator arguments, with Zoology's names in the comments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MqarConfig {
    /// V (`vocab_size`): keys from [1, V/2), values from [V/2, V), 0 = blank.
    pub vocab_size: usize,
    /// N (`input_seq_len`): length of `inputs` and `labels` per example. Even, < V.
    pub seq_len: usize,
    /// D (`num_kv_pairs`): pairs in the context, each queried exactly once.
    pub num_kv_pairs: usize,
    /// P (`num_passes`): the key-value block is repeated P times (JRT, arXiv 2407.05483).
    pub num_passes: usize,
    /// a (`power_a`): query slot g has probability ∝ a·(g+1)^(a-1); 0.01 favours slots right
    /// after the context, 1.0 is uniform.
    pub power_a: f64,
    /// `random_non_queries`: replace every remaining 0 by a token uniform over [0, V).
    pub random_non_queries: bool,
}

impl Default for MqarConfig {
    /// Zoology's `MQARConfig` defaults (vocab 8192, N 64, D 8, one pass, a 0.01, random fillers).
    fn default() -> Self {
        Self {
            vocab_size: 8192,
            seq_len: 64,
            num_kv_pairs: 8,
            num_passes: 1,
            power_a: 0.01,
            random_non_queries: true,
        }
    }
}

impl MqarConfig {
    /// Zoology's three assertions, plus the degenerate cases its numpy calls would reject.
    pub fn validate(&self) -> Result<()> {
        let (v, n, d, p) = (
            self.vocab_size,
            self.seq_len,
            self.num_kv_pairs,
            self.num_passes,
        );
        if n % 2 != 0 {
            bail!("MQAR: seq_len N = {n} must be even");
        }
        if v <= n {
            bail!("MQAR: vocab_size V = {v} must be greater than seq_len N = {n}");
        }
        if 2 * d * p + 2 * d > n {
            bail!(
                "MQAR: need 2*D*P + 2*D <= N, got 2*{d}*{p} + 2*{d} = {} > {n}",
                2 * d * p + 2 * d
            );
        }
        if d == 0 {
            bail!("MQAR: num_kv_pairs D must be at least 1");
        }
        if p == 0 {
            bail!("MQAR: num_passes P must be at least 1");
        }
        if !(self.power_a.is_finite() && self.power_a > 0.0) {
            bail!(
                "MQAR: power_a must be a positive number, got {}",
                self.power_a
            );
        }
        // The asserts imply enough keys (V/2 - 1 >= D) and slots (space >= D): V > N >= 4D.
        Ok(())
    }

    fn context_size(&self) -> usize {
        2 * self.num_kv_pairs * self.num_passes
    }

    /// Number of query slots: the even offsets of the query region.
    fn space(&self) -> usize {
        (self.seq_len - self.context_size()) / 2
    }
}

/// A batch of MQAR examples, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct MqarBatch {
    pub inputs: Vec<u32>, // [B, N]
    pub labels: Vec<i64>, // [B, N], -100 except D positions per example
    pub batch: usize,
    pub seq_len: usize,
}

impl MqarBatch {
    /// Inputs [N] and labels [N] of example `i`.
    pub fn example(&self, i: usize) -> (&[u32], &[i64]) {
        let r = i * self.seq_len..(i + 1) * self.seq_len;
        (&self.inputs[r.clone()], &self.labels[r])
    }
}

/// Generate `batch` MQAR examples from `seed`. Errors name the violated condition.
pub fn mqar(cfg: &MqarConfig, batch: usize, seed: u64) -> Result<MqarBatch> {
    cfg.validate()?;
    let (v, n, d) = (cfg.vocab_size, cfg.seq_len, cfg.num_kv_pairs);
    let half = v / 2;
    // Fillers come from their own stream so that switching `random_non_queries` changes only the
    // fillers: same seed, same keys, values and query slots.
    let mut rng = SplitMix64::new(seed);
    let mut filler_rng = SplitMix64::new(rng.next_u64());
    // p(g) ∝ a·(g+1)^(a-1), g in 0..space; normalised inside `weighted_choice`.
    let a = cfg.power_a;
    let slot_weights: Vec<f64> = (0..cfg.space())
        .map(|g| a * ((g + 1) as f64).powf(a - 1.0))
        .collect();

    let mut inputs = Vec::with_capacity(batch * n);
    let mut labels = Vec::with_capacity(batch * n);
    for _ in 0..batch {
        let keys: Vec<u32> = rng
            .choice(half - 1, d)
            .into_iter()
            .map(|k| (k + 1) as u32)
            .collect();
        let values: Vec<u32> = rng
            .choice(v - half, d)
            .into_iter()
            .map(|x| (x + half) as u32)
            .collect();
        let gaps = rng.weighted_choice(&slot_weights, d);
        let (mut x, y) = layout(cfg, &keys, &values, &gaps);
        if cfg.random_non_queries {
            for t in x.iter_mut().filter(|t| **t == 0) {
                *t = filler_rng.below(v as u64) as u32;
            }
        }
        inputs.extend_from_slice(&x);
        labels.extend_from_slice(&y);
    }
    Ok(MqarBatch {
        inputs,
        labels,
        batch,
        seq_len: n,
    })
}

/// The deterministic part of one example: context, queries and labels from the random draws.
/// keys, values, gaps: [D]; pair j is (keys[j], values[j]) and is queried at slot gaps[j].
/// Returns inputs [N] (0 = blank) and labels [N].
fn layout(cfg: &MqarConfig, keys: &[u32], values: &[u32], gaps: &[usize]) -> (Vec<u32>, Vec<i64>) {
    let (n, cs) = (cfg.seq_len, cfg.context_size());
    // Zoology builds N+1 tokens and labels, then shifts: inputs = seq[:-1], labels = labels[1:].
    let mut seq = vec![0u32; n + 1];
    let mut lab = vec![IGNORE_INDEX; n + 1];
    for pass in seq[..cs].chunks_mut(2 * keys.len()) {
        for (j, kv) in pass.chunks_mut(2).enumerate() {
            kv[0] = keys[j];
            kv[1] = values[j];
        }
    }
    for j in 0..keys.len() {
        seq[cs + 2 * gaps[j]] = keys[j];
        lab[cs + 2 * gaps[j] + 1] = values[j] as i64;
    }
    seq.pop();
    lab.remove(0);
    (seq, lab)
}

/// Zoology's MQAR accuracy: per example, the mean of (pred == label) over supervised positions,
/// then the mean over examples. pred, labels: [B, N] (pred is the argmax token per position).
/// Examples without supervised positions are skipped (Zoology would average a NaN in); NaN when
/// no example has any.
pub fn accuracy(pred: &[u32], labels: &[i64], seq_len: usize) -> f64 {
    assert_eq!(
        pred.len(),
        labels.len(),
        "accuracy: pred and labels differ in length"
    );
    assert!(
        seq_len > 0 && labels.len().is_multiple_of(seq_len),
        "accuracy: length is not B*N"
    );
    let mut sum = 0.0;
    let mut examples = 0usize;
    for (p, l) in pred.chunks(seq_len).zip(labels.chunks(seq_len)) {
        let (mut hit, mut total) = (0usize, 0usize);
        for (&pi, &li) in p.iter().zip(l) {
            if li != IGNORE_INDEX {
                total += 1;
                hit += (pi as i64 == li) as usize;
            }
        }
        if total > 0 {
            sum += hit as f64 / total as f64;
            examples += 1;
        }
    }
    if examples == 0 {
        f64::NAN
    } else {
        sum / examples as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zoology's docstring example (V=12, D=2, N=16). Its V violates Zoology's own `V > N`
    /// assertion, so only `layout` can build it; generation uses the smallest valid V, 18.
    fn docstring_cfg() -> MqarConfig {
        MqarConfig {
            vocab_size: 12,
            seq_len: 16,
            num_kv_pairs: 2,
            random_non_queries: false,
            ..Default::default()
        }
    }

    #[test]
    fn layout_reproduces_zoology_docstring_token_for_token() {
        // Draws that produce the docstring: pairs (2, 8), (4, 7); key 4 queried at slot 1
        // (position 6), key 2 at slot 4 (position 12).
        let (x, y) = layout(&docstring_cfg(), &[2, 4], &[8, 7], &[4, 1]);
        assert_eq!(x, vec![2, 8, 4, 7, 0, 0, 4, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
        let mut want = vec![IGNORE_INDEX; 16];
        want[6] = 7;
        want[12] = 8;
        assert_eq!(y, want);
    }

    #[test]
    fn generated_examples_have_the_docstring_structure() {
        let cfg = MqarConfig {
            vocab_size: 18,
            ..docstring_cfg()
        };
        let b = mqar(&cfg, 200, 42).unwrap();
        assert_eq!(
            (b.inputs.len(), b.labels.len(), b.batch, b.seq_len),
            (3200, 3200, 200, 16)
        );
        for i in 0..b.batch {
            let (x, y) = b.example(i);
            let (k, v) = ([x[0], x[2]], [x[1], x[3]]);
            assert!(
                k.iter().all(|&k| (1..9).contains(&k)) && k[0] != k[1],
                "keys {k:?}"
            );
            assert!(
                v.iter().all(|&v| (9..18).contains(&v)) && v[0] != v[1],
                "values {v:?}"
            );
            let mut queried = vec![];
            for pos in 4..16 {
                if x[pos] == 0 {
                    assert_eq!(y[pos], IGNORE_INDEX);
                    continue;
                }
                assert_eq!((pos - 4) % 2, 0, "query key at odd region offset");
                let j = k
                    .iter()
                    .position(|&kk| kk == x[pos])
                    .expect("query token is a context key");
                assert_eq!(
                    y[pos], v[j] as i64,
                    "label is the value paired with the key"
                );
                queried.push(j);
            }
            queried.sort();
            assert_eq!(queried, vec![0, 1], "every key queried exactly once");
            assert!(y[..4].iter().all(|&l| l == IGNORE_INDEX));
            assert_eq!(y.iter().filter(|&&l| l != IGNORE_INDEX).count(), 2);
        }
    }

    #[test]
    fn multiple_passes_repeat_the_context() {
        let cfg = MqarConfig {
            vocab_size: 100,
            seq_len: 32,
            num_kv_pairs: 3,
            num_passes: 2,
            ..docstring_cfg()
        };
        let b = mqar(&cfg, 10, 5).unwrap();
        for i in 0..10 {
            let (x, y) = b.example(i);
            assert_eq!(x[..6], x[6..12]);
            assert_eq!(y.iter().filter(|&&l| l != IGNORE_INDEX).count(), 3);
            assert!(y[..12].iter().all(|&l| l == IGNORE_INDEX));
        }
    }

    #[test]
    fn every_violated_condition_is_an_error() {
        let ok = MqarConfig {
            vocab_size: 100,
            seq_len: 16,
            num_kv_pairs: 2,
            ..Default::default()
        };
        assert!(mqar(&ok, 1, 0).is_ok());
        let cases = [
            (
                MqarConfig {
                    seq_len: 15,
                    ..ok.clone()
                },
                "even",
            ),
            (
                MqarConfig {
                    vocab_size: 16,
                    ..ok.clone()
                },
                "greater than seq_len",
            ),
            (
                MqarConfig {
                    num_kv_pairs: 5,
                    ..ok.clone()
                },
                "2*D*P + 2*D <= N",
            ),
            (
                MqarConfig {
                    num_passes: 4,
                    ..ok.clone()
                },
                "2*D*P + 2*D <= N",
            ),
            (
                MqarConfig {
                    num_kv_pairs: 0,
                    ..ok.clone()
                },
                "num_kv_pairs",
            ),
            (
                MqarConfig {
                    num_passes: 0,
                    ..ok.clone()
                },
                "num_passes",
            ),
            (
                MqarConfig {
                    power_a: 0.0,
                    ..ok.clone()
                },
                "power_a",
            ),
        ];
        for (cfg, words) in cases {
            let err = mqar(&cfg, 1, 0).unwrap_err().to_string();
            assert!(err.contains(words), "{cfg:?}: {err}");
        }
        // The boundary 2DP + 2D == N is allowed.
        assert!(mqar(
            &MqarConfig {
                num_kv_pairs: 4,
                ..ok
            },
            3,
            0
        )
        .is_ok());
    }

    #[test]
    fn seeds_are_deterministic_and_distinct() {
        let cfg = MqarConfig::default();
        assert_eq!(mqar(&cfg, 8, 7).unwrap(), mqar(&cfg, 8, 7).unwrap());
        assert_ne!(
            mqar(&cfg, 8, 7).unwrap().inputs,
            mqar(&cfg, 8, 8).unwrap().inputs
        );
    }

    #[test]
    fn random_fillers_change_only_the_blanks() {
        let cfg = MqarConfig {
            vocab_size: 200,
            seq_len: 64,
            num_kv_pairs: 4,
            ..Default::default()
        };
        let with = mqar(&cfg, 50, 3).unwrap();
        let without = mqar(
            &MqarConfig {
                random_non_queries: false,
                ..cfg
            },
            50,
            3,
        )
        .unwrap();
        assert_eq!(with.labels, without.labels);
        let mut fillers = vec![];
        for (&a, &b) in with.inputs.iter().zip(&without.inputs) {
            if b == 0 {
                fillers.push(a);
            } else {
                assert_eq!(a, b);
            }
        }
        // Fillers range over the whole vocabulary: blanks, keys and values alike.
        assert!(fillers.iter().all(|&t| t < 200));
        assert!(fillers.iter().any(|&t| (1..100).contains(&t)));
        assert!(fillers.iter().any(|&t| t >= 100));
        assert!(fillers.iter().filter(|&&t| t == 0).count() < fillers.len() / 20);
    }

    /// Query slot of the single pair (D = 1): the supervised position is cs + 2g.
    fn slot_histogram(power_a: f64, examples: usize) -> Vec<usize> {
        let cfg = MqarConfig {
            vocab_size: 300,
            seq_len: 256,
            num_kv_pairs: 1,
            power_a,
            random_non_queries: false,
            ..Default::default()
        };
        let b = mqar(&cfg, examples, 11).unwrap();
        let mut hist = vec![0usize; cfg.space()];
        for i in 0..examples {
            let pos = b
                .example(i)
                .1
                .iter()
                .position(|&l| l != IGNORE_INDEX)
                .unwrap();
            hist[(pos - 2) / 2] += 1;
        }
        hist
    }

    #[test]
    fn slot_law_favours_early_slots_at_small_power() {
        let examples = 20_000;
        let hist = slot_histogram(0.01, examples);
        let space = hist.len(); // 127
        let norm: f64 = (1..=space).map(|g| (g as f64).powf(-0.99)).sum();
        // p(0) = 1/norm ≈ 0.185 and p(1) = 2^-0.99/norm: binomial sd ≈ 0.003, allow ~5 sd.
        for g in [0usize, 1, 9] {
            let p = ((g + 1) as f64).powf(-0.99) / norm;
            let freq = hist[g] as f64 / examples as f64;
            assert!(
                (freq - p).abs() < 5.0 * (p * (1.0 - p) / examples as f64).sqrt() + 1e-3,
                "g={g}: {freq} vs {p}"
            );
        }
        let first_tenth: usize = hist[..space / 10].iter().sum();
        assert!(first_tenth as f64 > 0.5 * examples as f64, "{first_tenth}");
        // a = 1 is uniform: the first tenth of the slots gets about a tenth of the queries.
        let uniform = slot_histogram(1.0, examples);
        let first_tenth: usize = uniform[..space / 10].iter().sum();
        let want = (space / 10) as f64 / space as f64;
        assert!(
            (first_tenth as f64 / examples as f64 - want).abs() < 0.015,
            "{first_tenth}"
        );
    }

    #[test]
    fn accuracy_is_zoology_per_example_mean() {
        let labels = vec![
            IGNORE_INDEX,
            5,
            IGNORE_INDEX,
            6, // example 0: 2 supervised
            7,
            IGNORE_INDEX,
            IGNORE_INDEX,
            IGNORE_INDEX, // example 1: 1 supervised
            IGNORE_INDEX,
            IGNORE_INDEX,
            IGNORE_INDEX,
            IGNORE_INDEX, // example 2: none, skipped
        ];
        let pred = vec![0, 5, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0];
        // (1/2 + 1/1) / 2, not the pooled 2/3.
        assert!((accuracy(&pred, &labels, 4) - 0.75).abs() < 1e-12);
        assert!(accuracy(&pred[8..], &labels[8..], 4).is_nan());
        // Labels read back as predictions score 1.
        let b = mqar(&MqarConfig::default(), 4, 1).unwrap();
        let perfect: Vec<u32> = b.labels.iter().map(|&l| l.max(0) as u32).collect();
        assert_eq!(accuracy(&perfect, &b.labels, b.seq_len), 1.0);
    }
}
