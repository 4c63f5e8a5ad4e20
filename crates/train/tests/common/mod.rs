//! Shared by the conversion tests: a small random full-attention teacher.
use model::hybrid::{parse_layout, HybridConfig, HybridModel};

/// A small all-FA teacher (4 heads, 2 KV heads of 8, hidden 32) of `layers` layers, with
/// larger weights than the init (perturbed from seed `perturb`) so that attention carries signal.
pub fn teacher(layers: usize, vocab: usize, seed: u64, perturb: u64) -> HybridModel {
    let (layer_types, _) = parse_layout(&vec!["fa"; layers].join(",")).unwrap();
    let c = HybridConfig {
        model_type: "hybrid".into(),
        vocab_size: vocab,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        partial_rotary_factor: 1.0,
        sliding_window: None,
        attn_output_gate: false,
        max_position_embeddings: 128,
        tie_word_embeddings: true,
        layer_types,
        linear_attn_type: None,
        linear_num_key_heads: None,
        linear_num_value_heads: None,
        linear_key_head_dim: None,
        linear_value_head_dim: None,
        linear_conv_kernel_dim: 4,
        linear_gate_rank: 16,
        linear_chunk_size: 16,
        bos_token_id: None,
        eos_token_id: None,
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
