//! Time of prefill and decode on a calibrated machine profile: a roofline per part (weights
//! streamed once per step, each sequence's keys/values or recurrent state read once, GEMM and
//! attention FLOPs at measured rates) plus a fixed cost per layer and step — kernel launches,
//! which dominate a small model at batch 1 on an H200 (SmolLM2 decodes at ~3.4 ms a token
//! with ~0.1 ms of memory traffic).
use crate::arch::{Arch, Mixer};
use serde::{Deserialize, Serialize};

/// A machine's measured rates (from `hybrid bench` runs; see [`crate::calibrate`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Profile {
    pub device: String,
    /// bf16 GEMM FLOP/s (cuBLAS, 8192³).
    pub gemm_flops: f64,
    /// Bytes/s streaming weights and recurrent states (the GDN decode step at batch 64).
    pub stream_bytes_per_s: f64,
    /// Bytes/s of keys/values read by the decode attention kernel at batch 1.
    pub decode_kv_bytes_per_s: f64,
    /// FLOP/s of the prefill (flash) attention kernel.
    pub flash_flops: f64,
    /// Chunked linear prefill: tokens × heads per second at 128 × 128 state per head.
    pub linear_token_heads_per_s: f64,
    /// Fixed seconds per layer and decode step, by mixer kind (the MLP included):
    /// "attention" (FA, SWA, MLA) and "linear".
    pub layer_overhead_s: std::collections::BTreeMap<String, f64>,
    /// Fixed seconds per layer and prefill chunk, by mixer kind.
    pub prefill_overhead_s: std::collections::BTreeMap<String, f64>,
    /// GPUs the model is spread over (ideal tensor parallelism: rates × N, overheads as one).
    pub gpus: usize,
    /// Memory per GPU, bytes.
    pub memory_bytes: f64,
    /// What each number came from.
    pub sources: Vec<String>,
}

impl Profile {
    fn overhead(&self, m: &Mixer) -> f64 {
        self.layer_overhead_s.get(kind(m)).copied().unwrap_or(0.0)
    }

    fn prefill_overhead(&self, m: &Mixer) -> f64 {
        self.prefill_overhead_s.get(kind(m)).copied().unwrap_or(0.0)
    }

    /// The same machine with `n` GPUs (rates scale, fixed costs do not).
    pub fn with_gpus(&self, n: usize) -> Profile {
        let mut p = self.clone();
        p.gpus = n.max(1);
        p
    }

    fn g(&self) -> f64 {
        self.gpus.max(1) as f64
    }
}

fn kind(m: &Mixer) -> &'static str {
    if matches!(m, Mixer::Linear { .. }) {
        "linear"
    } else {
        "attention"
    }
}

/// Weight bytes read by one decode step of `batch` sequences: dense weights once, and for MoE
/// layers the experts the batch's tokens touch (expected count under uniform routing).
pub fn step_weight_bytes(a: &Arch, batch: usize) -> f64 {
    let d = a.hidden;
    let params: f64 = a
        .layers
        .iter()
        .map(|l| l.mixer.params(d) as f64 + l.mlp.step_params(d, batch))
        .sum();
    (params + (a.vocab * d) as f64) * a.dtype_bytes as f64
}

/// Seconds for one decode step of `batch` sequences, each at `context` tokens.
pub fn decode_step_s(a: &Arch, p: &Profile, batch: usize, context: usize) -> f64 {
    let b = batch as f64;
    let weights = step_weight_bytes(a, batch) / (p.stream_bytes_per_s * p.g());
    let flops = b * 2.0 * a.active_params() as f64 / (p.gemm_flops * p.g());
    let mut t = weights.max(flops);
    for l in &a.layers {
        t += p.overhead(&l.mixer);
        let state = l.mixer.cache_bytes(context, a.dtype_bytes) as f64;
        t += match l.mixer {
            // A recurrent state is read and written once per token.
            Mixer::Linear { .. } => b * 2.0 * state / (p.stream_bytes_per_s * p.g()),
            // The decode kernel's rate was measured at batch 1; a batch gives it more blocks
            // to run, up to the streaming rate.
            _ => b * state / (p.decode_kv_bytes_per_s * b).min(p.stream_bytes_per_s) / p.g(),
        };
    }
    t
}

/// Seconds to prefill `n` tokens after `past` already in the cache, in chunks of `chunk`.
pub fn prefill_s(a: &Arch, p: &Profile, past: usize, n: usize, chunk: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let chunks = n.div_ceil(chunk.max(1)) as f64;
    let (nf, pf) = (n as f64, past as f64);
    // Every expert is touched by a long prefill: weights read once per chunk.
    let weights = chunks * step_weight_bytes(a, n.min(chunk)) / (p.stream_bytes_per_s * p.g());
    let mut t = (nf * 2.0 * a.active_params() as f64 / (p.gemm_flops * p.g())).max(weights);
    // Keys seen, summed over the queries: Σ_i min(past + i + 1, w).
    let keys = |w: f64| -> f64 {
        let m = (w - pf).clamp(0.0, nf);
        let tail = if m < nf { (nf - m) * w } else { 0.0 };
        m * pf + m * (m + 1.0) / 2.0 + tail
    };
    let flash = p.flash_flops * p.g();
    for l in &a.layers {
        t += chunks * p.prefill_overhead(&l.mixer);
        t += match l.mixer {
            Mixer::Fa {
                heads, head_dim, ..
            } => 4.0 * (heads * head_dim) as f64 * keys(f64::INFINITY) / flash,
            Mixer::Swa {
                heads,
                head_dim,
                window,
                ..
            } => 4.0 * (heads * head_dim) as f64 * keys(window as f64) / flash,
            Mixer::Mla {
                heads,
                qk_head,
                v_head,
                ..
            } => 2.0 * (heads * (qk_head + v_head)) as f64 * keys(f64::INFINITY) / flash,
            Mixer::Linear {
                v_heads, dk, dv, ..
            } => {
                nf * v_heads as f64 * (dk * dv) as f64
                    / (128.0 * 128.0)
                    / (p.linear_token_heads_per_s * p.g())
            }
        };
    }
    t
}

/// Seconds to decode `n` tokens of one sequence from context `start` (steps grouped by 256).
pub fn decode_s(a: &Arch, p: &Profile, batch: usize, start: usize, n: usize) -> f64 {
    let mut t = 0.0;
    let mut done = 0;
    while done < n {
        let k = (n - done).min(256);
        t += k as f64 * decode_step_s(a, p, batch, start + done + k / 2);
        done += k;
    }
    t
}

/// Sequences of `context` tokens that fit next to the weights in the profile's memory.
pub fn max_concurrency(a: &Arch, p: &Profile, context: usize) -> usize {
    let free = p.memory_bytes * p.g() - a.total_params() as f64 * a.dtype_bytes as f64;
    if free <= 0.0 {
        return 0;
    }
    (free / a.cache_bytes(context).max(1) as f64) as usize
}
