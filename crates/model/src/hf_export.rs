//! Writing a model as a Hugging Face checkpoint folder that transformers reads as it is: the
//! nearest architecture that computes exactly what our model computes.
//!
//! - every layer full attention: `LlamaForCausalLM` (with q/k norms: `Qwen3ForCausalLM`);
//! - full and sliding-window attention (or q/k/v biases): `Qwen2ForCausalLM` with
//!   `layer_types` (zero biases where ours has none);
//! - GDN / KDA / GLA layers: no transformers architecture reads them beside our attention
//!   (Qwen3-Next's GDN layers come with gated attention and q/k norms, Kimi-Linear's KDA with
//!   MLA, and neither has sliding windows), so such a model is refused with the reason; its
//!   own folder (`hybrid convert`'s) keeps flash-linear-attention's layer names.
use crate::hybrid::{HybridModel, Mixer};
use crate::tokenizer::Tokenizer;
use crate::ChatTemplate;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;

/// The transformers `model_type` a model is written as, or why none reads it exactly.
pub fn target(m: &HybridModel) -> Result<&'static str> {
    let c = &m.config;
    for (i, b) in m.blocks.iter().enumerate() {
        if let Mixer::Linear(l) = &b.mixer {
            bail!(
                "layer {i} is {}: no transformers architecture reads this model's linear layers beside its attention (Qwen3-Next pairs GDN with gated, q/k-normed attention; Kimi-Linear pairs KDA with MLA); keep the hybrid folder, which uses flash-linear-attention's layer names",
                l.cfg.kind.name().to_uppercase()
            );
        }
    }
    if c.moe.is_some() || c.mla.is_some() || c.attn_output_gate {
        bail!("mixture-of-experts MLPs, MLA and gated attention are not written as a transformers checkpoint yet");
    }
    if c.partial_rotary_factor != 1.0 {
        bail!(
            "partial RoPE ({}) has no Llama/Qwen2/Qwen3 form",
            c.partial_rotary_factor
        );
    }
    let sliding = c.layer_types.iter().any(|t| t == "sliding_attention");
    Ok(match (sliding || c.attention_bias, c.qk_norm) {
        (false, false) => "llama",
        (false, true) => "qwen3",
        (true, false) => "qwen2",
        (true, true) => bail!("sliding windows or q/k/v biases together with q/k norms have no transformers form here"),
    })
}

fn config_json(m: &HybridModel, kind: &str) -> Value {
    let c = &m.config;
    let arch = match kind {
        "llama" => "LlamaForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        _ => "Qwen3ForCausalLM",
    };
    let mut v = json!({
        "architectures": [arch],
        "model_type": kind,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": c.attention_bias,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "torch_dtype": "float32",
        "layer_types": c.layer_types,
    });
    if kind == "qwen2" {
        let sliding = c.layer_types.iter().any(|t| t == "sliding_attention");
        v["use_sliding_window"] = json!(sliding);
        v["sliding_window"] = json!(c.sliding_window);
        v["max_window_layers"] = json!(0);
    }
    v
}

/// Writes `m` with its tokenizer and chat template into `dir` as a transformers checkpoint
/// (config.json, model.safetensors, tokenizer.json, tokenizer_config.json); returns the
/// architecture written.
pub fn export(
    m: &HybridModel,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    dir: &Path,
) -> Result<&'static str> {
    let kind = target(m)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut params = m.named_params();
    if kind == "qwen2" && !m.config.attention_bias {
        // Qwen2 always has q/k/v biases: zeros compute what our layers compute.
        let (q, kv) = (
            m.config.num_attention_heads * m.config.head_dim,
            m.config.num_key_value_heads * m.config.head_dim,
        );
        for i in 0..m.config.num_hidden_layers {
            for (name, n) in [("q", q), ("k", kv), ("v", kv)] {
                params.insert(
                    &format!("model.layers.{i}.self_attn.{name}_proj.bias"),
                    &[n],
                    vec![0.0; n],
                );
            }
        }
    }
    crate::hybrid::io::write_params(&dir.join("model.safetensors"), &params)?;
    crate::bundle::write_tokenizer(dir, tokenizer, template)?;
    write(
        &dir.join("config.json"),
        &serde_json::to_string_pretty(&config_json(m, kind))?,
    )?;
    Ok(kind)
}

/// Through a temporary name and a rename.
fn write(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}
