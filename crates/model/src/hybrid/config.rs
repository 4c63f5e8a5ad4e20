//! `config.json` of a hybrid model, in Hugging Face style: one `layer_types` entry per layer
//! (`full_attention`, `sliding_attention`, `linear_attention`) and `linear_attn_type`
//! (`gdn` | `kda` | `gla`) for the whole model or per layer, plus per-type hyperparameters.
use anyhow::{bail, Context, Result};
use mixers::attention::AttentionConfig;
use mixers::linear_mixer::{LinearConfig, LinearKind};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum LinearAttnType {
    Global(String),
    PerLayer(Vec<Option<String>>),
}

fn default_model_type() -> String {
    "hybrid".into()
}
fn default_eps() -> f32 {
    1e-5
}
fn default_theta() -> f64 {
    10000.0
}
fn one() -> f64 {
    1.0
}
fn four() -> usize {
    4
}
fn sixty_four() -> usize {
    64
}
fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HybridConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// 0 = no MLP (Zoology's MQAR models are mixer-only).
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "one")]
    pub partial_rotary_factor: f64,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub attn_output_gate: bool,
    /// Biases on the q/k/v projections (Qwen2, and Llama's `attention_bias`).
    #[serde(default)]
    pub attention_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3's `q_norm`/`k_norm`).
    #[serde(default)]
    pub qk_norm: bool,
    pub max_position_embeddings: usize,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    pub layer_types: Vec<String>,
    #[serde(default)]
    pub linear_attn_type: Option<LinearAttnType>,
    #[serde(default)]
    pub linear_num_key_heads: Option<usize>,
    #[serde(default)]
    pub linear_num_value_heads: Option<usize>,
    #[serde(default)]
    pub linear_key_head_dim: Option<usize>,
    #[serde(default)]
    pub linear_value_head_dim: Option<usize>,
    #[serde(default = "four")]
    pub linear_conv_kernel_dim: usize,
    #[serde(default = "sixty_four")]
    pub linear_gate_rank: usize,
    #[serde(default = "sixty_four")]
    pub linear_chunk_size: usize,
    /// Mixture-of-experts MLPs (Qwen3-Next, Kimi-Linear); None: every MLP is dense.
    #[serde(default)]
    pub moe: Option<MoeConfig>,
    /// Full-attention layers as multi-head latent attention without RoPE (Kimi-Linear).
    #[serde(default)]
    pub mla: Option<MlaConfig>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

/// How a sparse MLP routes a token to its experts.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Router {
    /// Softmax over all experts, top-k, optionally renormalised (Qwen3-Next).
    Softmax,
    /// Sigmoid scores; top-k chosen on score + `mlp.gate.e_score_correction_bias`, weighted by
    /// the scores (renormalised if asked) times `routed_scaling_factor` (Kimi, DeepSeek-V3).
    Sigmoid,
}

/// Sparse MLPs: `mlp.gate.weight` [E, D] routes each token to `top_k` of `num_experts` SwiGLU
/// experts (`mlp.experts.{e}.{gate,up,down}_proj.weight`, width `intermediate`), plus a shared
/// expert (`mlp.shared_expert.*`, width `shared_intermediate`, 0 = none) whose output is scaled
/// by `sigmoid(mlp.shared_expert_gate.weight · x)` when `shared_gate`. Inference only.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MoeConfig {
    /// Per layer: true = sparse MLP, false = the dense one of `intermediate_size`.
    pub sparse_layers: Vec<bool>,
    pub num_experts: usize,
    pub top_k: usize,
    pub intermediate: usize,
    pub shared_intermediate: usize,
    pub shared_gate: bool,
    pub router: Router,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
}

/// MLA dimensions (DeepSeek-V2 / Kimi names).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct MlaConfig {
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
}

/// What one layer is.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerKind {
    Attention(AttentionConfig),
    Linear(LinearConfig),
}

impl HybridConfig {
    /// A small model of layout `layout` (e.g. "fa,swa,gdn") over `vocab` tokens: width 32,
    /// 4 query / 2 key-value heads of dim 8, window 6, linear heads 2 × 8 — for tests and
    /// examples, which override fields with struct-update syntax.
    pub fn small(layout: &str, vocab: usize) -> Result<Self> {
        let (layer_types, lin) = parse_layout(layout)?;
        let any_linear = lin.iter().any(Option::is_some);
        Ok(HybridConfig {
            model_type: "hybrid".into(),
            vocab_size: vocab,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: layer_types.len(),
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            partial_rotary_factor: 1.0,
            sliding_window: Some(6),
            attn_output_gate: false,
            attention_bias: false,
            qk_norm: false,
            moe: None,
            mla: None,
            max_position_embeddings: 2048,
            tie_word_embeddings: true,
            layer_types,
            linear_attn_type: any_linear.then_some(LinearAttnType::PerLayer(lin)),
            linear_num_key_heads: any_linear.then_some(2),
            linear_num_value_heads: any_linear.then_some(2),
            linear_key_head_dim: any_linear.then_some(8),
            linear_value_head_dim: any_linear.then_some(8),
            linear_conv_kernel_dim: 4,
            linear_gate_rank: 4,
            linear_chunk_size: 8,
            bos_token_id: None,
            eos_token_id: None,
        })
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let s = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let c: HybridConfig = serde_json::from_str(&s)
            .with_context(|| format!("{} is not a valid hybrid config", path.display()))?;
        c.layers()?;
        Ok(c)
    }

    /// The linear mixer kind of layer `i` (None when the layer is attention).
    fn linear_kind(&self, i: usize) -> Result<LinearKind> {
        let name = match &self.linear_attn_type {
            None => "gdn".to_string(),
            Some(LinearAttnType::Global(s)) => s.clone(),
            Some(LinearAttnType::PerLayer(v)) => {
                v.get(i).cloned().flatten().with_context(|| {
                    format!("linear_attn_type has no entry for linear layer {i}")
                })?
            }
        };
        LinearKind::parse(&name)
            .with_context(|| format!("unknown linear_attn_type '{name}' (gdn, kda, gla)"))
    }

    /// Every layer's kind and mixer config; errors name the offending field.
    pub fn layers(&self) -> Result<Vec<LayerKind>> {
        if self.layer_types.len() != self.num_hidden_layers {
            bail!(
                "layer_types has {} entries but num_hidden_layers is {}",
                self.layer_types.len(),
                self.num_hidden_layers
            );
        }
        let rot = (self.head_dim as f64 * self.partial_rotary_factor).round() as usize / 2 * 2;
        let mla = self.mla.map(|m| mixers::mla::MlaDims {
            kv_lora_rank: m.kv_lora_rank,
            qk_nope: m.qk_nope_head_dim,
            qk_rope: m.qk_rope_head_dim,
            v_head: m.v_head_dim,
        });
        let attn = |window| AttentionConfig {
            hidden: self.hidden_size,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads,
            head_dim: mla.map_or(self.head_dim, |m| m.qk_nope + m.qk_rope),
            rope_theta: self.rope_theta,
            rot_dims: if mla.is_some() { 0 } else { rot },
            mla,
            window,
            output_gate: self.attn_output_gate,
            qkv_bias: self.attention_bias,
            qk_norm: self.qk_norm.then_some(self.rms_norm_eps),
        };
        self.layer_types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Ok(match t.as_str() {
                    "full_attention" => LayerKind::Attention(attn(None)),
                    "sliding_attention" => {
                        let w = self.sliding_window.context("sliding_attention layers need sliding_window")?;
                        if w == 0 {
                            bail!("sliding_window must be at least 1");
                        }
                        LayerKind::Attention(attn(Some(w)))
                    }
                    "linear_attention" => {
                        let kind = self.linear_kind(i)?;
                        let h = self.linear_num_key_heads.unwrap_or(self.num_attention_heads);
                        let hv = self.linear_num_value_heads.unwrap_or(h);
                        if h == 0 || !hv.is_multiple_of(h) || (kind == LinearKind::Gla && hv != h) {
                            bail!("linear heads: {h} key heads and {hv} value heads do not fit {}", kind.name());
                        }
                        LayerKind::Linear(LinearConfig {
                            kind,
                            hidden: self.hidden_size,
                            n_heads: h,
                            n_v_heads: hv,
                            head_k_dim: self.linear_key_head_dim.unwrap_or(self.head_dim),
                            head_v_dim: self.linear_value_head_dim.unwrap_or(self.head_dim),
                            conv_size: self.linear_conv_kernel_dim,
                            gate_rank: self.linear_gate_rank,
                            norm_eps: self.rms_norm_eps,
                            chunk: self.linear_chunk_size.max(1),
                        })
                    }
                    other => bail!("layer {i}: unknown layer type '{other}' (full_attention, sliding_attention, linear_attention)"),
                })
            })
            .collect()
    }

    /// Short names per layer: FA, SWA, GDN, KDA, GLA.
    pub fn layer_names(&self) -> Result<Vec<String>> {
        Ok(self
            .layers()?
            .iter()
            .map(|l| match l {
                LayerKind::Attention(a) if a.window.is_some() => "SWA".to_string(),
                LayerKind::Attention(_) => "FA".to_string(),
                LayerKind::Linear(c) => c.kind.name().to_uppercase(),
            })
            .collect())
    }
}

/// Parses a layout such as `fa,gdn,swa,kda` into (layer_types, linear_attn_type per layer).
pub fn parse_layout(spec: &str) -> Result<(Vec<String>, Vec<Option<String>>)> {
    let mut types = vec![];
    let mut lin = vec![];
    for (i, s) in spec.split(',').map(str::trim).enumerate() {
        match s.to_ascii_lowercase().as_str() {
            "fa" | "full" | "full_attention" => {
                types.push("full_attention".into());
                lin.push(None);
            }
            "swa" | "sliding" | "sliding_attention" => {
                types.push("sliding_attention".into());
                lin.push(None);
            }
            k @ ("gdn" | "kda" | "gla") => {
                types.push("linear_attention".into());
                lin.push(Some(k.to_string()));
            }
            other => {
                bail!("layer {i} of '{spec}': unknown type '{other}' (fa, swa, gdn, kda, gla)")
            }
        }
    }
    Ok((types, lin))
}
