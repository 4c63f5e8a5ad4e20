//! Sparse mixture-of-experts MLPs for inference ([`super::config::MoeConfig`]): each token's
//! router scores, its top-k experts, their weighted SwiGLU outputs, and the shared expert. The
//! experts run token by token (a product per selected expert): the checkpoints this serves here
//! are small; batching tokens by expert is what a large model would need.
use super::config::{MoeConfig, Router};
use mixers::params::{linear, InitRng, Params};
use tensor::cpu;

/// The parameters of one sparse MLP (checkpoint names under `model.layers.{i}.`).
pub fn init(c: &MoeConfig, d: usize, rng: &mut InitRng, p: &mut Params) {
    let e = c.num_experts;
    p.insert("mlp.gate.weight", &[e, d], rng.normals(e * d, 0.02));
    if c.router == Router::Sigmoid {
        p.insert("mlp.gate.e_score_correction_bias", &[e], vec![0.0; e]);
    }
    let mut swiglu = |pre: &str, f: usize, p: &mut Params| {
        p.insert(
            &format!("{pre}.gate_proj.weight"),
            &[f, d],
            rng.normals(f * d, 0.02),
        );
        p.insert(
            &format!("{pre}.up_proj.weight"),
            &[f, d],
            rng.normals(f * d, 0.02),
        );
        p.insert(
            &format!("{pre}.down_proj.weight"),
            &[d, f],
            rng.normals(d * f, 0.02),
        );
    };
    for i in 0..e {
        swiglu(&format!("mlp.experts.{i}"), c.intermediate, p);
    }
    if c.shared_intermediate > 0 {
        swiglu("mlp.shared_expert", c.shared_intermediate, p);
        if c.shared_gate {
            p.insert(
                "mlp.shared_expert_gate.weight",
                &[1, d],
                rng.normals(d, 0.02),
            );
        }
    }
}

fn swiglu(p: &Params, pre: &str, x: &[f32], d: usize, f: usize) -> Vec<f32> {
    let g = linear(x, p.get(&format!("{pre}.gate_proj.weight")), None, 1, f, d);
    let u = linear(x, p.get(&format!("{pre}.up_proj.weight")), None, 1, f, d);
    let mut a = vec![0f32; f];
    cpu::swiglu(&g, &u, &mut a);
    linear(&a, p.get(&format!("{pre}.down_proj.weight")), None, 1, d, f)
}

/// The top-k experts of one token and their weights.
fn route(c: &MoeConfig, logits: &[f32], bias: Option<&[f32]>) -> Vec<(usize, f32)> {
    let scores: Vec<f32> = match c.router {
        Router::Softmax => {
            let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let e: Vec<f32> = logits.iter().map(|&l| (l - m).exp()).collect();
            let s: f32 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        }
        Router::Sigmoid => logits.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect(),
    };
    // Choice by score (plus the correction bias for a sigmoid router); ties to the lower index.
    let choice = |i: usize| scores[i] + bias.map_or(0.0, |b| b[i]);
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| choice(b).total_cmp(&choice(a)).then(a.cmp(&b)));
    idx.truncate(c.top_k);
    let mut w: Vec<(usize, f32)> = idx.iter().map(|&i| (i, scores[i])).collect();
    if c.norm_topk_prob {
        let s: f32 = w.iter().map(|x| x.1).sum::<f32>()
            + if c.router == Router::Sigmoid {
                1e-20
            } else {
                0.0
            };
        w.iter_mut().for_each(|x| x.1 /= s);
    }
    w.iter_mut().for_each(|x| x.1 *= c.routed_scaling_factor);
    w
}

/// x [N, D] (after the post-attention norm) -> the sparse MLP's output [N, D].
pub fn forward(c: &MoeConfig, p: &Params, x: &[f32], d: usize) -> Vec<f32> {
    let n = x.len() / d;
    let e = c.num_experts;
    let logits = linear(x, p.get("mlp.gate.weight"), None, n, e, d);
    let bias = (c.router == Router::Sigmoid).then(|| p.get("mlp.gate.e_score_correction_bias"));
    let mut out = vec![0f32; n * d];
    for t in 0..n {
        let xt = &x[t * d..(t + 1) * d];
        let ot = &mut out[t * d..(t + 1) * d];
        for (i, w) in route(c, &logits[t * e..(t + 1) * e], bias) {
            let y = swiglu(p, &format!("mlp.experts.{i}"), xt, d, c.intermediate);
            ot.iter_mut().zip(&y).for_each(|(o, v)| *o += w * v);
        }
        if c.shared_intermediate > 0 {
            let mut y = swiglu(p, "mlp.shared_expert", xt, d, c.shared_intermediate);
            if c.shared_gate {
                let g: f32 = p
                    .get("mlp.shared_expert_gate.weight")
                    .iter()
                    .zip(xt)
                    .map(|(a, b)| a * b)
                    .sum();
                let s = 1.0 / (1.0 + (-g).exp());
                y.iter_mut().for_each(|v| *v *= s);
            }
            ot.iter_mut().zip(&y).for_each(|(o, v)| *o += v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(router: Router) -> MoeConfig {
        MoeConfig {
            sparse_layers: vec![true],
            num_experts: 4,
            top_k: 2,
            intermediate: 3,
            shared_intermediate: 0,
            shared_gate: false,
            router,
            norm_topk_prob: true,
            routed_scaling_factor: 1.0,
        }
    }

    #[test]
    fn routing_picks_the_top_k_and_weights_them() {
        let l = [0.0f32, 2.0, 1.0, -1.0];
        let w = route(&cfg(Router::Softmax), &l, None);
        assert_eq!((w[0].0, w[1].0), (1, 2));
        assert!((w[0].1 + w[1].1 - 1.0).abs() < 1e-6);
        assert!((w[0].1 / w[1].1 - 1f32.exp()).abs() < 1e-5);
        // A correction bias changes the choice, not the weights' source.
        let c = MoeConfig {
            routed_scaling_factor: 2.0,
            ..cfg(Router::Sigmoid)
        };
        let w = route(&c, &l, Some(&[0.0, 0.0, 0.0, 5.0]));
        assert_eq!((w[0].0, w[1].0), (3, 1));
        let s = |v: f32| 1.0 / (1.0 + (-v).exp());
        let tot = s(-1.0) + s(2.0);
        assert!((w[0].1 - 2.0 * s(-1.0) / tot).abs() < 1e-6);
    }
}
