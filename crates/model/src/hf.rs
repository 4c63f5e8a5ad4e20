//! Hugging Face checkpoint folders: `config.json` of a transformers architecture mapped onto
//! our [`HybridConfig`] (research/mixers.md §4 for the hybrid families). The weights keep
//! their Hugging Face names, which are ours (`HybridModel::load_weights` reads them, sharded or
//! not, in f32/bf16/f16).
//!
//! Mapped: `LlamaForCausalLM` (`llama`), `Qwen2ForCausalLM` (`qwen2`: q/k/v biases),
//! `Qwen3ForCausalLM` (`qwen3`: per-head q/k RMSNorm), `Qwen3NextForCausalLM` (`qwen3_next`:
//! GDN layers from the packed, per-key-head grouped `in_proj_qkvz` / `in_proj_ba` and one conv
//! over q, k, v; gated attention with partial RoPE; zero-centred `(1 + w)` norms re-based to
//! plain weights at load; dense and mixture-of-experts MLPs), `KimiLinearForCausalLM`
//! (`kimi_linear`, as transformers 5.17 saves it: KDA layers, MLA without RoPE with its
//! compressed cache, a sigmoid router with a score-correction bias and shared experts; the
//! 1-based `kda_layers` / `full_attn_layers` lists when `layer_types` is absent). Every field
//! that would change the
//! model and is not mapped (RoPE scaling, an activation other than SiLU, MLP biases) is refused
//! with its name.
use crate::hybrid::config::{LinearAttnType, MlaConfig, MoeConfig, Router};
use crate::hybrid::io::{read_tensors, Tensors};
use crate::hybrid::{HybridConfig, HybridModel};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

pub const SUPPORTED: &str = "llama, qwen2, qwen3, qwen3_next, kimi_linear";

/// The most layers a config may claim: far above any published model's (a few hundred), and
/// low enough that the per-layer lists built from the count before any tensor is read stay
/// small whatever a corrupt `config.json` says.
const MAX_LAYERS: usize = 1 << 16;

const OVERFLOW: &str = "config.json: the model's sizes overflow";

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

/// RoPE base frequency and rotated share of each head: transformers 5's `rope_parameters`
/// or the older top-level fields; any scaling is refused (not implemented).
fn rope(v: &Value) -> Result<(f64, f64)> {
    let partial = opt_f64(v, "partial_rotary_factor")?;
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
        let part = opt_f64(p, "partial_rotary_factor")?.or(partial);
        return Ok((
            opt_f64(p, "rope_theta")?.unwrap_or(10000.0),
            part.unwrap_or(1.0),
        ));
    }
    if let Some(s) = v.get("rope_scaling").filter(|s| !s.is_null()) {
        bail!("config.json: rope_scaling {s} is not supported (no RoPE scaling)");
    }
    Ok((
        opt_f64(v, "rope_theta")?.unwrap_or(10000.0),
        partial.unwrap_or(1.0),
    ))
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
    let mut c = match t {
        "llama" | "qwen2" | "qwen3" => base(v, &["full_attention", "sliding_attention"])?,
        "qwen3_next" | "kimi_linear" => base(v, &["full_attention", "linear_attention"])?,
        other => bail!(
            "config.json: model_type '{other}' ({arch}) is not supported yet (supported: {SUPPORTED})"
        ),
    };
    match t {
        "llama" => c.attention_bias = opt_bool(v, "attention_bias")?.unwrap_or(false),
        "qwen2" => c.attention_bias = true,
        "qwen3" => {
            c.attention_bias = opt_bool(v, "attention_bias")?.unwrap_or(false);
            c.qk_norm = true;
        }
        "qwen3_next" => qwen3_next(v, &mut c)?,
        _ => kimi_linear(v, &mut c)?,
    }
    c.layers()?;
    Ok(c)
}

/// The fields every mapped family shares; `kinds`: the layer types it may list.
fn base(v: &Value, kinds: &[&str]) -> Result<HybridConfig> {
    if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
        if act != "silu" {
            bail!("config.json: hidden_act '{act}' is not supported (SwiGLU MLPs with silu)");
        }
    }
    if opt_bool(v, "mlp_bias")?.unwrap_or(false) {
        bail!("config.json: mlp_bias true is not supported");
    }
    let hidden = usize_field(v, "hidden_size")?;
    if hidden == 0 {
        bail!("config.json: hidden_size must be at least 1");
    }
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
    if layers > MAX_LAYERS {
        bail!("config.json: num_hidden_layers {layers} is more than the {MAX_LAYERS} supported");
    }
    let layer_types: Vec<String> = match v.get("layer_types").filter(|l| !l.is_null()) {
        Some(l) => {
            let l = l
                .as_array()
                .context("config.json: 'layer_types' must be a list")?;
            l.iter()
                .map(|x| match x.as_str() {
                    Some(s) if kinds.contains(&s) => Ok(s.to_string()),
                    _ => bail!("config.json: layer_types entry {x} is not supported here ({})", kinds.join(", ")),
                })
                .collect::<Result<_>>()?
        }
        None if opt_bool(v, "use_sliding_window")?.unwrap_or(false) => bail!(
            "config.json: use_sliding_window true without layer_types is not supported (which layers slide is not stated)"
        ),
        None => vec!["full_attention".to_string(); layers],
    };
    let (rope_theta, partial_rotary_factor) = rope(v)?;
    Ok(HybridConfig {
        model_type: "hybrid".into(),
        vocab_size: usize_field(v, "vocab_size")?,
        hidden_size: hidden,
        intermediate_size: usize_field(v, "intermediate_size")?,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: opt_f64(v, "rms_norm_eps")?.unwrap_or(1e-6) as f32,
        rope_theta,
        partial_rotary_factor,
        sliding_window: opt_usize(v, "sliding_window")?,
        attn_output_gate: false,
        attention_bias: false,
        qk_norm: false,
        max_position_embeddings: match opt_usize(v, "max_position_embeddings")? {
            Some(n) => n,
            // Kimi-Linear's config names it so.
            None => opt_usize(v, "model_max_length")?
                .context("config.json: 'max_position_embeddings' is missing")?,
        },
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
        moe: None,
        mla: None,
        bos_token_id: token_id(v, "bos_token_id")?,
        eos_token_id: token_id(v, "eos_token_id")?,
    })
}

/// Qwen3-Next: GDN and gated attention layers (from `layer_types`, or every
/// `full_attention_interval`-th layer full), MoE MLPs except `mlp_only_layers`.
fn qwen3_next(v: &Value, c: &mut HybridConfig) -> Result<()> {
    if v.get("layer_types").is_none_or(Value::is_null) {
        let every = opt_usize(v, "full_attention_interval")?.unwrap_or(4).max(1);
        c.layer_types = (0..c.num_hidden_layers)
            .map(|i| {
                if (i + 1) % every == 0 {
                    "full_attention"
                } else {
                    "linear_attention"
                }
                .to_string()
            })
            .collect();
    }
    c.attn_output_gate = true;
    c.qk_norm = true;
    c.attention_bias = opt_bool(v, "attention_bias")?.unwrap_or(false);
    c.linear_attn_type = Some(LinearAttnType::Global("gdn".into()));
    // Zero sizes would make the packed projections empty whatever the head count, so the
    // split at load could not bound its loop over heads by the tensors' rows.
    let positive = |name: &str| -> Result<usize> {
        match usize_field(v, name)? {
            0 => bail!("config.json: '{name}' must be at least 1"),
            n => Ok(n),
        }
    };
    c.linear_num_key_heads = Some(positive("linear_num_key_heads")?);
    c.linear_num_value_heads = Some(positive("linear_num_value_heads")?);
    c.linear_key_head_dim = Some(positive("linear_key_head_dim")?);
    c.linear_value_head_dim = Some(positive("linear_value_head_dim")?);
    c.linear_conv_kernel_dim = opt_usize(v, "linear_conv_kernel_dim")?.unwrap_or(4);
    let experts = opt_usize(v, "num_experts")?.unwrap_or(0);
    if experts > 0 {
        let step = opt_usize(v, "decoder_sparse_step")?.unwrap_or(1).max(1);
        let dense: Vec<usize> = match v.get("mlp_only_layers") {
            None | Some(Value::Null) => vec![],
            Some(l) => l
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_u64().map(|n| n as usize)).collect())
                .context("config.json: 'mlp_only_layers' must be a list of layer indices")?,
        };
        c.moe = Some(MoeConfig {
            sparse_layers: (0..c.num_hidden_layers)
                .map(|i| !dense.contains(&i) && (i + 1) % step == 0)
                .collect(),
            num_experts: experts,
            top_k: usize_field(v, "num_experts_per_tok")?,
            intermediate: usize_field(v, "moe_intermediate_size")?,
            shared_intermediate: opt_usize(v, "shared_expert_intermediate_size")?.unwrap_or(0),
            shared_gate: true,
            router: Router::Softmax,
            norm_topk_prob: opt_bool(v, "norm_topk_prob")?.unwrap_or(true),
            routed_scaling_factor: 1.0,
        });
    }
    Ok(())
}

/// Kimi-Linear: KDA layers and MLA (NoPE) layers, a dense first MLP and sparse ones after.
fn kimi_linear(v: &Value, c: &mut HybridConfig) -> Result<()> {
    let lin = v
        .get("linear_attn_config")
        .filter(|l| l.is_object())
        .context("config.json: 'linear_attn_config' is missing")?;
    if v.get("layer_types").is_none_or(Value::is_null) {
        // 1-based layer numbers (vLLM: `(i + 1) in kda_layers`).
        let list = |name: &str| -> Result<Vec<usize>> {
            lin.get(name)
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(|x| x.as_u64().map(|n| n as usize)).collect())
                .with_context(|| {
                    format!(
                        "config.json: 'linear_attn_config.{name}' must be a list of layer numbers"
                    )
                })
        };
        let kda = list("kda_layers")?;
        let full = list("full_attn_layers")?;
        c.layer_types = (1..=c.num_hidden_layers)
            .map(|n| match (kda.contains(&n), full.contains(&n)) {
                (true, false) => Ok("linear_attention".to_string()),
                (false, true) => Ok("full_attention".to_string()),
                _ => bail!("config.json: layer {n} must be in exactly one of linear_attn_config's kda_layers and full_attn_layers"),
            })
            .collect::<Result<_>>()?;
    }
    if opt_usize(v, "q_lora_rank")?.is_some() {
        bail!("config.json: q_lora_rank is not supported (MLA with a low-rank query)");
    }
    if !opt_bool(v, "mla_use_nope")?.unwrap_or(true) {
        bail!("config.json: mla_use_nope false is not supported (MLA with RoPE)");
    }
    c.mla = Some(MlaConfig {
        kv_lora_rank: usize_field(v, "kv_lora_rank")?,
        qk_nope_head_dim: usize_field(v, "qk_nope_head_dim")?,
        qk_rope_head_dim: usize_field(v, "qk_rope_head_dim")?,
        v_head_dim: usize_field(v, "v_head_dim")?,
    });
    let heads = usize_field(lin, "num_heads")?;
    let dim = usize_field(lin, "head_dim")?;
    c.linear_attn_type = Some(LinearAttnType::Global("kda".into()));
    c.linear_num_key_heads = Some(heads);
    c.linear_num_value_heads = Some(heads);
    c.linear_key_head_dim = Some(dim);
    c.linear_value_head_dim = Some(dim);
    c.linear_conv_kernel_dim = opt_usize(lin, "short_conv_kernel_size")?.unwrap_or(4);
    c.linear_gate_rank = dim;
    let experts = opt_usize(v, "num_experts")?.unwrap_or(0);
    if experts > 0 {
        if opt_usize(v, "num_expert_group")?.unwrap_or(1) > 1 {
            bail!("config.json: num_expert_group > 1 (group-limited routing) is not supported");
        }
        let sparse: Vec<bool> = match v.get("mlp_layer_types").and_then(Value::as_array) {
            Some(a) => a
                .iter()
                .map(|x| match x.as_str() {
                    Some("sparse") => Ok(true),
                    Some("dense") => Ok(false),
                    _ => bail!("config.json: mlp_layer_types entry {x} is not 'dense' or 'sparse'"),
                })
                .collect::<Result<_>>()?,
            None => {
                let first = opt_usize(v, "first_k_dense_replace")?.unwrap_or(0);
                (0..c.num_hidden_layers).map(|i| i >= first).collect()
            }
        };
        let router = match v.get("moe_router_activation_func").and_then(Value::as_str) {
            None | Some("sigmoid") => Router::Sigmoid,
            Some("softmax") => Router::Softmax,
            Some(other) => {
                bail!("config.json: moe_router_activation_func '{other}' is not supported")
            }
        };
        let inter = usize_field(v, "moe_intermediate_size")?;
        c.moe = Some(MoeConfig {
            sparse_layers: sparse,
            num_experts: experts,
            top_k: match opt_usize(v, "num_experts_per_token")? {
                Some(k) => k,
                None => usize_field(v, "num_experts_per_tok")?,
            },
            intermediate: inter,
            shared_intermediate: inter
                .checked_mul(opt_usize(v, "num_shared_experts")?.unwrap_or(0))
                .context(OVERFLOW)?,
            shared_gate: false,
            router,
            norm_topk_prob: opt_bool(v, "moe_renormalize")?.unwrap_or(true),
            routed_scaling_factor: opt_f64(v, "routed_scaling_factor")?.unwrap_or(1.0) as f32,
        });
    }
    Ok(())
}

/// The model of a transformers checkpoint folder whose `config.json` is `v`.
pub fn load(dir: &Path, v: &Value) -> Result<HybridModel> {
    let config = hybrid_config(v)?;
    let tensors = read_tensors(dir)?;
    model_of(dir, v, config, tensors)
}

/// [`load`] on tensors already read (`dir` names the checkpoint in errors).
pub fn from_tensors(dir: &Path, v: &Value, tensors: Tensors) -> Result<HybridModel> {
    let config = hybrid_config(v)?;
    model_of(dir, v, config, tensors)
}

fn model_of(dir: &Path, v: &Value, config: HybridConfig, tensors: Tensors) -> Result<HybridModel> {
    let kind = v.get("model_type").and_then(Value::as_str).unwrap_or("");
    let c = config.clone();
    HybridModel::from_tensors(dir, tensors, config, |t| match kind {
        "qwen3_next" => remap_qwen3_next(&c, t),
        "kimi_linear" => remap_kimi_linear(&c, t),
        _ => Ok(()),
    })
}

fn take(t: &mut Tensors, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    t.remove(name)
        .with_context(|| format!("tensor '{name}' is missing"))
}

/// Rows `[from, from + n)` of a row-major [rows, cols] matrix.
fn rows(m: &[f32], cols: usize, from: usize, n: usize) -> &[f32] {
    &m[from * cols..(from + n) * cols]
}

/// Qwen3-Next's tensors as ours: `(1 + w)` norms re-based, the GDN layers' packed projections
/// and conv split into q, k, v, z (our `g_proj`), b and a.
fn remap_qwen3_next(c: &HybridConfig, t: &mut Tensors) -> Result<()> {
    let mut rebase = |name: String| -> Result<()> {
        let (_, w) = t
            .get_mut(&name)
            .with_context(|| format!("tensor '{name}' is missing"))?;
        w.iter_mut().for_each(|x| *x += 1.0);
        Ok(())
    };
    rebase("model.norm.weight".into())?;
    for (i, kind) in c.layer_types.iter().enumerate() {
        rebase(format!("model.layers.{i}.input_layernorm.weight"))?;
        rebase(format!("model.layers.{i}.post_attention_layernorm.weight"))?;
        if kind == "full_attention" {
            rebase(format!("model.layers.{i}.self_attn.q_norm.weight"))?;
            rebase(format!("model.layers.{i}.self_attn.k_norm.weight"))?;
        }
    }
    let (hk, hv) = (
        c.linear_num_key_heads.unwrap_or(1),
        c.linear_num_value_heads.unwrap_or(1),
    );
    let (dk, dv) = (
        c.linear_key_head_dim.unwrap_or(1),
        c.linear_value_head_dim.unwrap_or(1),
    );
    let (d, r, w) = (c.hidden_size, hv / hk.max(1), c.linear_conv_kernel_dim);
    // Sizes from config.json, not yet checked against the tensors: checked arithmetic.
    let mul = |a: usize, b: usize| a.checked_mul(b).context(OVERFLOW);
    let add = |a: usize, b: usize| a.checked_add(b).context(OVERFLOW);
    let (hk_dk, hv_dv, r_dv) = (mul(hk, dk)?, mul(hv, dv)?, mul(r, dv)?);
    let per = add(mul(2, dk)?, mul(2, r_dv)?)?;
    let ch = add(mul(2, hk_dk)?, hv_dv)?;
    for (i, kind) in c.layer_types.iter().enumerate() {
        if kind != "linear_attention" {
            continue;
        }
        let pre = format!("model.layers.{i}.linear_attn.");
        let (shape, qkvz) = take(t, &format!("{pre}in_proj_qkvz.weight"))?;
        let rows_qkvz = mul(hk, per)?;
        if shape != [rows_qkvz, d] {
            bail!("tensor '{pre}in_proj_qkvz.weight' has shape {shape:?}, expected [{rows_qkvz}, {d}]");
        }
        let (mut q, mut k, mut v, mut z) = (vec![], vec![], vec![], vec![]);
        for h in 0..hk {
            let b = h * per;
            q.extend_from_slice(rows(&qkvz, d, b, dk));
            k.extend_from_slice(rows(&qkvz, d, b + dk, dk));
            v.extend_from_slice(rows(&qkvz, d, b + 2 * dk, r * dv));
            z.extend_from_slice(rows(&qkvz, d, b + 2 * dk + r * dv, r * dv));
        }
        let (shape, ba) = take(t, &format!("{pre}in_proj_ba.weight"))?;
        let rows_ba = mul(2, hv)?;
        if shape != [rows_ba, d] {
            bail!("tensor '{pre}in_proj_ba.weight' has shape {shape:?}, expected [{rows_ba}, {d}]");
        }
        let (mut bw, mut aw) = (vec![], vec![]);
        for h in 0..hk {
            bw.extend_from_slice(rows(&ba, d, h * 2 * r, r));
            aw.extend_from_slice(rows(&ba, d, h * 2 * r + r, r));
        }
        let (shape, conv) = take(t, &format!("{pre}conv1d.weight"))?;
        if shape.iter().product::<usize>() != mul(ch, w)? {
            bail!("tensor '{pre}conv1d.weight' has shape {shape:?}, expected [{ch}, 1, {w}]");
        }
        let mut put = |name: &str, shape: Vec<usize>, data: Vec<f32>| {
            t.insert(format!("{pre}{name}"), (shape, data));
        };
        put(
            "q_conv1d.weight",
            vec![hk_dk, w],
            rows(&conv, w, 0, hk_dk).to_vec(),
        );
        put(
            "k_conv1d.weight",
            vec![hk_dk, w],
            rows(&conv, w, hk_dk, hk_dk).to_vec(),
        );
        put(
            "v_conv1d.weight",
            vec![hv_dv, w],
            rows(&conv, w, 2 * hk_dk, hv_dv).to_vec(),
        );
        put("q_proj.weight", vec![hk_dk, d], q);
        put("k_proj.weight", vec![hk_dk, d], k);
        put("v_proj.weight", vec![hv_dv, d], v);
        put("g_proj.weight", vec![hv_dv, d], z);
        put("b_proj.weight", vec![hv, d], bw);
        put("a_proj.weight", vec![hv, d], aw);
        for (from, to) in [
            ("norm.weight", "o_norm.weight"),
            ("out_proj.weight", "o_proj.weight"),
        ] {
            let x = take(t, &format!("{pre}{from}"))?;
            t.insert(format!("{pre}{to}"), x);
        }
    }
    Ok(())
}

/// Kimi-Linear's tensors (transformers 5.17 names) as ours: KDA layers under `linear_attn.`
/// with a zero bias for `g_b_proj` (Kimi's has none), the MLPs' `block_sparse_moe.*` under
/// `mlp.*` (experts' w1/w2/w3 = gate/down/up, `shared_experts` = our shared expert).
fn remap_kimi_linear(c: &HybridConfig, t: &mut Tensors) -> Result<()> {
    let names: Vec<String> = t.keys().cloned().collect();
    for name in names {
        let Some(rest) = name.strip_prefix("model.layers.") else {
            continue;
        };
        let (i, tail) = rest.split_once('.').context("a layer tensor's name")?;
        let i: usize = i
            .parse()
            .with_context(|| format!("layer number in '{name}'"))?;
        let linear = c
            .layer_types
            .get(i)
            .is_some_and(|k| k == "linear_attention");
        let new = if let Some(x) = tail.strip_prefix("self_attn.").filter(|_| linear) {
            format!("linear_attn.{x}")
        } else if let Some(x) = tail.strip_prefix("block_sparse_moe.") {
            let x = if let Some(e) = x.strip_prefix("experts.") {
                let (e, w) = e.split_once('.').context("an expert's tensor name")?;
                let w = match w {
                    "w1.weight" => "gate_proj.weight",
                    "w2.weight" => "down_proj.weight",
                    "w3.weight" => "up_proj.weight",
                    other => bail!("tensor '{name}': unknown expert weight '{other}'"),
                };
                format!("experts.{e}.{w}")
            } else if let Some(s) = x.strip_prefix("shared_experts.") {
                format!("shared_expert.{s}")
            } else {
                x.to_string()
            };
            format!("mlp.{x}")
        } else {
            continue;
        };
        let v = t.remove(&name).expect("listed");
        t.insert(format!("model.layers.{i}.{new}"), v);
    }
    let width = c
        .linear_num_key_heads
        .unwrap_or(0)
        .checked_mul(c.linear_key_head_dim.unwrap_or(0))
        .context(OVERFLOW)?;
    for (i, kind) in c.layer_types.iter().enumerate() {
        let bias = format!("model.layers.{i}.linear_attn.g_b_proj.bias");
        if kind == "linear_attention" && !t.contains_key(&bias) {
            // The bias is as wide as the weight is tall: allocate it only once the weight
            // shows that many rows (config.json alone could claim any width).
            let weight = format!("model.layers.{i}.linear_attn.g_b_proj.weight");
            let want = [width, c.linear_gate_rank];
            match t.get(&weight) {
                Some((shape, _)) if shape[..] == want => {}
                Some((shape, _)) => {
                    bail!("tensor '{weight}' has shape {shape:?}, expected {want:?}")
                }
                None => bail!("tensor '{weight}' is missing"),
            }
            t.insert(bias, (vec![width], vec![0.0; width]));
        }
    }
    Ok(())
}
