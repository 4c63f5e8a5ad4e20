//! Whole mixer layers (FA, SWA, gated GQA attention with partial rotary, GDN, KDA, GLA):
//! backward == central finite differences for every parameter and the input; prefill(T)
//! then steps == prefill(T+n); split prefill == whole; causality.
mod common;

use common::*;
use mixers::attention::{Attention, AttentionConfig, AttnState};
use mixers::linear_mixer::{LinearConfig, LinearKind, LinearMixer, LinearState};
use mixers::params::{InitRng, Params};

enum Layer {
    A(Attention),
    L(LinearMixer),
}

enum State {
    A(AttnState),
    L(LinearState),
}

impl Layer {
    fn params(&self) -> &Params {
        match self {
            Layer::A(a) => &a.params,
            Layer::L(l) => &l.params,
        }
    }
    fn params_mut(&mut self) -> &mut Params {
        match self {
            Layer::A(a) => &mut a.params,
            Layer::L(l) => &mut l.params,
        }
    }
    fn state(&self, b: usize) -> State {
        match self {
            Layer::A(a) => State::A(a.new_state(b)),
            Layer::L(l) => State::L(l.new_state(b)),
        }
    }
    fn fwd(&self, x: &[f32], b: usize, t: usize, st: Option<&mut State>) -> Vec<f32> {
        match (self, st) {
            (Layer::A(a), None) => a.forward(x, b, t, None).0,
            (Layer::A(a), Some(State::A(s))) => a.forward(x, b, t, Some(s)).0,
            (Layer::L(l), None) => l.forward(x, b, t, None).0,
            (Layer::L(l), Some(State::L(s))) => l.forward(x, b, t, Some(s)).0,
            _ => unreachable!(),
        }
    }
    /// (dx, parameter grads) of L = Σ y ⊙ w.
    fn grads(&self, x: &[f32], b: usize, t: usize, w: &[f32]) -> (Vec<f32>, Params) {
        let mut g = self.params().zeros_like();
        let dx = match self {
            Layer::A(a) => {
                let (_, s) = a.forward(x, b, t, None);
                a.backward(&s, w, &mut g)
            }
            Layer::L(l) => {
                let (_, s) = l.forward(x, b, t, None);
                l.backward(&s, w, &mut g)
            }
        };
        (dx, g)
    }
}

const D: usize = 16;

fn layers() -> Vec<(&'static str, Layer)> {
    let mut rng = InitRng::new(7);
    let attn = |window, gate, rot, rng: &mut InitRng| {
        AttentionConfig {
            hidden: D,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 6,
            rope_theta: 10000.0,
            rot_dims: rot,
            window,
            output_gate: gate,
            qkv_bias: false,
            qk_norm: None,
            mla: None,
        }
        .pipe(|c| Attention::init(c, rng))
    };
    let lin = |kind, hv, rng: &mut InitRng| {
        let mut l = LinearMixer::init(
            LinearConfig {
                kind,
                hidden: D,
                n_heads: 2,
                n_v_heads: hv,
                head_k_dim: 4,
                head_v_dim: 5,
                conv_size: 4,
                gate_rank: 3,
                norm_eps: 1e-5,
                chunk: 4,
            },
            rng,
        );
        // Larger weights than the 0.02 init so every path carries signal in the checks.
        for p in l.params.map.values_mut() {
            let mut r = Rng::new(p.data.len() as u64);
            p.data
                .iter_mut()
                .for_each(|x| *x += 0.3 * r.normal() as f32);
        }
        l
    };
    let mut v = vec![
        ("fa", Layer::A(attn(None, false, 6, &mut rng))),
        ("swa", Layer::A(attn(Some(3), false, 6, &mut rng))),
        (
            "fa-gated-partial-rope",
            Layer::A(attn(None, true, 4, &mut rng)),
        ),
        ("gdn", Layer::L(lin(LinearKind::Gdn, 4, &mut rng))),
        ("kda", Layer::L(lin(LinearKind::Kda, 4, &mut rng))),
        ("gla", Layer::L(lin(LinearKind::Gla, 2, &mut rng))),
    ];
    for (_, l) in v.iter_mut() {
        if let Layer::A(_) = l {
            for p in l.params_mut().map.values_mut() {
                let mut r = Rng::new(p.data.len() as u64 + 1);
                p.data
                    .iter_mut()
                    .for_each(|x| *x += 0.3 * r.normal() as f32);
            }
        }
    }
    v
}

trait Pipe: Sized {
    fn pipe<R>(self, f: impl FnOnce(Self) -> R) -> R {
        f(self)
    }
}
impl<T> Pipe for T {}

fn err_ratio32(want: &[f64], got: &[f32]) -> f64 {
    err_ratio(want, got)
}

#[test]
fn backward_matches_finite_differences_for_every_parameter_and_the_input() {
    let (b, t) = (2, 7);
    for (name, mut layer) in layers() {
        let mut r = Rng::new(3);
        let x = r.normals(b * t * D, 1.0);
        let w = r.normals(b * t * D, 1.0);
        let (dx, g) = layer.grads(&x, b, t, &w);
        let loss = |l: &Layer, x: &[f32]| -> f64 {
            l.fwd(x, b, t, None)
                .iter()
                .zip(&w)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        // The layers run in f32, so the step cannot be tiny: central differences at h and h/2
        // combined by Richardson extrapolation cancel the O(h²) truncation error.
        let eps: f32 = std::env::var("FD_EPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1e-2);
        let richardson = |f: &mut dyn FnMut(f32) -> f64, eps: f32| -> f64 {
            let d1 = (f(eps) - f(-eps)) / (2.0 * eps as f64);
            let d2 = (f(eps / 2.0) - f(-eps / 2.0)) / (eps as f64);
            (4.0 * d2 - d1) / 3.0
        };
        // the input
        let num: Vec<f64> = (0..x.len())
            .map(|i| {
                richardson(
                    &mut |h| {
                        let mut xp = x.clone();
                        xp[i] += h;
                        loss(&layer, &xp)
                    },
                    eps,
                )
            })
            .collect();
        assert!(
            err_ratio32(&num, &dx) < 1e-3,
            "{name} dx: {}",
            err_ratio32(&num, &dx)
        );
        // Every parameter, along random directions u: the directional derivative u·∇L has a
        // far better signal-to-rounding ratio in f32 than single entries of small gradients.
        let names: Vec<String> = layer.params().map.keys().cloned().collect();
        for pn in names {
            let orig = layer.params().get(&pn).to_vec();
            let ga = g.get(&pn).to_vec();
            for _ in 0..2 {
                let mut u = r.normals(orig.len(), 1.0);
                let un = u.iter().map(|v| v * v).sum::<f32>().sqrt();
                u.iter_mut().for_each(|v| *v /= un);
                let ana: f64 = u.iter().zip(&ga).map(|(a, b)| *a as f64 * *b as f64).sum();
                // f32 rounding limits small steps and curvature limits large ones: take the
                // median of the Richardson estimates at four step sizes.
                let mut est: Vec<f64> = [0.5, 1.0, 2.0, 4.0]
                    .iter()
                    .map(|m| {
                        richardson(
                            &mut |h| {
                                let p = layer.params_mut().get_mut(&pn);
                                p.iter_mut()
                                    .zip(orig.iter().zip(&u))
                                    .for_each(|(p, (o, u))| *p = o + h * u);
                                let l = loss(&layer, &x);
                                layer.params_mut().get_mut(&pn).copy_from_slice(&orig);
                                l
                            },
                            eps * m,
                        )
                    })
                    .collect();
                est.sort_by(f64::total_cmp);
                let num = (est[1] + est[2]) / 2.0;
                let gnorm = ga.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                let denom = ana.abs().max(0.1 * gnorm).max(1e-12);
                let e = (num - ana).abs() / denom;
                // The layers run in f32 only, so the finite differences themselves are noisy for
                // small gradients (GLA's decay gate: ~0.03). Their own spread across step sizes
                // measures that noise; a wrong gradient stays wrong however consistent the
                // estimates are. The cores are checked against f64 references at 1e-4..1e-3.
                let spread = (est[3] - est[0]).abs() / denom;
                assert!(e < 1e-3 + spread, "{name} d{pn}: relative error {e}, FD spread {spread} (numeric {num}, analytic {ana})");
            }
        }
    }
}

#[test]
fn prefill_then_steps_equals_longer_prefill() {
    let (b, t1, t2) = (2, 9, 6);
    for (name, layer) in layers() {
        let mut r = Rng::new(11);
        let x = r.normals(b * (t1 + t2) * D, 1.0);
        let full = layer.fwd(&x, b, t1 + t2, None);
        let rows = |lo: usize, hi: usize| -> Vec<f32> {
            (0..b)
                .flat_map(|bi| x[(bi * (t1 + t2) + lo) * D..(bi * (t1 + t2) + hi) * D].to_vec())
                .collect()
        };
        let mut st = layer.state(b);
        let first = layer.fwd(&rows(0, t1), b, t1, Some(&mut st));
        let mut got = vec![0f32; full.len()];
        for bi in 0..b {
            got[bi * (t1 + t2) * D..(bi * (t1 + t2) + t1) * D]
                .copy_from_slice(&first[bi * t1 * D..(bi + 1) * t1 * D]);
        }
        // then 2 tokens as one chunk (chunked prefill on a cache), then single-token steps
        let two = layer.fwd(&rows(t1, t1 + 2), b, 2, Some(&mut st));
        for bi in 0..b {
            got[(bi * (t1 + t2) + t1) * D..(bi * (t1 + t2) + t1 + 2) * D]
                .copy_from_slice(&two[bi * 2 * D..(bi + 1) * 2 * D]);
        }
        for i in t1 + 2..t1 + t2 {
            let y = layer.fwd(&rows(i, i + 1), b, 1, Some(&mut st));
            for bi in 0..b {
                got[(bi * (t1 + t2) + i) * D..(bi * (t1 + t2) + i + 1) * D]
                    .copy_from_slice(&y[bi * D..(bi + 1) * D]);
            }
        }
        let e = err_ratio(&to64(&full), &got);
        assert!(e < 1e-5, "{name}: prefill+steps vs whole: {e}");
    }
}

#[test]
fn perturbing_later_tokens_leaves_earlier_outputs_bit_identical() {
    let (b, t, p) = (1, 12, 7);
    for (name, layer) in layers() {
        let mut r = Rng::new(13);
        let x = r.normals(b * t * D, 1.0);
        let mut x2 = x.clone();
        for v in x2[p * D..].iter_mut() {
            *v += 1.0;
        }
        let (y, y2) = (layer.fwd(&x, b, t, None), layer.fwd(&x2, b, t, None));
        assert_eq!(y[..p * D], y2[..p * D], "{name}");
        assert_ne!(y[p * D..], y2[p * D..], "{name}");
    }
}
