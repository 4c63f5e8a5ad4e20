//! What the cost model knows of a model: per layer its token mixer (FA, MLA, SWA or a linear
//! recurrence) and MLP (dense or MoE, active experts only), plus embeddings and dtype. Built
//! from a preset (published configs) or a Hugging Face / hybrid `config.json`.
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Mixer {
    /// Full attention with GQA.
    Fa {
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    },
    /// Multi-head latent attention: a compressed cache of `kv_lora + rope` values per token.
    Mla {
        heads: usize,
        kv_lora: usize,
        rope: usize,
        qk_head: usize,
        v_head: usize,
    },
    /// Sliding-window attention over the last `window` keys.
    Swa {
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        window: usize,
    },
    /// GDN / KDA / JetBlock-style recurrence: f32 state [v_heads, dk, dv] plus a short conv.
    Linear {
        k_heads: usize,
        v_heads: usize,
        dk: usize,
        dv: usize,
        conv: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Mlp {
    Dense {
        inter: usize,
    },
    /// `active` routed experts of width `inter` per token, plus a shared expert of `shared`.
    Moe {
        experts: usize,
        active: usize,
        inter: usize,
        shared: usize,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct Layer {
    pub mixer: Mixer,
    pub mlp: Mlp,
}

#[derive(Clone, Debug, Serialize)]
pub struct Arch {
    pub name: String,
    pub hidden: usize,
    pub vocab: usize,
    pub layers: Vec<Layer>,
    /// Bytes per weight and per cached key/value (2 for bf16).
    pub dtype_bytes: usize,
    pub tie_embeddings: bool,
}

impl Mixer {
    /// Weights of the mixer's projections.
    pub fn params(&self, d: usize) -> usize {
        match *self {
            Mixer::Fa {
                heads,
                kv_heads,
                head_dim,
            }
            | Mixer::Swa {
                heads,
                kv_heads,
                head_dim,
                ..
            } => d * head_dim * (2 * heads + 2 * kv_heads),
            Mixer::Mla {
                heads,
                kv_lora,
                rope,
                qk_head,
                v_head,
            } => {
                // q, the compressed kv and its rope key, the up-projections, o.
                d * heads * qk_head
                    + d * (kv_lora + rope)
                    + kv_lora * heads * (qk_head - rope + v_head)
                    + heads * v_head * d
            }
            Mixer::Linear {
                k_heads,
                v_heads,
                dk,
                dv,
                ..
            } => {
                // q, k, v, the output gate, o, and small per-head projections (β, decay).
                d * (2 * k_heads * dk + 3 * v_heads * dv) + 2 * d * v_heads
            }
        }
    }

    /// Cache bytes of one sequence after `n` tokens (`kv` bytes per key/value element;
    /// recurrent states are f32).
    pub fn cache_bytes(&self, n: usize, kv: usize) -> usize {
        match *self {
            Mixer::Fa {
                kv_heads, head_dim, ..
            } => 2 * kv_heads * head_dim * n * kv,
            Mixer::Mla { kv_lora, rope, .. } => (kv_lora + rope) * n * kv,
            Mixer::Swa {
                kv_heads,
                head_dim,
                window,
                ..
            } => 2 * kv_heads * head_dim * n.min(window) * kv,
            Mixer::Linear {
                k_heads,
                v_heads,
                dk,
                dv,
                conv,
            } => {
                v_heads * dk * dv * 4
                    + conv.saturating_sub(1) * (2 * k_heads * dk + v_heads * dv) * kv
            }
        }
    }

    /// Attention FLOPs of one token at position `pos` (it sees `pos + 1` keys): the score and
    /// value products; a recurrence's state update and readout.
    pub fn token_flops(&self, pos: usize) -> f64 {
        let keys = (pos + 1) as f64;
        match *self {
            Mixer::Fa {
                heads, head_dim, ..
            } => 4.0 * (heads * head_dim) as f64 * keys,
            // Absorbed form (decode): scores over kv_lora + rope, values over kv_lora.
            Mixer::Mla {
                heads,
                kv_lora,
                rope,
                ..
            } => 2.0 * heads as f64 * (2 * kv_lora + rope) as f64 * keys,
            Mixer::Swa {
                heads,
                head_dim,
                window,
                ..
            } => 4.0 * (heads * head_dim) as f64 * keys.min(window as f64),
            Mixer::Linear {
                v_heads, dk, dv, ..
            } => 6.0 * (v_heads * dk * dv) as f64,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Mixer::Fa { .. } => "fa",
            Mixer::Mla { .. } => "mla",
            Mixer::Swa { .. } => "swa",
            Mixer::Linear { .. } => "linear",
        }
    }
}

impl Mlp {
    /// Weights a token passes through (active experts only) and in all.
    pub fn params(&self, d: usize) -> (usize, usize) {
        match *self {
            Mlp::Dense { inter } => (3 * d * inter, 3 * d * inter),
            Mlp::Moe {
                experts,
                active,
                inter,
                shared,
            } => (
                3 * d * (active * inter + shared) + d * experts,
                3 * d * (experts * inter + shared) + d * experts,
            ),
        }
    }
}

impl Arch {
    /// Weights read per decode step (every active weight once, embeddings' lookup aside).
    pub fn active_params(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.mixer.params(self.hidden) + l.mlp.params(self.hidden).0)
            .sum::<usize>()
            + self.vocab * self.hidden
    }

    pub fn total_params(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.mixer.params(self.hidden) + l.mlp.params(self.hidden).1)
            .sum::<usize>()
            + self.vocab * self.hidden * if self.tie_embeddings { 1 } else { 2 }
    }

    /// One sequence's cache bytes after `n` tokens.
    pub fn cache_bytes(&self, n: usize) -> usize {
        self.layers
            .iter()
            .map(|l| l.mixer.cache_bytes(n, self.dtype_bytes))
            .sum()
    }

    /// Layer counts by mixer kind, e.g. "3 fa + 9 linear".
    pub fn summary(&self) -> String {
        let mut counts: Vec<(&str, usize)> = vec![];
        for l in &self.layers {
            match counts.iter_mut().find(|c| c.0 == l.mixer.kind()) {
                Some(c) => c.1 += 1,
                None => counts.push((l.mixer.kind(), 1)),
            }
        }
        counts
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// The same model with layer `i`'s mixer replaced where `keep(i)` is false by `with`.
    pub fn hybridised(&self, name: &str, keep: impl Fn(usize) -> bool, with: Mixer) -> Arch {
        let mut a = self.clone();
        a.name = name.into();
        for (i, l) in a.layers.iter_mut().enumerate() {
            if !keep(i) {
                l.mixer = with.clone();
            }
        }
        a
    }
}

fn uniform(
    name: &str,
    hidden: usize,
    vocab: usize,
    n: usize,
    mixer: Mixer,
    mlp: Mlp,
    tie: bool,
) -> Arch {
    Arch {
        name: name.into(),
        hidden,
        vocab,
        layers: (0..n)
            .map(|_| Layer {
                mixer: mixer.clone(),
                mlp: mlp.clone(),
            })
            .collect(),
        dtype_bytes: 2,
        tie_embeddings: tie,
    }
}

/// The built-in presets: (name, what it is).
pub const PRESETS: &[(&str, &str)] = &[
    ("smollm2-135m", "SmolLM2-135M (30 FA layers), our teacher"),
    (
        "smollm2-hybrid",
        "its hybrid learned by `convert --preset full` (2 FA, 4 SWA of 64, 24 GDN)",
    ),
    (
        "minimax-m2",
        "MiniMax-M2, 230B total / 10B active, 62 FA layers",
    ),
    (
        "m2-hybrid",
        "hypothetical M2 hybrid: every 4th layer FA, the rest GDN (Qwen3-Next's 3:1)",
    ),
    (
        "kimi-linear-48b",
        "Kimi-Linear-48B-A3B: 20 KDA + 7 MLA (1-based lists)",
    ),
    (
        "kimi-mla-48b",
        "the same model with MLA in every layer (Kimi Linear's baseline)",
    ),
    ("qwen3-next-80b", "Qwen3-Next-80B-A3B: 36 GDN + 12 gated FA"),
    (
        "jet-nemotron-2b",
        "Jet-Nemotron-2B: 2 FA + 2 SWA (1152) + 24 JetBlock",
    ),
    (
        "qwen3-1.7b",
        "Qwen3-1.7B, Jet-Nemotron's baseline (28 FA layers)",
    ),
];

/// A built-in preset by name (sources: ../shared/research/mixers.md §4, placement.md §2.4, and
/// the published config.json files they quote; MiniMax-M2's from its configuration file).
pub fn preset(name: &str) -> Result<Arch> {
    let smol_fa = Mixer::Fa {
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
    };
    let m2_fa = Mixer::Fa {
        heads: 48,
        kv_heads: 8,
        head_dim: 128,
    };
    let m2_moe = Mlp::Moe {
        experts: 256,
        active: 8,
        inter: 1536,
        shared: 0,
    };
    Ok(match name {
        "smollm2-135m" => uniform(
            name,
            576,
            49152,
            30,
            smol_fa,
            Mlp::Dense { inter: 1536 },
            true,
        ),
        "smollm2-hybrid" => {
            let t = uniform(
                name,
                576,
                49152,
                30,
                smol_fa.clone(),
                Mlp::Dense { inter: 1536 },
                true,
            );
            layout(&t, name, ".S...S..S......S..F....F......", 64, 9, 64)?
        }
        "minimax-m2" => uniform(name, 3072, 200064, 62, m2_fa, m2_moe, false),
        "m2-hybrid" => {
            let m = uniform(name, 3072, 200064, 62, m2_fa, m2_moe, false);
            m.hybridised(
                name,
                |i| (i + 1) % 4 == 0,
                Mixer::Linear {
                    k_heads: 16,
                    v_heads: 32,
                    dk: 128,
                    dv: 128,
                    conv: 4,
                },
            )
        }
        "kimi-linear-48b" | "kimi-mla-48b" => {
            let mla = Mixer::Mla {
                heads: 32,
                kv_lora: 512,
                rope: 64,
                qk_head: 192,
                v_head: 128,
            };
            let kda = Mixer::Linear {
                k_heads: 32,
                v_heads: 32,
                dk: 128,
                dv: 128,
                conv: 4,
            };
            let full = [4, 8, 12, 16, 20, 24, 27];
            let mut a = uniform(
                name,
                2304,
                163840,
                27,
                mla,
                Mlp::Moe {
                    experts: 256,
                    active: 8,
                    inter: 1024,
                    shared: 1024,
                },
                false,
            );
            // first_k_dense_replace = 1: layer 0 has a dense MLP.
            a.layers[0].mlp = Mlp::Dense { inter: 9216 };
            if name == "kimi-linear-48b" {
                a = a.hybridised(name, |i| full.contains(&(i + 1)), kda);
            }
            a
        }
        "qwen3-next-80b" => {
            let fa = Mixer::Fa {
                heads: 16,
                kv_heads: 2,
                head_dim: 256,
            };
            let m = uniform(
                name,
                2048,
                151936,
                48,
                fa,
                Mlp::Moe {
                    experts: 512,
                    active: 10,
                    inter: 512,
                    shared: 512,
                },
                false,
            );
            m.hybridised(
                name,
                |i| (i + 1) % 4 == 0,
                Mixer::Linear {
                    k_heads: 16,
                    v_heads: 32,
                    dk: 128,
                    dv: 128,
                    conv: 4,
                },
            )
        }
        "jet-nemotron-2b" => {
            let fa = Mixer::Fa {
                heads: 12,
                kv_heads: 2,
                head_dim: 128,
            };
            let mut a = uniform(
                name,
                1536,
                151936,
                28,
                fa.clone(),
                Mlp::Dense { inter: 8960 },
                true,
            );
            for (i, l) in a.layers.iter_mut().enumerate() {
                l.mixer = match i {
                    14 | 19 => fa.clone(),
                    20 | 21 => Mixer::Swa {
                        heads: 12,
                        kv_heads: 2,
                        head_dim: 128,
                        window: 1152,
                    },
                    _ => Mixer::Linear {
                        k_heads: 12,
                        v_heads: 12,
                        dk: 96,
                        dv: 256,
                        conv: 4,
                    },
                };
            }
            a
        }
        "qwen3-1.7b" => uniform(
            name,
            2048,
            151936,
            28,
            Mixer::Fa {
                heads: 16,
                kv_heads: 8,
                head_dim: 128,
            },
            Mlp::Dense { inter: 6144 },
            true,
        ),
        other => bail!(
            "unknown preset '{other}'; presets: {}",
            PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
        ),
    })
}

/// `teacher` with a layout string (one character per layer: F = FA, S = SWA of `window`,
/// `.` = GDN with `heads` heads of `dim`), as `convert` and `bench context` write them.
pub fn layout(
    teacher: &Arch,
    name: &str,
    spec: &str,
    window: usize,
    heads: usize,
    dim: usize,
) -> Result<Arch> {
    if spec.chars().count() != teacher.layers.len() {
        bail!(
            "layout '{spec}' has {} layers; the model has {}",
            spec.chars().count(),
            teacher.layers.len()
        );
    }
    let mut a = teacher.clone();
    a.name = name.into();
    for (l, c) in a.layers.iter_mut().zip(spec.chars()) {
        let Mixer::Fa {
            heads: h,
            kv_heads,
            head_dim,
        } = teacher.layers[0].mixer
        else {
            bail!("layouts apply to an all-FA teacher");
        };
        l.mixer = match c {
            'F' => l.mixer.clone(),
            'S' => Mixer::Swa {
                heads: h,
                kv_heads,
                head_dim,
                window,
            },
            '.' | 'K' => Mixer::Linear {
                k_heads: heads,
                v_heads: heads,
                dk: dim,
                dv: dim,
                conv: 4,
            },
            other => bail!("layout '{spec}': '{other}' is not a layer type (F, S, . or K)"),
        };
    }
    Ok(a)
}

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

    #[test]
    fn presets_have_their_published_structure() {
        let k = preset("kimi-linear-48b").unwrap();
        assert_eq!(k.summary(), "20 linear + 7 mla");
        // 1-based lists: the last layer (27) is MLA.
        assert_eq!(k.layers[26].mixer.kind(), "mla");
        let q = preset("qwen3-next-80b").unwrap();
        assert_eq!(q.summary(), "36 linear + 12 fa");
        assert_eq!(q.layers[3].mixer.kind(), "fa");
        let j = preset("jet-nemotron-2b").unwrap();
        assert_eq!(j.summary(), "24 linear + 2 fa + 2 swa");
        // MiniMax-M2: ~230B total, ~10B active (the model card's figures).
        let m = preset("minimax-m2").unwrap();
        let (t, a) = (
            m.total_params() as f64 / 1e9,
            m.active_params() as f64 / 1e9,
        );
        assert!(
            (200.0..250.0).contains(&t) && (8.0..12.0).contains(&a),
            "{t} {a}"
        );
        // Kimi-Linear-48B-A3B: ~48B total, ~3B active.
        let (t, a) = (
            k.total_params() as f64 / 1e9,
            k.active_params() as f64 / 1e9,
        );
        assert!(
            (40.0..55.0).contains(&t) && (2.0..4.5).contains(&a),
            "{t} {a}"
        );
        // Qwen3-Next-80B-A3B.
        let (t, a) = (
            q.total_params() as f64 / 1e9,
            q.active_params() as f64 / 1e9,
        );
        assert!(
            (70.0..90.0).contains(&t) && (2.0..4.5).contains(&a),
            "{t} {a}"
        );
    }

    #[test]
    fn cache_bytes_match_the_research_notes() {
        // mixers.md: Qwen3-Next FA 24 KiB/token over 12 layers; GDN ≈ 73.7 MiB per sequence.
        let q = preset("qwen3-next-80b").unwrap();
        let fa: usize = q
            .layers
            .iter()
            .filter(|l| l.mixer.kind() == "fa")
            .map(|l| l.mixer.cache_bytes(1, 2))
            .sum();
        assert_eq!(fa, 24 * 1024);
        let lin: usize = q
            .layers
            .iter()
            .filter(|l| l.mixer.kind() == "linear")
            .map(|l| l.mixer.cache_bytes(0, 2))
            .sum();
        assert!((lin as f64 / (1 << 20) as f64 - 73.7).abs() < 0.5, "{lin}");
        // Kimi's 7 MLA layers: 1152 B/token/layer.
        let k = preset("kimi-linear-48b").unwrap();
        let mla: usize = k
            .layers
            .iter()
            .filter(|l| l.mixer.kind() == "mla")
            .map(|l| l.mixer.cache_bytes(1, 2))
            .sum();
        assert_eq!(mla, 7 * 1152);
    }

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
