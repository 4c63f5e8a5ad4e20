//! `hybrid bench step`: one-token decode time of each mixer at several context lengths
//! (batch 1), to show that linear mixers' step cost is independent of context and FA's grows
//! with it. The cache is filled with random keys/values (FA, SWA) or a random state (linear
//! mixers) standing for a prefill of that length; the timed steps append to it.
use super::bench::median;
use anyhow::{bail, Result};
use clap::Args;
use mixers::attention::{Attention, AttentionConfig};
use mixers::linear_mixer::{LinearConfig, LinearKind, LinearMixer};
use mixers::params::InitRng;
use std::time::Instant;

#[derive(Args, Clone, Debug)]
pub struct StepArgs {
    /// Mixers to time.
    #[arg(long, value_delimiter = ',', default_value = "fa,swa,gdn,kda,gla")]
    pub mixers: Vec<String>,
    /// Context lengths.
    #[arg(long, value_delimiter = ',', default_value = "1024,32768")]
    pub contexts: Vec<usize>,
    #[arg(long, default_value_t = 1024)]
    pub hidden: usize,
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    #[arg(long, default_value_t = 128)]
    pub head_dim: usize,
    #[arg(long, default_value_t = 2048)]
    pub window: usize,
    #[arg(long, default_value_t = 64)]
    pub steps: usize,
}

/// Untimed steps first: page faults and cache warm-up belong to no context length.
const WARMUP: usize = 16;

pub fn run(a: StepArgs) -> Result<()> {
    let mut rng = InitRng::new(1);
    let mut rows = vec![];
    for name in &a.mixers {
        let mut per_ctx = serde_json::Map::new();
        let mut times = vec![];
        for &ctx in &a.contexts {
            let x: Vec<f32> = rng.normals(a.hidden, 1.0);
            let mut samples = vec![];
            match name.as_str() {
                "fa" | "swa" => {
                    let window = (name == "swa").then_some(a.window);
                    let cfg = AttentionConfig {
                        hidden: a.hidden,
                        n_heads: a.heads,
                        n_kv_heads: a.heads,
                        head_dim: a.head_dim,
                        rope_theta: 10000.0,
                        rot_dims: a.head_dim,
                        window,
                        output_gate: false,
                        qkv_bias: false,
                        qk_norm: None,
                        mla: None,
                    };
                    let layer = Attention::init(cfg, &mut rng);
                    let mut st = layer.filled_state(1, ctx);
                    for i in 0..a.steps + WARMUP {
                        let t = Instant::now();
                        std::hint::black_box(layer.forward(&x, 1, 1, Some(&mut st)));
                        if i >= WARMUP {
                            samples.push(t.elapsed().as_secs_f64());
                        }
                    }
                }
                k => {
                    let kind = LinearKind::parse(k).ok_or_else(|| {
                        anyhow::anyhow!("unknown mixer '{k}' (fa, swa, gdn, kda, gla)")
                    })?;
                    let cfg = LinearConfig {
                        kind,
                        hidden: a.hidden,
                        n_heads: a.heads,
                        n_v_heads: a.heads,
                        head_k_dim: a.head_dim,
                        head_v_dim: a.head_dim,
                        conv_size: 4,
                        gate_rank: 16,
                        norm_eps: 1e-5,
                        chunk: 64,
                    };
                    let layer = LinearMixer::init(cfg, &mut rng);
                    let mut st = layer.new_state(1);
                    st.rec = rng.normals(st.rec.len(), 0.1);
                    for i in 0..a.steps + WARMUP {
                        let t = Instant::now();
                        std::hint::black_box(layer.forward(&x, 1, 1, Some(&mut st)));
                        if i >= WARMUP {
                            samples.push(t.elapsed().as_secs_f64());
                        }
                    }
                }
            }
            let us = median(samples) * 1e6;
            times.push(us);
            per_ctx.insert(ctx.to_string(), serde_json::json!(us));
        }
        if times.is_empty() {
            bail!("no contexts given");
        }
        rows.push(serde_json::json!({
            "mixer": name,
            "step_us_by_context": per_ctx,
            "ratio_last_over_first": times[times.len() - 1] / times[0],
        }));
    }
    println!(
        "{}",
        serde_json::json!({
            "bench": "step",
            "batch": 1,
            "hidden": a.hidden,
            "heads": a.heads,
            "head_dim": a.head_dim,
            "swa_window": a.window,
            "threads": tensor::num_threads(),
            "results": rows,
        })
    );
    Ok(())
}
