//! A Llama model (GGUF, CPU) as an all-full-attention [`HybridModel`]: the teacher of
//! `hybrid convert`, with the weights dequantised to f32 so that layers can be swapped, trained
//! against it, and saved. Q/K rows are already in the rotate-half layout (the GGUF loader
//! un-permutes them), which is what the hybrid model's RoPE uses.
use super::config::HybridConfig;
use super::io::block_from;
use super::HybridModel;
use crate::llama::Llama;
use anyhow::Result;
use mixers::params::Params;
use tensor::quant::Matrix;

fn dense(m: &Matrix) -> Vec<f32> {
    m.to_dense().to_f32_vec()
}

impl HybridModel {
    /// The teacher: every layer full attention, weights copied from `l`.
    pub fn from_llama(l: &Llama) -> Result<Self> {
        let c = &l.config;
        let config = HybridConfig {
            model_type: "hybrid".into(),
            vocab_size: c.vocab_size,
            hidden_size: c.hidden,
            intermediate_size: c.ffn,
            num_hidden_layers: c.n_layers,
            num_attention_heads: c.n_heads,
            num_key_value_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            rms_norm_eps: c.eps,
            rope_theta: c.rope_theta,
            partial_rotary_factor: c.rope_dims as f64 / c.head_dim as f64,
            sliding_window: None,
            attn_output_gate: false,
            attention_bias: false,
            qk_norm: false,
            moe: None,
            mla: None,
            max_position_embeddings: c.context_length,
            tie_word_embeddings: c.tied_embeddings,
            layer_types: vec!["full_attention".into(); c.n_layers],
            linear_attn_type: None,
            linear_num_key_heads: None,
            linear_num_value_heads: None,
            linear_key_head_dim: None,
            linear_value_head_dim: None,
            linear_conv_kernel_dim: 4,
            linear_gate_rank: 64,
            linear_chunk_size: 64,
            bos_token_id: None,
            eos_token_id: None,
        };
        let (d, f, qd, kvd) = (
            c.hidden,
            c.ffn,
            c.n_heads * c.head_dim,
            c.n_kv_heads * c.head_dim,
        );
        let kinds = config.layers()?;
        let mut blocks = Vec::with_capacity(c.n_layers);
        for (b, kind) in l.blocks.iter().zip(kinds) {
            let mut mp = Params::default();
            mp.insert("q_proj.weight", &[qd, d], dense(&b.q));
            mp.insert("k_proj.weight", &[kvd, d], dense(&b.k));
            mp.insert("v_proj.weight", &[kvd, d], dense(&b.v));
            mp.insert("o_proj.weight", &[d, qd], dense(&b.o));
            let mut p = Params::default();
            p.insert("input_layernorm.weight", &[d], b.attn_norm.clone());
            p.insert("post_attention_layernorm.weight", &[d], b.mlp_norm.clone());
            p.insert("mlp.gate_proj.weight", &[f, d], dense(&b.gate));
            p.insert("mlp.up_proj.weight", &[f, d], dense(&b.up));
            p.insert("mlp.down_proj.weight", &[d, f], dense(&b.down));
            blocks.push(block_from(kind, mp, p));
        }
        let mut top = Params::default();
        top.insert(
            "model.embed_tokens.weight",
            &[c.vocab_size, d],
            dense(&l.embed),
        );
        top.insert("model.norm.weight", &[d], l.norm.clone());
        if let Some(h) = &l.lm_head {
            top.insert("lm_head.weight", &[c.vocab_size, d], dense(h));
        }
        Ok(HybridModel {
            config,
            top,
            blocks,
        })
    }
}
