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
        Self::from_json(&s, path)
    }

    /// [`HybridConfig::from_file`] on the file's text (`path` names it in errors).
    pub fn from_json(json: &str, path: &std::path::Path) -> Result<Self> {
        let c: HybridConfig = serde_json::from_str(json)
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
        // The rotated share of a head: more than all of it has no meaning (and RoPE would
        // index past the head).
        if !(0.0..=1.0).contains(&self.partial_rotary_factor) {
            bail!(
                "partial_rotary_factor {} is not between 0 and 1",
                self.partial_rotary_factor
            );
        }
        let rot = (self.head_dim as f64 * self.partial_rotary_factor).round() as usize / 2 * 2;
        // MLA heads are nope + rope wide: numbers from config.json, added checked.
        let mla_head_dim = match self.mla {
            Some(m) => Some(
                m.qk_nope_head_dim
                    .checked_add(m.qk_rope_head_dim)
                    .context("mla: qk_nope_head_dim + qk_rope_head_dim overflows")?,
            ),
            None => None,
        };
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
            head_dim: mla_head_dim.unwrap_or(self.head_dim),
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

    /// How many values and tensors [`super::HybridModel::init`] makes for this config, counted
    /// without allocating them and in checked arithmetic, so that loading can refuse a config
    /// that claims more than its checkpoint holds before allocating anything (a hostile
    /// `config.json` would otherwise ask for terabytes). Mirrors the init functions of the
    /// model, the mixers and the MoE MLPs; a test compares the two for every layer kind.
    pub fn param_count(&self) -> Result<ParamCount> {
        let kinds = self.layers()?;
        let (v, d, f) = (self.vocab_size, self.hidden_size, self.intermediate_size);
        let mut n = ParamCount::default();
        n.add(1, &[v, d])?; // embed_tokens
        n.add(1, &[d])?; // final norm
        if !self.tie_word_embeddings {
            n.add(1, &[v, d])?;
        }
        for (i, kind) in kinds.iter().enumerate() {
            match kind {
                LayerKind::Attention(c) => attention_params(c, &mut n)?,
                LayerKind::Linear(c) => linear_params(c, &mut n)?,
            }
            n.add(1, &[d])?; // input_layernorm
            let sparse = self
                .moe
                .as_ref()
                .filter(|m| m.sparse_layers.get(i) == Some(&true));
            if let Some(m) = sparse {
                n.add(1, &[d])?; // post_attention_layernorm
                n.add(1, &[m.num_experts, d])?; // router
                if m.router == Router::Sigmoid {
                    n.add(1, &[m.num_experts])?;
                }
                let three = m.num_experts.checked_mul(3).context(OVERFLOW)?;
                n.add(three, &[m.intermediate, d])?;
                if m.shared_intermediate > 0 {
                    n.add(3, &[m.shared_intermediate, d])?;
                    if m.shared_gate {
                        n.add(1, &[d])?;
                    }
                }
            } else if f > 0 {
                n.add(1, &[d])?; // post_attention_layernorm
                n.add(3, &[f, d])?; // gate, up, down
            }
        }
        Ok(n)
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

/// Values and tensors of a model ([`HybridConfig::param_count`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamCount {
    pub values: usize,
    pub tensors: usize,
}

const OVERFLOW: &str = "config.json: the model's sizes overflow";

impl ParamCount {
    /// `count` tensors of `shape`.
    fn add(&mut self, count: usize, shape: &[usize]) -> Result<()> {
        let values = shape
            .iter()
            .try_fold(count, |a, &b| a.checked_mul(b))
            .and_then(|v| self.values.checked_add(v));
        self.values = values.context(OVERFLOW)?;
        self.tensors = self.tensors.checked_add(count).context(OVERFLOW)?;
        Ok(())
    }
}

/// What `Attention::init` (and `mla::init`) allocate.
fn attention_params(c: &AttentionConfig, n: &mut ParamCount) -> Result<()> {
    let mul = |a: usize, b: usize| a.checked_mul(b).context(OVERFLOW);
    let add = |a: usize, b: usize| a.checked_add(b).context(OVERFLOW);
    if let Some(m) = c.mla {
        let qd = mul(c.n_heads, add(m.qk_nope, m.qk_rope)?)?;
        let kvb = mul(c.n_heads, add(m.qk_nope, m.v_head)?)?;
        n.add(1, &[qd, c.hidden])?;
        n.add(1, &[add(m.kv_lora_rank, m.qk_rope)?, c.hidden])?;
        n.add(1, &[m.kv_lora_rank])?;
        n.add(1, &[kvb, m.kv_lora_rank])?;
        n.add(1, &[c.hidden, mul(c.n_heads, m.v_head)?])?;
        return Ok(());
    }
    let heads = mul(c.n_heads, c.head_dim)?;
    let qd = mul(heads, if c.output_gate { 2 } else { 1 })?;
    let kvd = mul(c.n_kv_heads, c.head_dim)?;
    n.add(1, &[qd, c.hidden])?;
    n.add(2, &[kvd, c.hidden])?;
    n.add(1, &[c.hidden, heads])?;
    if c.qkv_bias {
        n.add(1, &[qd])?;
        n.add(2, &[kvd])?;
    }
    if c.qk_norm.is_some() {
        n.add(2, &[c.head_dim])?;
    }
    Ok(())
}

/// What `LinearMixer::init` allocates.
fn linear_params(c: &LinearConfig, n: &mut ParamCount) -> Result<()> {
    let mul = |a: usize, b: usize| a.checked_mul(b).context(OVERFLOW);
    let (d, r, hv) = (c.hidden, c.gate_rank, c.n_v_heads);
    let hk = mul(c.n_heads, c.head_k_dim)?;
    let hvv = mul(hv, c.head_v_dim)?;
    let hvk = mul(hv, c.head_k_dim)?;
    n.add(2, &[hk, d])?; // q, k
    n.add(1, &[hvv, d])?; // v
    n.add(1, &[d, hvv])?; // o
    match c.kind {
        LinearKind::Gdn => {
            n.add(2, &[hv, d])?; // a, b
            n.add(1, &[hvv, d])?; // g
        }
        LinearKind::Kda => {
            n.add(2, &[r, d])?; // f_a, g_a
            n.add(1, &[hvk, r])?; // f_b
            n.add(1, &[hv, d])?; // b
            n.add(1, &[hvv, r])?; // g_b
            n.add(1, &[hvv])?; // g_b bias
        }
        LinearKind::Gla => {
            n.add(1, &[r, d])?;
            n.add(1, &[hvk, r])?;
            n.add(1, &[hvk])?;
            n.add(1, &[hvv, d])?;
        }
    }
    if c.conv_size > 0 {
        n.add(2, &[hk, c.conv_size])?;
        n.add(1, &[hvv, c.conv_size])?;
    }
    match c.kind {
        LinearKind::Gdn => n.add(2, &[hv])?, // A_log, dt_bias
        LinearKind::Kda => {
            n.add(1, &[hv])?;
            n.add(1, &[hvk])?;
        }
        LinearKind::Gla => {}
    }
    n.add(1, &[c.head_v_dim]) // o_norm
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hybrid::HybridModel;

    /// `param_count` must stay the mirror of what `HybridModel::init` allocates.
    fn assert_counts_match(c: HybridConfig) {
        let m = HybridModel::init(c.clone(), 0).unwrap();
        let tensors = m.named_params().map.len();
        let want = ParamCount {
            values: m.n_params(),
            tensors,
        };
        assert_eq!(c.param_count().unwrap(), want, "{c:?}");
    }

    #[test]
    fn param_count_matches_init_for_every_layer_kind() {
        let base = HybridConfig::small("fa,swa,gdn,kda,gla", 50).unwrap();
        assert_counts_match(base.clone());
        assert_counts_match(HybridConfig {
            tie_word_embeddings: false,
            attention_bias: true,
            qk_norm: true,
            attn_output_gate: true,
            linear_conv_kernel_dim: 0,
            intermediate_size: 0,
            ..base.clone()
        });
        let moe = |router, shared_intermediate, shared_gate| MoeConfig {
            sparse_layers: vec![false, true, true, false, true],
            num_experts: 3,
            top_k: 2,
            intermediate: 6,
            shared_intermediate,
            shared_gate,
            router,
            norm_topk_prob: true,
            routed_scaling_factor: 1.0,
        };
        assert_counts_match(HybridConfig {
            moe: Some(moe(Router::Softmax, 5, true)),
            ..base.clone()
        });
        assert_counts_match(HybridConfig {
            moe: Some(moe(Router::Sigmoid, 0, false)),
            ..base
        });
        assert_counts_match(HybridConfig {
            mla: Some(MlaConfig {
                kv_lora_rank: 6,
                qk_nope_head_dim: 4,
                qk_rope_head_dim: 2,
                v_head_dim: 5,
            }),
            // Grouped value heads (GDN and KDA allow them, GLA does not).
            linear_num_value_heads: Some(4),
            ..HybridConfig::small("fa,gdn,kda,swa", 50).unwrap()
        });
    }

    #[test]
    fn param_count_refuses_sizes_that_overflow() {
        let c = HybridConfig {
            vocab_size: usize::MAX / 2,
            ..HybridConfig::small("fa", 50).unwrap()
        };
        let e = c.param_count().unwrap_err().to_string();
        assert!(e.contains("overflow"), "{e}");
    }
}
