//! What the cost model knows of a model: per layer its token mixer (FA, MLA, SWA or a linear
//! recurrence) and MLP (dense or MoE, active experts only), plus embeddings and dtype. Built
//! from a preset (published configs) or a Hugging Face / hybrid `config.json`.
use serde::Serialize;

pub use crate::config::from_config;
pub use crate::presets::{layout, preset, PRESETS};

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

    /// Weights a step of `batch` tokens reads: all of a dense MLP; of an MoE layer the router,
    /// the shared expert and the routed experts those tokens touch (expected count under
    /// uniform routing).
    pub fn step_params(&self, d: usize, batch: usize) -> f64 {
        match *self {
            Mlp::Dense { inter } => (3 * d * inter) as f64,
            Mlp::Moe {
                experts,
                active,
                inter,
                shared,
            } => {
                let e = experts as f64;
                let touched = e * (1.0 - (1.0 - active as f64 / e).powi(batch as i32));
                touched * (3 * d * inter) as f64 + (3 * d * shared + d * experts) as f64
            }
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
