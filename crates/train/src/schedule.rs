//! Learning-rate schedule: linear warmup, then cosine decay to a floor.
//!
//! Source: Loshchilov & Hutter, "SGDR" (ICLR 2017), eq. 5 without restarts, preceded by the
//! linear warmup of Goyal et al. 2017; the shape used by GPT-2/3, llm.c and Zoology.
//!
//! ```text
//! step <  warmup:          lr = peak * (step + 1) / warmup
//! warmup <= step < total:  lr = min + (peak - min) * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2
//! step >= total:           lr = min
//! ```
//!
//! Warmup counts `step + 1` so the first step already moves (lr 0 would waste it) and the last
//! warmup step reaches `peak`, which the cosine then starts from.

use std::f64::consts::PI;

/// Learning rate at `step` (0-based) of a `total`-step run with `warmup` warmup steps.
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f32, min: f32) -> f32 {
    if step < warmup {
        return peak * (step + 1) as f32 / warmup as f32;
    }
    if step >= total {
        return min;
    }
    // total > step >= warmup, so the decay span is at least one step.
    let progress = (step - warmup) as f64 / (total - warmup) as f64;
    let cosine = 0.5 * (1.0 + (PI * progress).cos());
    (min as f64 + (peak as f64 - min as f64) * cosine) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let (total, warmup, peak, min) = (1000, 100, 3e-4f32, 3e-5f32);
        assert_eq!(lr_at(0, total, warmup, peak, min), peak / 100.0);
        assert_eq!(lr_at(99, total, warmup, peak, min), peak);
        assert_eq!(lr_at(100, total, warmup, peak, min), peak);
        assert_eq!(lr_at(1000, total, warmup, peak, min), min);
        assert_eq!(lr_at(5000, total, warmup, peak, min), min);
        // Half way through the decay the cosine is at its midpoint.
        let mid = lr_at(550, total, warmup, peak, min);
        assert!((mid - (peak + min) / 2.0).abs() < 1e-9, "{mid}");
        // The last step is just above the floor.
        let last = lr_at(999, total, warmup, peak, min);
        assert!(last > min && last - min < 1e-8, "{last}");
    }

    #[test]
    fn no_warmup_starts_at_peak() {
        assert_eq!(lr_at(0, 10, 0, 1.0, 0.0), 1.0);
        assert_eq!(lr_at(10, 10, 0, 1.0, 0.0), 0.0);
        // warmup >= total: warmup then the floor, no division by zero.
        assert_eq!(lr_at(4, 5, 5, 1.0, 0.1), 1.0);
        assert_eq!(lr_at(5, 5, 5, 1.0, 0.1), 0.1);
    }

    #[test]
    fn rises_then_falls_monotonically() {
        let (total, warmup) = (300, 37);
        let lrs: Vec<f32> = (0..=total + 5)
            .map(|s| lr_at(s, total, warmup, 1e-3, 1e-5))
            .collect();
        for w in lrs[..warmup].windows(2) {
            assert!(w[1] > w[0], "warmup must rise strictly: {w:?}");
        }
        for w in lrs[warmup - 1..].windows(2) {
            assert!(w[1] <= w[0], "decay must not rise: {w:?}");
        }
        assert!(lrs.iter().all(|&x| (0.0..=1e-3).contains(&x)));
    }
}
