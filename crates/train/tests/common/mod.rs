//! Shared by the conversion tests: a small random full-attention teacher.
use model::hybrid::{HybridConfig, HybridModel};

/// A small all-FA teacher (4 heads, 2 KV heads of 8, hidden 32) of `layers` layers, with
/// larger weights than the init (perturbed from seed `perturb`) so that attention carries signal.
pub fn teacher(layers: usize, vocab: usize, seed: u64, perturb: u64) -> HybridModel {
    let c = HybridConfig {
        intermediate_size: 48,
        sliding_window: None,
        max_position_embeddings: 128,
        linear_gate_rank: 16,
        linear_chunk_size: 16,
        ..HybridConfig::small(&vec!["fa"; layers].join(","), vocab).unwrap()
    };
    let mut m = HybridModel::init(c, seed).unwrap();
    let g = m.zero_grads();
    let mut r = tensor::rng::SplitMix64::new(perturb);
    m.visit_params(&g, |_, p, _| {
        p.iter_mut()
            .for_each(|x| *x += (r.uniform() as f32 - 0.5) * 0.3)
    });
    m
}
