//! Training losses with their gradients: cross-entropy, distillation KL, mean squared error.
//!
//! Each function returns `(loss, d loss / d first argument)`. Legend: N rows (positions),
//! V vocabulary; logits are row-major [N, V]. CPU reference path in f32 with f64 accumulation;
//! no fusion with the LM head, no chunking over V (a GPU kernel must match these numbers).
//!
//! - `cross_entropy`: PyTorch `F.cross_entropy(reduction="mean", ignore_index=-100)`.
//! - `kl_div`: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network",
//!   §2: both softmaxes at temperature T, loss scaled by T² so its gradient keeps the same
//!   magnitude as T changes. Equals PyTorch
//!   `F.kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True, reduction="batchmean") * T²`.
//! - `mse`: `F.mse_loss(reduction="mean")`, used for hidden-state / mixer-output matching.

use rayon::prelude::*;

/// Labels equal to this are not supervised (PyTorch's and Zoology's convention).
pub const IGNORE_INDEX: i64 = -100;

/// Rows per rayon task: enough work per task to hide scheduling even at small V.
const ROWS_PER_TASK: usize = 4;

/// Log-sum-exp of `x * inv_temp` for one row [V], split as (max, ln Σ exp(x·inv_temp - max)).
/// Max-shifted so exp never overflows; the sum runs in f64 so 150k-entry vocabularies keep
/// their small terms. Kept split because callers form log-probabilities as
/// (x·inv_temp - max) - ln_sum: adding the max back first would round away the small part when
/// logits are large (at 3e4 one f32 ulp is 2e-3).
fn log_sum_exp(x: &[f32], inv_temp: f32) -> (f32, f32) {
    let max = x
        .iter()
        .fold(f32::NEG_INFINITY, |m, &a| m.max(a * inv_temp));
    let sum: f64 = x.iter().map(|&a| ((a * inv_temp - max).exp()) as f64).sum();
    (max, sum.ln() as f32)
}

/// Mean cross-entropy of `logits` [N, V] against `targets` [N] (ignore index -100).
///
/// Gradient [N, V]: (softmax - onehot) / count on supervised rows, 0 on ignored rows. When no row
/// is supervised the loss is 0 with a zero gradient (PyTorch would give NaN; a batch of pure
/// padding should not poison a run).
pub fn cross_entropy(logits: &[f32], v: usize, targets: &[i64]) -> (f32, Vec<f32>) {
    assert!(
        v > 0 && logits.len() == targets.len() * v,
        "cross_entropy: logits are not [N, V]"
    );
    let mut grad = vec![0.0f32; logits.len()];
    let count = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    if count == 0 {
        return (0.0, grad);
    }
    let inv_count = 1.0 / count as f32;
    let per_row: Vec<f64> = grad
        .par_chunks_mut(v)
        .zip(logits.par_chunks(v))
        .zip(targets.par_iter())
        .with_min_len(ROWS_PER_TASK)
        .map(|((g, x), &t)| {
            if t == IGNORE_INDEX {
                return 0.0;
            }
            assert!(
                t >= 0 && (t as usize) < v,
                "cross_entropy: target {t} outside [0, {v})"
            );
            let t = t as usize;
            let (max, ln_sum) = log_sum_exp(x, 1.0);
            for (gi, &xi) in g.iter_mut().zip(x) {
                *gi = ((xi - max) - ln_sum).exp() * inv_count;
            }
            g[t] -= inv_count;
            // -log p_t = ln_sum - (x_t - max)
            (ln_sum - (x[t] - max)) as f64
        })
        .collect();
    // Summed in row order: a rayon reduction would depend on the thread count.
    let total: f64 = per_row.iter().sum();
    ((total / count as f64) as f32, grad)
}

/// T² · mean over rows of KL(p_teacher ‖ p_student), softmaxes at temperature `temperature`.
///
/// student, teacher: [N, V]. Gradient wrt the student logits [N, V]: T · (p_s - p_t) / N
/// (the T² of the loss times the 1/T of the inner softmax).
pub fn kl_div(student: &[f32], teacher: &[f32], v: usize, temperature: f32) -> (f32, Vec<f32>) {
    assert!(
        v > 0 && student.len().is_multiple_of(v),
        "kl_div: logits are not [N, V]"
    );
    assert_eq!(
        student.len(),
        teacher.len(),
        "kl_div: student and teacher shapes differ"
    );
    assert!(temperature > 0.0, "kl_div: temperature must be positive");
    let n = student.len() / v;
    let mut grad = vec![0.0f32; student.len()];
    if n == 0 {
        return (0.0, grad);
    }
    let inv_t = 1.0 / temperature;
    let scale = temperature / n as f32;
    let per_row: Vec<f64> = grad
        .par_chunks_mut(v)
        .zip(student.par_chunks(v).zip(teacher.par_chunks(v)))
        .with_min_len(ROWS_PER_TASK)
        .map(|(g, (s, t))| {
            let (max_s, ln_sum_s) = log_sum_exp(s, inv_t);
            let (max_t, ln_sum_t) = log_sum_exp(t, inv_t);
            let mut kl = 0.0f64;
            for ((gi, &si), &ti) in g.iter_mut().zip(s).zip(t) {
                let log_ps = (si * inv_t - max_s) - ln_sum_s;
                let log_pt = (ti * inv_t - max_t) - ln_sum_t;
                let pt = log_pt.exp();
                // 0 · log 0 = 0: a teacher probability that underflows contributes nothing,
                // and must not turn into 0 · -inf = NaN.
                if pt > 0.0 {
                    kl += pt as f64 * (log_pt - log_ps) as f64;
                }
                *gi = scale * (log_ps.exp() - pt);
            }
            kl
        })
        .collect();
    let total: f64 = per_row.iter().sum();
    let t2 = (temperature as f64) * (temperature as f64);
    ((t2 * total / n as f64) as f32, grad)
}

/// Mean squared error over all elements of `a` and `b` (same shape); gradient wrt `a`:
/// 2 (a - b) / len. An empty input gives 0.
pub fn mse(a: &[f32], b: &[f32]) -> (f32, Vec<f32>) {
    assert_eq!(a.len(), b.len(), "mse: shapes differ");
    if a.is_empty() {
        return (0.0, Vec::new());
    }
    let inv_n = 1.0 / a.len() as f64;
    let sumsq: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| ((x - y) as f64).powi(2))
        .sum();
    let k = (2.0 * inv_n) as f32;
    let grad = a.iter().zip(b).map(|(&x, &y)| k * (x - y)).collect();
    ((sumsq * inv_n) as f32, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::rng::SplitMix64;

    // f64 references: the specification the f32 code and its gradients are checked against.

    fn lse64(x: &[f64]) -> f64 {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + x.iter().map(|a| (a - m).exp()).sum::<f64>().ln()
    }

    fn ce64(logits: &[f64], v: usize, targets: &[i64]) -> f64 {
        let mut total = 0.0;
        let mut count = 0;
        for (x, &t) in logits.chunks(v).zip(targets) {
            if t != IGNORE_INDEX {
                total += lse64(x) - x[t as usize];
                count += 1;
            }
        }
        total / count as f64
    }

    fn kl64(s: &[f64], t: &[f64], v: usize, temp: f64) -> f64 {
        let n = s.len() / v;
        let mut total = 0.0;
        for (s, t) in s.chunks(v).zip(t.chunks(v)) {
            let s: Vec<f64> = s.iter().map(|a| a / temp).collect();
            let t: Vec<f64> = t.iter().map(|a| a / temp).collect();
            let (ls, lt) = (lse64(&s), lse64(&t));
            for (si, ti) in s.iter().zip(&t) {
                let log_pt = ti - lt;
                total += log_pt.exp() * (log_pt - (si - ls));
            }
        }
        temp * temp * total / n as f64
    }

    fn mse64(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64
    }

    fn randn(rng: &mut SplitMix64, n: usize, scale: f64) -> Vec<f32> {
        // Sum of 4 uniforms: cheap, bell-shaped, enough for test inputs.
        (0..n)
            .map(|_| ((0..4).map(|_| rng.uniform()).sum::<f64>() - 2.0) * scale)
            .map(|x| x as f32)
            .collect()
    }

    /// Central differences of the f64 reference `f` at the f32 point `x`, compared with the
    /// analytic gradient at relative tolerance 1e-3 (of the largest gradient entry).
    fn check_grad(x: &[f32], grad: &[f32], f: impl Fn(&[f64]) -> f64) {
        let x64: Vec<f64> = x.iter().map(|&a| a as f64).collect();
        let h = 1e-5;
        let gmax = grad
            .iter()
            .fold(0.0f64, |m, &g| m.max(g.abs() as f64))
            .max(1e-12);
        for i in 0..x.len() {
            let mut xp = x64.clone();
            let mut xm = x64.clone();
            xp[i] += h;
            xm[i] -= h;
            let fd = (f(&xp) - f(&xm)) / (2.0 * h);
            let err = (fd - grad[i] as f64).abs();
            assert!(
                err <= 1e-3 * gmax.max(fd.abs()),
                "entry {i}: analytic {} vs fd {fd}",
                grad[i]
            );
        }
    }

    #[test]
    fn cross_entropy_value_and_gradient() {
        let mut rng = SplitMix64::new(1);
        let (n, v) = (6, 7);
        let logits = randn(&mut rng, n * v, 3.0);
        let targets = vec![3, IGNORE_INDEX, 0, 6, IGNORE_INDEX, 2];
        let (loss, grad) = cross_entropy(&logits, v, &targets);
        let x64: Vec<f64> = logits.iter().map(|&a| a as f64).collect();
        assert!((loss as f64 - ce64(&x64, v, &targets)).abs() < 1e-5);
        check_grad(&logits, &grad, |x| ce64(x, v, &targets));
        // Ignored rows get exactly zero gradient; supervised rows sum to zero.
        assert!(grad[v..2 * v].iter().all(|&g| g == 0.0));
        assert!(grad[..v].iter().sum::<f32>().abs() < 1e-6);
    }

    #[test]
    fn cross_entropy_is_stable_for_huge_logits() {
        let logits = vec![1000.0f32, 0.0, -1000.0, 3e4, 3e4, 0.0];
        let (loss, grad) = cross_entropy(&logits, 3, &[0, 1]);
        // Row 0: loss ~0. Row 1: two equal maxima, loss ln 2.
        assert!((loss - std::f32::consts::LN_2 / 2.0).abs() < 1e-6, "{loss}");
        assert!(grad.iter().all(|g| g.is_finite()));
    }

    #[test]
    fn cross_entropy_nothing_supervised_is_zero() {
        let (loss, grad) = cross_entropy(&[1.0, 2.0, 3.0, 4.0], 2, &[IGNORE_INDEX, IGNORE_INDEX]);
        assert_eq!(loss, 0.0);
        assert_eq!(grad, vec![0.0; 4]);
    }

    #[test]
    fn kl_value_and_gradient_at_several_temperatures() {
        let mut rng = SplitMix64::new(2);
        let (n, v) = (5, 9);
        let s = randn(&mut rng, n * v, 2.0);
        let t = randn(&mut rng, n * v, 2.0);
        for temp in [0.5f32, 1.0, 2.0, 4.0] {
            let (loss, grad) = kl_div(&s, &t, v, temp);
            let t64: Vec<f64> = t.iter().map(|&a| a as f64).collect();
            let s64: Vec<f64> = s.iter().map(|&a| a as f64).collect();
            let want = kl64(&s64, &t64, v, temp as f64);
            assert!(
                (loss as f64 - want).abs() < 1e-5 * want.max(1.0),
                "T={temp}: {loss} vs {want}"
            );
            check_grad(&s, &grad, |x| kl64(x, &t64, v, temp as f64));
        }
    }

    #[test]
    fn kl_is_zero_when_student_equals_teacher_and_survives_underflow() {
        let s = vec![0.1f32, 2.0, -1.0, 0.0, 5.0, 5.0];
        let (loss, grad) = kl_div(&s, &s, 3, 1.0);
        assert!(loss.abs() < 1e-6);
        assert!(grad.iter().all(|g| g.abs() < 1e-6));
        // A teacher probability of exactly 0 in f32 must not produce NaN.
        let t = vec![0.0f32, 200.0, -200.0];
        let (loss, grad) = kl_div(&[1.0, 0.0, 0.0], &t, 3, 1.0);
        assert!(loss.is_finite() && grad.iter().all(|g| g.is_finite()));
    }

    #[test]
    fn mse_value_and_gradient() {
        let mut rng = SplitMix64::new(3);
        let a = randn(&mut rng, 13, 1.0);
        let b = randn(&mut rng, 13, 1.0);
        let (loss, grad) = mse(&a, &b);
        let b64: Vec<f64> = b.iter().map(|&x| x as f64).collect();
        let a64: Vec<f64> = a.iter().map(|&x| x as f64).collect();
        assert!((loss as f64 - mse64(&a64, &b64)).abs() < 1e-6);
        check_grad(&a, &grad, |x| mse64(x, &b64));
        assert_eq!(mse(&[], &[]), (0.0, vec![]));
    }
}
