//! Token sampling: greedy, temperature, top-k, top-p (nucleus), min-p, with a seeded RNG.
//!
//! Order of filters as in llama.cpp's default chain: top-k, top-p, min-p, then temperature.
//! The RNG is the project's SplitMix64 (`tensor::rng`), so a seed gives the same tokens in
//! every build and on every platform.

#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.temperature >= 0.0 && self.temperature.is_finite(),
            "temperature must be >= 0, got {}",
            self.temperature
        );
        anyhow::ensure!(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "top-p must be in (0, 1], got {}",
            self.top_p
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.min_p),
            "min-p must be in [0, 1], got {}",
            self.min_p
        );
        Ok(())
    }
}

pub use tensor::rng::SplitMix64 as Rng;

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = Rng::new(params.seed);
        Sampler { params, rng }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let dist = self.distribution(logits);
        let u = self.rng.uniform();
        pick(&dist, u)
    }

    /// Checks a speculative draft token against the target's logits at its position:
    /// returns (the token to emit, whether it is the draft). Greedy: the argmax, accepted when
    /// it is the draft, so outputs equal plain decoding's. Sampling (a draft proposed with
    /// certainty: prompt lookup, or a draft model's argmax): the draft is kept with the
    /// target's probability p(draft), else a token is drawn from p without the draft,
    /// renormalised: the emitted token is distributed exactly as p (speculative sampling,
    /// Leviathan et al. 2023, with a one-point draft distribution).
    pub fn verify_draft(&mut self, logits: &[f32], draft: u32) -> (u32, bool) {
        if self.params.temperature == 0.0 {
            let best = argmax(logits);
            return (best, best == draft);
        }
        let dist = self.distribution(logits);
        let pd = dist.iter().find(|c| c.0 == draft).map_or(0.0, |c| c.1);
        if self.rng.uniform() < pd {
            return (draft, true);
        }
        let rest: Vec<(u32, f64)> = dist
            .into_iter()
            .filter(|c| c.0 != draft)
            .map(|(t, q)| (t, q / (1.0 - pd).max(f64::MIN_POSITIVE)))
            .collect();
        if rest.is_empty() {
            return (draft, true);
        }
        let u = self.rng.uniform();
        (pick(&rest, u), false)
    }

    /// The candidates left after top-k, top-p and min-p, with their probabilities at the
    /// temperature (descending).
    fn distribution(&self, logits: &[f32]) -> Vec<(u32, f64)> {
        let p = &self.params;
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let probs = |c: &[(u32, f32)], t: f32| -> Vec<f64> {
            let e: Vec<f64> = c.iter().map(|x| (((x.1 - max) / t) as f64).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect()
        };
        if p.top_p < 1.0 {
            let pr = probs(&cand, 1.0);
            let mut acc = 0.0;
            let mut keep = cand.len();
            for (i, q) in pr.iter().enumerate() {
                acc += q;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
        }
        if p.min_p > 0.0 {
            let pr = probs(&cand, 1.0);
            let floor = pr[0] * p.min_p as f64;
            let keep = pr.iter().take_while(|&&q| q >= floor).count().max(1);
            cand.truncate(keep);
        }
        let pr = probs(&cand, p.temperature);
        cand.iter().map(|c| c.0).zip(pr).collect()
    }
}

/// The candidate at cumulative probability `u` (the last one if rounding leaves u over).
fn pick(dist: &[(u32, f64)], mut u: f64) -> u32 {
    for (t, q) in dist {
        if u < *q {
            return *t;
        }
        u -= q;
    }
    dist.last().expect("at least one candidate").0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_and_top_k_1_is_greedy() {
        let l = [0.1, 2.0, -1.0, 1.9];
        assert_eq!(Sampler::new(SamplingParams::default()).sample(&l), 1);
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1,
            seed: 3,
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&l), 1);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_frequencies_follow_softmax() {
        let l = [0.0f32, (2.0f32).ln(), f32::NEG_INFINITY];
        let p = SamplingParams {
            temperature: 1.0,
            seed: 42,
            ..Default::default()
        };
        let (mut a, mut b) = (Sampler::new(p.clone()), Sampler::new(p));
        let xs: Vec<u32> = (0..3000).map(|_| a.sample(&l)).collect();
        let ys: Vec<u32> = (0..3000).map(|_| b.sample(&l)).collect();
        assert_eq!(xs, ys);
        let ones = xs.iter().filter(|&&x| x == 1).count() as f64 / 3000.0;
        assert!((ones - 2.0 / 3.0).abs() < 0.03, "{ones}");
        assert!(!xs.contains(&2));
    }

    /// Speculative sampling keeps the target's distribution: over many draws with a fixed
    /// draft, the emitted tokens' frequencies match plain sampling's probabilities.
    #[test]
    fn verified_drafts_keep_the_target_distribution() {
        let logits = [2.0f32, 1.0, 0.5, -1.0];
        let params = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for draft in [0u32, 2, 3] {
            let mut s = Sampler::new(SamplingParams {
                seed: 7 + draft as u64,
                ..params.clone()
            });
            let n = 200_000;
            let mut counts = [0usize; 4];
            let mut accepted = 0;
            for _ in 0..n {
                let (t, ok) = s.verify_draft(&logits, draft);
                counts[t as usize] += 1;
                accepted += ok as usize;
                assert_eq!(ok, t == draft);
            }
            for (i, c) in counts.iter().enumerate() {
                let want = (logits[i] as f64).exp() / z;
                let got = *c as f64 / n as f64;
                assert!(
                    (got - want).abs() < 0.005,
                    "draft {draft}: token {i} {got} vs {want}"
                );
            }
            let pd = (logits[draft as usize] as f64).exp() / z;
            assert!((accepted as f64 / n as f64 - pd).abs() < 0.005);
        }
        // Greedy: the argmax, accepted only when it is the draft.
        let mut g = Sampler::new(SamplingParams::default());
        assert_eq!(g.verify_draft(&logits, 0), (0, true));
        assert_eq!(g.verify_draft(&logits, 1), (0, false));
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let l = [3.0f32, 2.9, -5.0, -6.0];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            seed: 1,
            ..Default::default()
        });
        assert!((0..500).all(|_| s.sample(&l) < 2));
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            min_p: 0.5,
            seed: 1,
            ..Default::default()
        });
        assert!((0..500).all(|_| s.sample(&l) < 2));
    }
}
