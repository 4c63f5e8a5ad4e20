//! Attention core: forward == f64 reference (GQA, window, cached past), backward == finite
//! differences of the f64 reference.
mod common;

use common::*;
use mixers::attention_core::{self, Dims};

#[test]
fn forward_equals_reference_with_gqa_window_and_past() {
    let mut r = Rng::new(1);
    for (t, s, window) in [
        (17, 17, None),
        (17, 17, Some(5)),
        (5, 23, None),
        (5, 23, Some(8)),
        (1, 40, Some(1)),
        (1, 40, None),
    ] {
        let d = Dims {
            b: 2,
            t,
            s,
            h: 4,
            hk: 2,
            d: 8,
        };
        let q = r.normals(d.b * t * d.h * d.d, 1.0);
        let k = r.normals(d.b * s * d.hk * d.d, 1.0);
        let v = r.normals(d.b * s * d.hk * d.d, 1.0);
        let want = attention_core::reference(d, &to64(&q), &to64(&k), &to64(&v), 0.3, window);
        let (o, _) = attention_core::forward(d, &q, &k, &v, 0.3, window);
        assert!(max_rel_err(&want, &o) < 1e-5, "t={t} s={s} w={window:?}");
    }
}

#[test]
fn backward_matches_finite_differences() {
    let mut r = Rng::new(2);
    for window in [None, Some(3)] {
        let d = Dims {
            b: 2,
            t: 7,
            s: 7,
            h: 4,
            hk: 2,
            d: 4,
        };
        let q = r.normals(d.b * d.t * d.h * d.d, 1.0);
        let k = r.normals(d.b * d.s * d.hk * d.d, 1.0);
        let v = r.normals(d.b * d.s * d.hk * d.d, 1.0);
        let w = r.normals(q.len(), 1.0);
        let (o, lse) = attention_core::forward(d, &q, &k, &v, 0.5, window);
        let (dq, dk, dv) = attention_core::backward(d, &q, &k, &v, &o, &lse, &w, 0.5, window);
        let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
            attention_core::reference(d, q, k, v, 0.5, window)
                .iter()
                .zip(&w)
                .map(|(a, &b)| a * b as f64)
                .sum()
        };
        let base = [to64(&q), to64(&k), to64(&v)];
        for (which, ana) in [dq, dk, dv].iter().enumerate() {
            let num: Vec<f64> = (0..base[which].len())
                .map(|i| {
                    let mut x = base.clone();
                    x[which][i] += 1e-6;
                    let lp = loss(&x[0], &x[1], &x[2]);
                    x[which][i] -= 2e-6;
                    (lp - loss(&x[0], &x[1], &x[2])) / 2e-6
                })
                .collect();
            assert!(
                max_rel_err(&num, ana) < 1e-4,
                "window {window:?} input {which}: {}",
                max_rel_err(&num, ana)
            );
        }
    }
}
