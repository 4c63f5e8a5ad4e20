//! The linear recurrence (GDN / KDA / GLA core): FLA golden fixtures, chunked == reference,
//! state continuity, step == chunked, causality, and backward == finite differences.
mod common;

use common::*;
use mixers::linear_core::{self, Dims, Inputs};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Gdn,
    Kda,
    Gla,
}

/// FLA-style random inputs: L2-normalised q and k, β in (0.05, 0.95), g = −softplus(n)·s.
struct Case {
    d: Dims,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Option<Vec<f32>>,
    h0: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn case(
    kind: Kind,
    b: usize,
    t: usize,
    h: usize,
    hv: usize,
    k: usize,
    v: usize,
    seed: u64,
) -> Case {
    let mut r = Rng::new(seed);
    let d = Dims { b, t, h, hv, k, v };
    let mut q = r.normals(b * t * h * k, 1.0);
    let mut kk = r.normals(b * t * h * k, 1.0);
    l2_normalize_rows(&mut q, k);
    l2_normalize_rows(&mut kk, k);
    let vv = r.normals(b * t * hv * v, 1.0);
    // GDN: one decay per head, broadcast over the key channels.
    let mut g = vec![0f32; b * t * hv * k];
    for (i, row) in g.chunks_exact_mut(k).enumerate() {
        if kind == Kind::Gdn {
            let x = -(1.0 + r.normal().exp()).ln() * 0.5;
            row.fill(x as f32);
        } else {
            row.iter_mut()
                .for_each(|x| *x = (-(1.0 + r.normal().exp()).ln() * 0.5) as f32);
        }
        let _ = i;
    }
    let beta = (kind != Kind::Gla).then(|| {
        (0..b * t * hv)
            .map(|_| (0.05 + 0.9 * r.uniform()) as f32)
            .collect()
    });
    let h0 = r.normals(d.state_len(), 0.1);
    Case {
        d,
        q,
        k: kk,
        v: vv,
        g,
        beta,
        h0,
    }
}

impl Case {
    fn inputs(&self) -> Inputs<'_, f32> {
        Inputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            g: &self.g,
            beta: self.beta.as_deref(),
        }
    }
    fn reference(&self, scale: f64) -> (Vec<f64>, Vec<f64>) {
        let (q, k, v, g) = (to64(&self.q), to64(&self.k), to64(&self.v), to64(&self.g));
        let beta = self.beta.as_ref().map(|b| to64(b));
        let x = Inputs {
            q: &q,
            k: &k,
            v: &v,
            g: &g,
            beta: beta.as_deref(),
        };
        linear_core::reference(self.d, x, scale, Some(&to64(&self.h0)))
    }
}

fn fla_fixture(name: &str, kind: Kind) {
    let f = read_safetensors(&fixture(&format!("fla/{name}.safetensors")));
    let shape = &f["q"].1;
    let (b, t, h, k) = (shape[0], shape[1], shape[2], shape[3]);
    let v = f["v"].1[3];
    let d = Dims {
        b,
        t,
        h,
        hv: h,
        k,
        v,
    };
    // FLA's GDN gate is per head [B,T,H]; the core takes one decay per key channel.
    let g: Vec<f32> = if kind == Kind::Gdn {
        f["g"]
            .0
            .iter()
            .flat_map(|&x| std::iter::repeat_n(x, k))
            .collect()
    } else {
        f["g"].0.clone()
    };
    let beta = (kind != Kind::Gla).then(|| f["beta"].0.clone());
    let scale = (k as f64).powf(-0.5);
    let (o_want, ht_want) = (to64(&f["o"].0), to64(&f["ht"].0));
    let (q, kk, vv, g64) = (to64(&f["q"].0), to64(&f["k"].0), to64(&f["v"].0), to64(&g));
    let b64 = beta.as_ref().map(|x| to64(x));
    let x64 = Inputs {
        q: &q,
        k: &kk,
        v: &vv,
        g: &g64,
        beta: b64.as_deref(),
    };
    let (o, ht) = linear_core::reference(d, x64, scale, Some(&to64(&f["h0"].0)));
    let o32: Vec<f32> = o.iter().map(|&x| x as f32).collect();
    let ht32: Vec<f32> = ht.iter().map(|&x| x as f32).collect();
    assert!(max_rel_err(&o_want, &o32) < 1e-5, "{name} reference o");
    assert!(max_rel_err(&ht_want, &ht32) < 1e-5, "{name} reference ht");
    let x = Inputs {
        q: &f["q"].0,
        k: &f["k"].0,
        v: &f["v"].0,
        g: &g,
        beta: beta.as_deref(),
    };
    for chunk in [1, 8, 16, 64] {
        let out = linear_core::chunked(d, x, scale as f32, Some(&f["h0"].0), chunk);
        assert!(
            max_rel_err(&o_want, &out.o) < 1e-5,
            "{name} chunked({chunk}) o: {}",
            max_rel_err(&o_want, &out.o)
        );
        assert!(
            max_rel_err(&ht_want, &out.state) < 1e-5,
            "{name} chunked({chunk}) ht"
        );
    }
}

#[test]
fn reproduces_fla_golden_fixtures() {
    fla_fixture("gdn", Kind::Gdn);
    fla_fixture("kda", Kind::Kda);
    fla_fixture("gla", Kind::Gla);
}

#[test]
fn chunked_equals_reference_for_ragged_lengths_gva_and_batches() {
    for (kind, seed) in [(Kind::Gdn, 1), (Kind::Kda, 2), (Kind::Gla, 3)] {
        for (t, chunk) in [(1, 64), (37, 16), (64, 64), (100, 64), (130, 32), (45, 7)] {
            let c = case(kind, 2, t, 2, 4, 16, 8, seed + t as u64);
            let (o, st) = c.reference(0.25);
            let out = linear_core::chunked(c.d, c.inputs(), 0.25, Some(&c.h0), chunk);
            assert!(
                err_ratio(&o, &out.o) < 1e-5,
                "T={t} C={chunk}: {}",
                err_ratio(&o, &out.o)
            );
            assert!(err_ratio(&st, &out.state) < 1e-5);
        }
    }
}

#[test]
fn split_prefill_and_steps_continue_the_state() {
    for kind in [Kind::Gdn, Kind::Kda, Kind::Gla] {
        let (t1, t2) = (63, 41);
        let c = case(kind, 2, t1 + t2, 1, 2, 16, 12, 9);
        let full = linear_core::chunked(c.d, c.inputs(), 0.3, Some(&c.h0), 16);
        // Split the inputs at t1 (all arrays are [B, T, ...]).
        let split = |x: &[f32], w: usize, lo: usize, hi: usize| -> Vec<f32> {
            (0..c.d.b)
                .flat_map(|b| x[(b * c.d.t + lo) * w..(b * c.d.t + hi) * w].to_vec())
                .collect()
        };
        let (hk, hvk, hvv) = (c.d.h * c.d.k, c.d.hv * c.d.k, c.d.hv * c.d.v);
        let part = |lo: usize, hi: usize| {
            (
                split(&c.q, hk, lo, hi),
                split(&c.k, hk, lo, hi),
                split(&c.v, hvv, lo, hi),
                split(&c.g, hvk, lo, hi),
                c.beta.as_ref().map(|b| split(b, c.d.hv, lo, hi)),
            )
        };
        let (q1, k1, v1, g1, b1) = part(0, t1);
        let d1 = Dims { t: t1, ..c.d };
        let a = linear_core::chunked(
            d1,
            Inputs {
                q: &q1,
                k: &k1,
                v: &v1,
                g: &g1,
                beta: b1.as_deref(),
            },
            0.3,
            Some(&c.h0),
            16,
        );
        let (q2, k2, v2, g2, b2) = part(t1, t1 + t2);
        let d2 = Dims { t: t2, ..c.d };
        let bpart = linear_core::chunked(
            d2,
            Inputs {
                q: &q2,
                k: &k2,
                v: &v2,
                g: &g2,
                beta: b2.as_deref(),
            },
            0.3,
            Some(&a.state),
            16,
        );
        let want_o2 = split(&full.o, hvv, t1, t1 + t2);
        let rel = err_ratio(&to64(&want_o2), &bpart.o);
        assert!(rel < 1e-5, "split prefill {rel}");
        assert!(err_ratio(&to64(&full.state), &bpart.state) < 1e-5);
        // prefill(t1) then token-by-token steps == prefill(t1 + t2)
        let mut st = a.state.clone();
        let mut got = vec![0f32; want_o2.len()];
        for i in 0..t2 {
            let (q, k, v, g, b) = part(t1 + i, t1 + i + 1);
            let o = linear_core::step(
                Dims { t: 1, ..c.d },
                Inputs {
                    q: &q,
                    k: &k,
                    v: &v,
                    g: &g,
                    beta: b.as_deref(),
                },
                0.3,
                &mut st,
            );
            for bb in 0..c.d.b {
                got[(bb * t2 + i) * hvv..(bb * t2 + i + 1) * hvv]
                    .copy_from_slice(&o[bb * hvv..(bb + 1) * hvv]);
            }
        }
        assert!(err_ratio(&to64(&want_o2), &got) < 1e-5);
        assert!(err_ratio(&to64(&full.state), &st) < 1e-5);
    }
}

#[test]
fn later_positions_never_change_earlier_outputs() {
    for kind in [Kind::Gdn, Kind::Kda, Kind::Gla] {
        let c = case(kind, 1, 90, 2, 2, 16, 8, 21);
        let base = linear_core::chunked(c.d, c.inputs(), 0.25, Some(&c.h0), 32);
        let p = 45; // mid-chunk on purpose
        let mut c2 = case(kind, 1, 90, 2, 2, 16, 8, 21);
        let mut r = Rng::new(5);
        for t in p..90 {
            for x in c2.k[t * 32..(t + 1) * 32]
                .iter_mut()
                .chain(c2.v[t * 16..(t + 1) * 16].iter_mut())
            {
                *x += r.normal() as f32;
            }
            c2.g[t * 32..(t + 1) * 32]
                .iter_mut()
                .for_each(|x| *x -= 3.0);
        }
        let pert = linear_core::chunked(c2.d, c2.inputs(), 0.25, Some(&c2.h0), 32);
        let w = 2 * 8;
        assert_eq!(
            base.o[..p * w],
            pert.o[..p * w],
            "outputs before {p} changed"
        );
        assert_ne!(base.o[p * w..], pert.o[p * w..]);
    }
}

/// Central finite differences of the f64 reference against the f32 analytic backward, for
/// every input (q, k, v, g, β, h0), on a loss L = Σ o ⊙ w_o + Σ ht ⊙ w_h.
#[test]
fn backward_matches_finite_differences() {
    for kind in [Kind::Gdn, Kind::Kda, Kind::Gla] {
        let c = case(kind, 2, 13, 1, 2, 6, 5, 33);
        let scale = 0.4;
        let mut r = Rng::new(77);
        let wo = r.normals(c.d.b * c.d.t * c.d.hv * c.d.v, 1.0);
        let wh = r.normals(c.d.state_len(), 1.0);
        let fwd = linear_core::chunked(c.d, c.inputs(), scale as f32, Some(&c.h0), 4);
        let gr = linear_core::backward(c.d, c.inputs(), scale as f32, &fwd, &wo, Some(&wh));
        let loss =
            |q: &[f64], k: &[f64], v: &[f64], g: &[f64], b: Option<&[f64]>, h0: &[f64]| -> f64 {
                let (o, ht) = linear_core::reference(
                    c.d,
                    Inputs {
                        q,
                        k,
                        v,
                        g,
                        beta: b,
                    },
                    scale,
                    Some(h0),
                );
                o.iter().zip(&wo).map(|(a, &w)| a * w as f64).sum::<f64>()
                    + ht.iter().zip(&wh).map(|(a, &w)| a * w as f64).sum::<f64>()
            };
        let base = [
            to64(&c.q),
            to64(&c.k),
            to64(&c.v),
            to64(&c.g),
            c.beta.as_ref().map_or(vec![], |b| to64(b)),
            to64(&c.h0),
        ];
        let empty = vec![];
        let analytic = [
            &gr.dq,
            &gr.dk,
            &gr.dv,
            &gr.dg,
            gr.dbeta.as_ref().unwrap_or(&empty),
            &gr.dh0,
        ];
        let names = ["q", "k", "v", "g", "beta", "h0"];
        for which in 0..6 {
            if base[which].is_empty() {
                continue;
            }
            let (mut num, mut ana) = (vec![], vec![]);
            for i in 0..base[which].len() {
                let eps = 1e-6;
                let mut xs = base.clone();
                xs[which][i] += eps;
                let f = |x: &[Vec<f64>; 6]| {
                    loss(
                        &x[0],
                        &x[1],
                        &x[2],
                        &x[3],
                        (!x[4].is_empty()).then_some(&x[4][..]),
                        &x[5],
                    )
                };
                let lp = f(&xs);
                xs[which][i] -= 2.0 * eps;
                let lm = f(&xs);
                num.push((lp - lm) / (2.0 * eps));
                ana.push(analytic[which][i]);
            }
            let e = max_rel_err(&num, &ana);
            assert!(
                e < 1e-3,
                "{:?} d{}: max rel err {e}",
                kind as u8,
                names[which]
            );
        }
    }
}
