//! Built-in presets from published configs, and layouts of an all-FA teacher (one
//! character per layer) as `convert` and `bench context` write them.
use crate::arch::{Arch, Layer, Mixer, Mlp};
use anyhow::{bail, Result};

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

/// Qwen3-Next-80B's GDN layer: 16 key heads and 32 value heads of 128.
const QWEN3_NEXT_GDN: Mixer = Mixer::Linear {
    k_heads: 16,
    v_heads: 32,
    dk: 128,
    dv: 128,
    conv: 4,
};

/// Qwen3-Next's 3:1 layout on `m`: every 4th layer keeps its attention, the rest become its
/// GDN (the M2 hybrid is MiniMax-M2 with this layout).
fn three_to_one(m: &Arch, name: &str) -> Arch {
    m.hybridised(name, |i| (i + 1) % 4 == 0, QWEN3_NEXT_GDN)
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
            three_to_one(&m, name)
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
            three_to_one(&m, name)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts total and active parameters (billions) within the given ranges.
    fn params_in(a: &Arch, total: std::ops::Range<f64>, active: std::ops::Range<f64>) {
        let (t, x) = (
            a.total_params() as f64 / 1e9,
            a.active_params() as f64 / 1e9,
        );
        assert!(
            total.contains(&t) && active.contains(&x),
            "{}: {t}B total, {x}B active",
            a.name
        );
    }

    /// One sequence's cache bytes after `n` tokens in the layers of mixer `kind`.
    fn kind_bytes(a: &Arch, kind: &str, n: usize) -> usize {
        a.layers
            .iter()
            .filter(|l| l.mixer.kind() == kind)
            .map(|l| l.mixer.cache_bytes(n, 2))
            .sum()
    }

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
        // The model cards' totals: MiniMax-M2 230B / 10B active, Kimi-Linear 48B / 3B,
        // Qwen3-Next 80B / 3B.
        params_in(&preset("minimax-m2").unwrap(), 200.0..250.0, 8.0..12.0);
        params_in(&k, 40.0..55.0, 2.0..4.5);
        params_in(&q, 70.0..90.0, 2.0..4.5);
    }

    #[test]
    fn cache_bytes_match_the_research_notes() {
        // mixers.md: Qwen3-Next FA 24 KiB/token over 12 layers; GDN ≈ 73.7 MiB per sequence.
        let q = preset("qwen3-next-80b").unwrap();
        assert_eq!(kind_bytes(&q, "fa", 1), 24 * 1024);
        let lin = kind_bytes(&q, "linear", 0) as f64 / (1 << 20) as f64;
        assert!((lin - 73.7).abs() < 0.5, "{lin}");
        // Kimi's 7 MLA layers: 1152 B/token/layer.
        assert_eq!(
            kind_bytes(&preset("kimi-linear-48b").unwrap(), "mla", 1),
            7 * 1152
        );
    }
}
