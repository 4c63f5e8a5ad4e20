//! SplitMix64: the one small deterministic RNG of the project (weight initialisation, sampling,
//! synthetic task data, tests), so a seed gives the same numbers on every platform and in every
//! build — a crate's generator may change its stream between versions.
//!
//! Source: Steele, Lea & Flood, "Fast Splittable Pseudorandom Number Generators" (OOPSLA 2014);
//! constants from Vigna's reference `splitmix64.c`. Not cryptographic, and not numpy's
//! Mersenne Twister: data built here has the distribution of the Python generators it ports,
//! not their exact tokens.

/// SplitMix64 state. Every method consumes a fixed, documented number of `next_u64` draws
/// (except the rejection loops of `below`), so streams stay stable across versions.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform integer in [0, n), unbiased: draws in the top partial bucket of 2^64 are
    /// rejected (at most n/2^64 of them, so the loop practically never repeats).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no values");
        // 2^64 mod n: the size of the partial bucket at the bottom that `% n` would overweight.
        let threshold = n.wrapping_neg() % n;
        loop {
            let r = self.next_u64();
            if r >= threshold {
                return r % n;
            }
        }
    }

    /// Uniform f64 in [0, 1), 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller, one draw per call: two uniforms).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// `n` normal values with standard deviation `std`, as f32.
    pub fn normals(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * std) as f32).collect()
    }

    /// `k` distinct indices from [0, n), in random order (uniform over ordered k-samples,
    /// like `np.random.choice(n, k, replace=False)`). Partial Fisher–Yates: O(n) memory.
    pub fn choice(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "cannot choose {k} distinct items from {n}");
        let mut pool: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below((n - i) as u64) as usize;
            pool.swap(i, j);
        }
        pool.truncate(k);
        pool
    }

    /// `k` distinct indices drawn one after another, each with probability proportional to its
    /// weight among those not yet drawn; the law of `np.random.choice(n, k, replace=False, p=w)`.
    /// Weights must be finite and >= 0 with at least `k` of them positive. O(k·n).
    pub fn weighted_choice(&mut self, weights: &[f64], k: usize) -> Vec<usize> {
        assert!(
            weights.iter().all(|w| w.is_finite() && *w >= 0.0),
            "weights must be finite and >= 0"
        );
        let positive = weights.iter().filter(|&&w| w > 0.0).count();
        assert!(
            k <= positive,
            "cannot choose {k} distinct items from {positive} with positive weight"
        );
        let mut w = weights.to_vec();
        let mut out = Vec::with_capacity(k);
        for _ in 0..k {
            // Re-summing each draw (instead of subtracting) keeps rounding from drifting.
            let total: f64 = w.iter().sum();
            let u = self.uniform() * total;
            let mut acc = 0.0;
            // Fallback for rounding at the top end: the last positive weight.
            let mut pick = w
                .iter()
                .rposition(|&x| x > 0.0)
                .expect("a positive weight is left");
            for (i, &x) in w.iter().enumerate() {
                acc += x;
                if x > 0.0 && u < acc {
                    pick = i;
                    break;
                }
            }
            w[pick] = 0.0;
            out.push(pick);
        }
        out
    }

    /// Uniform random permutation of `xs` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_splitmix64_stream() {
        // First outputs of Vigna's reference splitmix64.c for this seed, as listed in the
        // `rand_xoshiro` crate's SplitMix64 test.
        let mut r = SplitMix64::new(1_477_776_061_723_855_037);
        let want = [
            1_985_237_415_132_408_290u64,
            2_979_275_885_539_914_483,
            13_511_426_838_097_143_398,
            8_488_337_342_461_049_707,
            15_141_737_807_933_549_159,
        ];
        for w in want {
            assert_eq!(r.next_u64(), w);
        }
    }

    #[test]
    fn below_covers_range_uniformly() {
        let mut r = SplitMix64::new(7);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[r.below(6) as usize] += 1;
        }
        // Each bin ~ Binomial(60000, 1/6): mean 10000, sd ~91; 6 sd is a comfortable margin.
        assert!(
            counts.iter().all(|&c| (c as i64 - 10_000).abs() < 550),
            "{counts:?}"
        );
        assert_eq!(r.below(1), 0);
    }

    #[test]
    fn uniform_in_unit_interval() {
        let mut r = SplitMix64::new(8);
        let xs: Vec<f64> = (0..10_000).map(|_| r.uniform()).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }

    #[test]
    fn choice_is_distinct_and_in_range() {
        let mut r = SplitMix64::new(9);
        for _ in 0..100 {
            let mut c = r.choice(20, 7);
            assert_eq!(c.len(), 7);
            assert!(c.iter().all(|&x| x < 20));
            c.sort();
            c.dedup();
            assert_eq!(c.len(), 7);
        }
        let mut all = r.choice(5, 5);
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn weighted_choice_respects_weights() {
        let mut r = SplitMix64::new(10);
        // Zero weights are never drawn; weight 3 beats weight 1 as first pick ~3:1.
        let w = [1.0, 0.0, 3.0, 0.0];
        let mut first = [0usize; 4];
        for _ in 0..8000 {
            let c = r.weighted_choice(&w, 2);
            let mut s = c.clone();
            s.sort();
            assert_eq!(s, vec![0, 2]);
            first[c[0]] += 1;
        }
        // P(first = 2) = 0.75: mean 6000, sd ~39.
        assert!((first[2] as i64 - 6000).abs() < 250, "{first:?}");
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut r = SplitMix64::new(11);
        let mut xs: Vec<u32> = (0..50).collect();
        r.shuffle(&mut xs);
        assert_ne!(xs, (0..50).collect::<Vec<_>>());
        xs.sort();
        assert_eq!(xs, (0..50).collect::<Vec<_>>());
    }
}
