//! A model from a Hugging Face (or `hybrid convert`) `config.json`.
use crate::arch::{Arch, Layer, Mixer, Mlp};
use anyhow::{bail, Context, Result};
use serde_json::Value;

fn field(c: &Value, k: &str) -> Result<usize> {
    c.get(k)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .with_context(|| format!("config.json: field `{k}` is missing or not a whole number"))
}

fn opt(c: &Value, k: &str) -> Option<usize> {
    c.get(k).and_then(Value::as_u64).map(|v| v as usize)
}

/// A model from a Hugging Face (or `hybrid convert`) `config.json`: Llama / Qwen2 / Qwen3
/// (dense FA), MiniMax-M2 and Mixtral-style MoE, Qwen3-Next (`layer_types`, GDN, MoE),
/// Kimi-Linear (1-based `kda_layers` / `full_attn_layers`, MLA) and our hybrid configs.
/// A missing field is an error naming it.
pub fn from_config(c: &Value, name: &str) -> Result<Arch> {
    let d = field(c, "hidden_size")?;
    let n = field(c, "num_hidden_layers")?;
    let vocab = field(c, "vocab_size")?;
    let heads = field(c, "num_attention_heads")?;
    let kv_heads = opt(c, "num_key_value_heads").unwrap_or(heads);
    let head_dim = opt(c, "head_dim").unwrap_or(d / heads.max(1));
    let mlp = match opt(c, "num_experts").or(opt(c, "num_local_experts")) {
        Some(experts) => Mlp::Moe {
            experts,
            active: opt(c, "num_experts_per_tok")
                .or(opt(c, "num_experts_per_token"))
                .context("config.json: an MoE config needs `num_experts_per_tok`")?,
            inter: opt(c, "moe_intermediate_size").unwrap_or(field(c, "intermediate_size")?),
            shared: opt(c, "shared_expert_intermediate_size").unwrap_or(
                opt(c, "num_shared_experts").unwrap_or(0)
                    * opt(c, "moe_intermediate_size").unwrap_or(0),
            ),
        },
        None => Mlp::Dense {
            inter: field(c, "intermediate_size")?,
        },
    };
    let fa = if let Some(kv_lora) = opt(c, "kv_lora_rank") {
        Mixer::Mla {
            heads,
            kv_lora,
            rope: field(c, "qk_rope_head_dim")?,
            qk_head: field(c, "qk_nope_head_dim")? + field(c, "qk_rope_head_dim")?,
            v_head: field(c, "v_head_dim")?,
        }
    } else {
        Mixer::Fa {
            heads,
            kv_heads,
            head_dim,
        }
    };
    let linear = |c: &Value| -> Result<Mixer> {
        if let Some(l) = c.get("linear_attn_config") {
            let h = field(l, "num_heads")?;
            let dim = field(l, "head_dim")?;
            return Ok(Mixer::Linear {
                k_heads: h,
                v_heads: h,
                dk: dim,
                dv: dim,
                conv: opt(l, "short_conv_kernel_size").unwrap_or(4),
            });
        }
        let k_heads = field(c, "linear_num_key_heads")?;
        Ok(Mixer::Linear {
            k_heads,
            v_heads: opt(c, "linear_num_value_heads").unwrap_or(k_heads),
            dk: field(c, "linear_key_head_dim")?,
            dv: field(c, "linear_value_head_dim")?,
            conv: opt(c, "linear_conv_kernel_dim").unwrap_or(4),
        })
    };
    let mut types: Vec<String> = match c.get("layer_types").and_then(Value::as_array) {
        Some(t) => t
            .iter()
            .map(|v| v.as_str().unwrap_or("").to_string())
            .collect(),
        None => vec!["full_attention".into(); n],
    };
    if let Some(l) = c.get("linear_attn_config") {
        let kda: Vec<usize> = l
            .get("kda_layers")
            .and_then(Value::as_array)
            .context("config.json: `linear_attn_config.kda_layers` is missing")?
            .iter()
            .filter_map(Value::as_u64)
            .map(|v| v as usize)
            .collect();
        types = (1..=n)
            .map(|i| {
                if kda.contains(&i) {
                    "linear_attention".to_string()
                } else {
                    "full_attention".to_string()
                }
            })
            .collect();
    }
    if types.len() != n {
        bail!(
            "config.json: `layer_types` has {} entries; `num_hidden_layers` is {n}",
            types.len()
        );
    }
    let mut layers = vec![];
    for (i, t) in types.iter().enumerate() {
        let mixer = match t.as_str() {
            "full_attention" | "attention" => fa.clone(),
            "sliding_attention" => Mixer::Swa { heads, kv_heads, head_dim, window: field(c, "sliding_window")? },
            "linear_attention" => linear(c)?,
            other => bail!("config.json: `layer_types[{i}]` is '{other}' (full_attention, sliding_attention or linear_attention)"),
        };
        let mut mlp = mlp.clone();
        if i < opt(c, "first_k_dense_replace").unwrap_or(0) {
            mlp = Mlp::Dense {
                inter: field(c, "intermediate_size")?,
            };
        }
        layers.push(Layer { mixer, mlp });
    }
    Ok(Arch {
        name: name.into(),
        hidden: d,
        vocab,
        layers,
        dtype_bytes: 2,
        tie_embeddings: c
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::preset;

    #[test]
    fn configs_parse_and_bad_ones_name_the_field() {
        let c: Value = serde_json::json!({"hidden_size": 2048, "num_hidden_layers": 4, "vocab_size": 1000,
            "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256, "intermediate_size": 64,
            "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
            "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
            "linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128, "linear_value_head_dim": 128});
        let a = from_config(&c, "x").unwrap();
        assert_eq!(a.summary(), "3 linear + 1 fa");
        let mut bad = c.clone();
        bad.as_object_mut().unwrap().remove("linear_key_head_dim");
        let e = from_config(&bad, "x").unwrap_err().to_string();
        assert!(e.contains("linear_key_head_dim"), "{e}");
        let mut bad = c.clone();
        bad["layer_types"][1] = "mamba".into();
        let e = from_config(&bad, "x").unwrap_err().to_string();
        assert!(e.contains("layer_types[1]") && e.contains("mamba"), "{e}");
        assert!(preset("gpt-5")
            .unwrap_err()
            .to_string()
            .contains("minimax-m2"));
    }
}
