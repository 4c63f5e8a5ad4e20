//! AdamW with decoupled weight decay, and global gradient-norm clipping.
//!
//! Source: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019), Alg. 2;
//! the update order and bias correction follow PyTorch's `torch.optim.AdamW` (single-tensor,
//! non-amsgrad, non-capturable path), so a step here equals a PyTorch step up to f32 rounding
//! (PyTorch forms m with `lerp`, a different rounding of the same value):
//!
//! ```text
//! p  <- p - lr*wd*p                      (decay first, on the pre-update weights)
//! m  <- b1*m + (1-b1)*g
//! v  <- b2*v + (1-b2)*g^2
//! p  <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
//! ```
//!
//! `clip_grad_norm` mirrors `torch.nn.utils.clip_grad_norm_` (L2, one norm over all tensors).
//!
//! CPU reference path: one parameter tensor per call, moments in f32. Not fused, not mixed
//! precision; a GPU kernel must match this.

use rayon::prelude::*;

/// Below this many elements a serial loop beats rayon's fork/join overhead.
const PAR_MIN: usize = 1 << 14;

/// AdamW hyper-parameters (the learning rate comes per step, from the schedule).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    /// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, weight_decay 0.01.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Optimiser state of one parameter tensor: first and second moments and the step count.
#[derive(Clone, Debug)]
pub struct AdamState {
    m: Vec<f32>, // [n]
    v: Vec<f32>, // [n]
    t: u64,
}

impl AdamState {
    /// Zero moments for a tensor of `n` elements; `t` counts steps taken so far.
    pub fn new(n: usize) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.m.len()
    }

    pub fn is_empty(&self) -> bool {
        self.m.is_empty()
    }

    /// Number of `step` calls applied so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// First moment (for checkpointing and tests).
    pub fn m(&self) -> &[f32] {
        &self.m
    }

    /// Second moment (for checkpointing and tests).
    pub fn v(&self) -> &[f32] {
        &self.v
    }
}

impl AdamW {
    /// One AdamW step on `p` [n] with gradient `g` [n]. `decay = false` skips weight decay
    /// (biases, norm gains and embeddings are usually not decayed).
    pub fn step(&self, p: &mut [f32], g: &[f32], st: &mut AdamState, lr: f32, decay: bool) {
        assert_eq!(
            p.len(),
            g.len(),
            "AdamW: parameter and gradient lengths differ"
        );
        assert_eq!(
            p.len(),
            st.len(),
            "AdamW: state was made for a different tensor size"
        );
        st.t += 1;
        // Bias corrections in f64, as PyTorch computes them in Python floats: 1 - 0.999^t loses
        // most of its digits in f32 at small t.
        let t = st.t as i32;
        let bc1 = 1.0 - (self.beta1 as f64).powi(t);
        let bc2 = 1.0 - (self.beta2 as f64).powi(t);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let shrink = if decay {
            1.0 - lr * self.weight_decay
        } else {
            1.0
        };
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);

        let update = |(((p, &g), m), v): (((&mut f32, &f32), &mut f32), &mut f32)| {
            *p *= shrink;
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            let denom = v.sqrt() / bc2_sqrt + eps;
            *p -= step_size * *m / denom;
        };
        if p.len() >= PAR_MIN {
            p.par_iter_mut()
                .zip(g.par_iter())
                .zip(st.m.par_iter_mut())
                .zip(st.v.par_iter_mut())
                .with_min_len(PAR_MIN / 4)
                .for_each(update);
        } else {
            p.iter_mut()
                .zip(g)
                .zip(st.m.iter_mut())
                .zip(st.v.iter_mut())
                .for_each(update);
        }
    }
}

/// Clip the global L2 norm of all gradients to `max_norm`, in place.
///
/// Returns the norm before clipping. When it exceeds `max_norm` every gradient is scaled by
/// `max_norm / (norm + 1e-6)` (PyTorch's epsilon). A NaN or infinite norm is returned as is and
/// nothing is scaled, so the caller can see it and skip the step instead of writing NaNs.
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    // Sum of squares in f64: billions of f32 squares would lose the small ones. Partial sums
    // over fixed chunks, added in order, so the norm (and hence the update) does not depend on
    // how rayon splits the work.
    let sumsq: f64 = grads
        .iter()
        .map(|g| {
            let partial: Vec<f64> = g
                .par_chunks(PAR_MIN)
                .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                .collect();
            partial.iter().sum::<f64>()
        })
        .sum();
    let norm = sumsq.sqrt() as f32;
    if !norm.is_finite() || norm <= max_norm {
        return norm;
    }
    let scale = max_norm / (norm + 1e-6);
    for g in grads.iter_mut() {
        if g.len() >= PAR_MIN {
            g.par_iter_mut().for_each(|x| *x *= scale);
        } else {
            g.iter_mut().for_each(|x| *x *= scale);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch AdamW, written out in f64 for `steps` steps with a fixed gradient sequence.
    fn torch_adamw_f64(
        p: &[f64],
        grads: &[Vec<f64>],
        lr: f64,
        (b1, b2, eps, wd): (f64, f64, f64, f64),
    ) -> Vec<f64> {
        let mut p = p.to_vec();
        let mut m = vec![0.0; p.len()];
        let mut v = vec![0.0; p.len()];
        for (i, g) in grads.iter().enumerate() {
            let t = (i + 1) as i32;
            for j in 0..p.len() {
                p[j] *= 1.0 - lr * wd;
                m[j] = b1 * m[j] + (1.0 - b1) * g[j];
                v[j] = b2 * v[j] + (1.0 - b2) * g[j] * g[j];
                let denom = v[j].sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
                p[j] -= lr / (1.0 - b1.powi(t)) * m[j] / denom;
            }
        }
        p
    }

    #[test]
    fn first_step_matches_hand_computed_pytorch() {
        // At t = 1, m_hat = g and v_hat = g^2, so the Adam part is lr * g / (|g| + eps):
        // p1 = p0*(1 - lr*wd) - lr*sign(g) (up to eps). With p0 = 1.0, g = 0.5, lr = 0.1,
        // wd = 0.01: p1 = 0.999 - 0.1*0.5/(0.5+1e-8) = 0.899000002.
        let opt = AdamW::default();
        let mut p = vec![1.0f32, -2.0, 0.5];
        let g = vec![0.5f32, -0.25, 0.0];
        let mut st = AdamState::new(3);
        opt.step(&mut p, &g, &mut st, 0.1, true);
        let want = [
            0.999 - 0.1 * 0.5 / (0.5 + 1e-8),
            -2.0 * 0.999 + 0.1 * 0.25 / (0.25 + 1e-8),
            0.5 * 0.999,
        ];
        for (a, b) in p.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert_eq!(st.steps(), 1);
        assert!((st.m()[0] / 0.05 - 1.0).abs() < 1e-6);
        // 1 - 0.999 is 0.0010000467 in f32, as in PyTorch: compare relatively.
        assert!((st.v()[0] / 0.00025 - 1.0).abs() < 1e-4);
    }

    #[test]
    fn several_steps_match_pytorch_formula() {
        let hp = AdamW {
            beta1: 0.8,
            beta2: 0.95,
            eps: 1e-6,
            weight_decay: 0.1,
        };
        let p0 = [0.3, -1.2, 2.0, 0.0];
        let grads = vec![
            vec![0.1, -0.4, 3.0, 1e-3],
            vec![-0.2, 0.5, 2.0, 0.0],
            vec![0.05, -0.1, -1.0, 2e-3],
        ];
        let want = torch_adamw_f64(&p0, &grads, 0.01, (0.8, 0.95, 1e-6, 0.1));
        let mut p: Vec<f32> = p0.iter().map(|&x| x as f32).collect();
        let mut st = AdamState::new(4);
        for g in &grads {
            let g: Vec<f32> = g.iter().map(|&x| x as f32).collect();
            hp.step(&mut p, &g, &mut st, 0.01, true);
        }
        for (a, b) in p.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn no_decay_leaves_zero_gradient_weights_alone() {
        let opt = AdamW {
            weight_decay: 0.5,
            ..AdamW::default()
        };
        let mut p = vec![3.0f32; 4];
        let mut st = AdamState::new(4);
        opt.step(&mut p, &[0.0; 4], &mut st, 0.1, false);
        assert_eq!(p, vec![3.0; 4]);
        opt.step(&mut p, &[0.0; 4], &mut st, 0.1, true);
        assert!(p.iter().all(|&x| (x - 3.0 * 0.95).abs() < 1e-6));
    }

    #[test]
    fn parallel_path_equals_serial_path() {
        let n = PAR_MIN + 7;
        let opt = AdamW::default();
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut big = vec![0.5f32; n];
        let mut st = AdamState::new(n);
        opt.step(&mut big, &g, &mut st, 1e-2, true);
        for (chunk_p, chunk_g) in big.chunks(1000).zip(g.chunks(1000)) {
            let mut small = vec![0.5f32; chunk_g.len()];
            let mut st1 = AdamState::new(chunk_g.len());
            opt.step(&mut small, chunk_g, &mut st1, 1e-2, true);
            assert_eq!(small, chunk_p);
        }
    }

    #[test]
    fn clip_scales_to_max_norm_and_returns_pre_clip_norm() {
        let mut a = vec![3.0f32, 0.0];
        let mut b = vec![0.0f32, 4.0];
        let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let after = (a[0] * a[0] + b[1] * b[1]).sqrt();
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        assert!((a[0] / b[1] - 0.75).abs() < 1e-6, "direction kept");
    }

    #[test]
    fn clip_below_max_is_a_no_op() {
        let mut a = vec![0.3f32, 0.4];
        let norm = clip_grad_norm(&mut [&mut a], 1.0);
        assert!((norm - 0.5).abs() < 1e-6);
        assert_eq!(a, vec![0.3, 0.4]);
    }

    #[test]
    fn clip_non_finite_norm_is_reported_not_applied() {
        let mut a = vec![f32::NAN, 1.0];
        let mut b = vec![2.0f32];
        assert!(clip_grad_norm(&mut [&mut a, &mut b], 1.0).is_nan());
        assert_eq!(a[1], 1.0);
        assert_eq!(b[0], 2.0);
        let mut c = vec![f32::INFINITY, 1.0];
        assert_eq!(clip_grad_norm(&mut [&mut c], 1.0), f32::INFINITY);
        assert_eq!(c[1], 1.0);
        // f32 squares overflow at ~1.8e19; the f64 sum does not.
        let mut d = vec![1e20f32, 1e20];
        let n = clip_grad_norm(&mut [&mut d], 1.0);
        assert!((n / 1.414_213_5e20 - 1.0).abs() < 1e-6, "{n}");
    }
}
