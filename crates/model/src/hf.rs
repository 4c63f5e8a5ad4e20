//! Hugging Face checkpoint folders: `config.json` of a transformers architecture mapped onto
//! our [`HybridConfig`] (research/mixers.md §4 for the hybrid families). The weights keep
//! their Hugging Face names, which are ours (`HybridModel::load_weights` reads them, sharded or
//! not, in f32/bf16/f16).
//!
//! Mapped: `LlamaForCausalLM` (`llama`), `Qwen2ForCausalLM` (`qwen2`: q/k/v biases),
//! `Qwen3ForCausalLM` (`qwen3`: per-head q/k RMSNorm). Every field that would change the
//! model and is not mapped (RoPE scaling, an activation other than SiLU, MLP biases, the
//! hybrid families' MoE and MLA blocks) is refused with its name.
use crate::hybrid::HybridConfig;
use anyhow::{bail, Context, Result};
use serde_json::Value;

pub const SUPPORTED: &str = "llama, qwen2, qwen3";

/// Whether a `config.json` is a transformers one (not a folder `hybrid convert` wrote).
pub fn is_hf_config(v: &Value) -> bool {
    v.get("model_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "hybrid")
}

fn usize_field(v: &Value, name: &str) -> Result<usize> {
    match v.get(name) {
        Some(x) => x.as_u64().map(|n| n as usize).with_context(|| {
            format!("config.json: '{name}' must be a non-negative integer, got {x}")
        }),
        None => bail!("config.json: '{name}' is missing"),
    }
}

fn opt_usize(v: &Value, name: &str) -> Result<Option<usize>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => usize_field(v, name).map(Some),
    }
}

fn opt_f64(v: &Value, name: &str) -> Result<Option<f64>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .with_context(|| format!("config.json: '{name}' must be a number, got {x}")),
    }
}

fn opt_bool(v: &Value, name: &str) -> Result<Option<bool>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_bool()
            .map(Some)
            .with_context(|| format!("config.json: '{name}' must be true or false, got {x}")),
    }
}

/// A token id given as a number or a list of numbers (the first one).
fn token_id(v: &Value, name: &str) -> Result<Option<u32>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) if a.is_empty() => Ok(None),
        Some(Value::Array(a)) => a[0]
            .as_u64()
            .map(|n| Some(n as u32))
            .with_context(|| format!("config.json: '{name}' must hold token ids, got {}", a[0])),
        Some(x) => x
            .as_u64()
            .map(|n| Some(n as u32))
            .with_context(|| format!("config.json: '{name}' must be a token id, got {x}")),
    }
}

/// RoPE base frequency: transformers 5's `rope_parameters` or the older top-level fields;
/// any scaling is refused (not implemented).
fn rope_theta(v: &Value) -> Result<f64> {
    if let Some(p) = v.get("rope_parameters").filter(|p| !p.is_null()) {
        let kind = p
            .get("rope_type")
            .and_then(Value::as_str)
            .unwrap_or("default");
        if kind != "default" {
            bail!(
                "config.json: rope_parameters.rope_type '{kind}' is not supported (only 'default')"
            );
        }
        return Ok(opt_f64(p, "rope_theta")?.unwrap_or(10000.0));
    }
    if let Some(s) = v.get("rope_scaling").filter(|s| !s.is_null()) {
        bail!("config.json: rope_scaling {s} is not supported (no RoPE scaling)");
    }
    Ok(opt_f64(v, "rope_theta")?.unwrap_or(10000.0))
}

/// Our config of a transformers `config.json`.
pub fn hybrid_config(v: &Value) -> Result<HybridConfig> {
    let t = v
        .get("model_type")
        .and_then(Value::as_str)
        .context("config.json: 'model_type' is missing")?;
    let arch = v
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .unwrap_or("?");
    let (bias_default, qk_norm) = match t {
        "llama" => (false, false),
        "qwen2" => (true, false),
        "qwen3" => (false, true),
        other => bail!(
            "config.json: model_type '{other}' ({arch}) is not supported yet (supported: {SUPPORTED})"
        ),
    };
    if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
        if act != "silu" {
            bail!("config.json: hidden_act '{act}' is not supported (SwiGLU MLPs with silu)");
        }
    }
    if opt_bool(v, "mlp_bias")?.unwrap_or(false) {
        bail!("config.json: mlp_bias true is not supported");
    }
    let hidden = usize_field(v, "hidden_size")?;
    let heads = usize_field(v, "num_attention_heads")?;
    if heads == 0 || hidden % heads != 0 && opt_usize(v, "head_dim")?.is_none() {
        bail!("config.json: num_attention_heads {heads} does not divide hidden_size {hidden}");
    }
    let head_dim = opt_usize(v, "head_dim")?.unwrap_or(hidden / heads);
    let kv_heads = opt_usize(v, "num_key_value_heads")?.unwrap_or(heads);
    if kv_heads == 0 || heads % kv_heads != 0 {
        bail!("config.json: num_key_value_heads {kv_heads} does not divide num_attention_heads {heads}");
    }
    let layers = usize_field(v, "num_hidden_layers")?;
    let window = opt_usize(v, "sliding_window")?;
    let layer_types: Vec<String> = match v.get("layer_types").filter(|l| !l.is_null()) {
        Some(l) => {
            let l = l
                .as_array()
                .context("config.json: 'layer_types' must be a list")?;
            l.iter()
                .map(|x| match x.as_str() {
                    Some(s @ ("full_attention" | "sliding_attention")) => Ok(s.to_string()),
                    _ => bail!("config.json: layer_types entry {x} is not supported for {t}"),
                })
                .collect::<Result<_>>()?
        }
        None if opt_bool(v, "use_sliding_window")?.unwrap_or(false) => bail!(
            "config.json: use_sliding_window true without layer_types is not supported (which layers slide is not stated)"
        ),
        None => vec!["full_attention".to_string(); layers],
    };
    let config = HybridConfig {
        model_type: "hybrid".into(),
        vocab_size: usize_field(v, "vocab_size")?,
        hidden_size: hidden,
        intermediate_size: usize_field(v, "intermediate_size")?,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: opt_f64(v, "rms_norm_eps")?.unwrap_or(1e-6) as f32,
        rope_theta: rope_theta(v)?,
        partial_rotary_factor: opt_f64(v, "partial_rotary_factor")?.unwrap_or(1.0),
        sliding_window: window,
        attn_output_gate: false,
        attention_bias: opt_bool(v, "attention_bias")?.unwrap_or(bias_default),
        qk_norm,
        max_position_embeddings: usize_field(v, "max_position_embeddings")?,
        tie_word_embeddings: opt_bool(v, "tie_word_embeddings")?.unwrap_or(false),
        layer_types,
        linear_attn_type: None,
        linear_num_key_heads: None,
        linear_num_value_heads: None,
        linear_key_head_dim: None,
        linear_value_head_dim: None,
        linear_conv_kernel_dim: 4,
        linear_gate_rank: 64,
        linear_chunk_size: 64,
        bos_token_id: token_id(v, "bos_token_id")?,
        eos_token_id: token_id(v, "eos_token_id")?,
    };
    config.layers()?;
    Ok(config)
}
