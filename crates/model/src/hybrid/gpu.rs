//! The hybrid model on a GPU, for inference (prefill and decode): the CPU model's f32 weights
//! in bf16 on the device, bf16 activations, f32 norms, gates, decays and recurrent states,
//! cuBLAS GEMMs and the NVRTC kernels of `tensor::cuda`. The CPU model
//! ([`super::HybridModel::forward`]) is the specification; tests/hybrid_gpu.rs compares them.
//!
//! Per layer kind:
//! - attention / SWA: projections, RoPE, a bf16 KV cache of fixed capacity per sequence
//!   (SWA reads only its window; its cache is not trimmed yet), optional sigmoid output gate;
//! - GDN / KDA / GLA: projections, batched short conv + SiLU with f32 histories, L2-normalised
//!   q/k, β, the decay gates, the chunked core (prefill) or the one-token step (decode, delta
//!   rule), gated per-head RMSNorm, output projection.
//!
//! Shapes: B sequences of T tokens each, all at the same position; N = B·T rows.
use super::{tensor_parallel, HybridModel, Mixer};
use anyhow::{bail, Result};
use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use mixers::attention::AttentionConfig;
use mixers::linear_mixer::{LinearConfig, LinearKind};
use mixers::params::Params;
use std::sync::Arc;
use tensor::cuda::{ChunkDims, Collective, DecayGate, FlashDims, Gpu, StepDims};

struct GpuAttention {
    cfg: AttentionConfig,
    q: CudaSlice<bf16>,
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
    o: CudaSlice<bf16>,
    inv_freq: CudaSlice<f32>,
}

struct GpuLinear {
    cfg: LinearConfig,
    q: CudaSlice<bf16>,
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
    /// Depthwise conv weights [C, W] for q, k, v.
    conv: [CudaSlice<f32>; 3],
    /// β projection (delta rule only).
    b: Option<CudaSlice<bf16>>,
    /// Decay projections: GDN `a_proj`; KDA `f_a_proj`, `f_b_proj`; GLA `gk_proj.0`, `gk_proj.1`.
    ga: CudaSlice<bf16>,
    gb: Option<CudaSlice<bf16>>,
    a_log: CudaSlice<f32>,
    /// dt_bias (GDN, KDA) or `gk_proj.1.bias` (GLA).
    g_bias: CudaSlice<f32>,
    /// Output gate: `g_proj` (GDN, GLA) or `g_a_proj`, `g_b_proj` + bias (KDA).
    za: CudaSlice<bf16>,
    zb: Option<(CudaSlice<bf16>, CudaSlice<f32>)>,
    o_norm: CudaSlice<f32>,
    o: CudaSlice<bf16>,
}

enum GpuMixer {
    Attention(Box<GpuAttention>),
    Linear(Box<GpuLinear>),
}

struct GpuMlp {
    norm: CudaSlice<f32>,
    gate: CudaSlice<bf16>,
    up: CudaSlice<bf16>,
    down: CudaSlice<bf16>,
}

struct GpuBlock {
    attn_norm: CudaSlice<f32>,
    mixer: GpuMixer,
    mlp: Option<GpuMlp>,
}

pub struct GpuHybrid {
    pub gpu: Gpu,
    pub config: super::HybridConfig,
    embed: CudaSlice<bf16>,
    head: Option<CudaSlice<bf16>>,
    norm: CudaSlice<f32>,
    blocks: Vec<GpuBlock>,
    /// This rank's communicator when the model is one slice of a tensor-parallel group
    /// ([`super::tensor_parallel`]): the mixers' and MLPs' output projections are summed
    /// over the group.
    tp: Option<Collective>,
    /// Where the MLP blocks this model holds start in its `down_proj`'s K, and its hidden
    /// size last ([`super::tensor_parallel::mlp_unit_starts`]): the units a split-invariant
    /// `down_proj` sums by the tree.
    mlp_starts: Vec<usize>,
}

enum LayerCache {
    /// [B, capacity, Hk, Dh] each; `row` = Hk·Dh.
    Attention {
        k: CudaSlice<bf16>,
        v: CudaSlice<bf16>,
        row: usize,
    },
    /// Recurrent state [B, HV, K, V] f32 and conv histories [B, W−1, C] f32 (q, k, v).
    Linear {
        rec: CudaSlice<f32>,
        conv: [CudaSlice<f32>; 3],
    },
}

/// The q, k, v buffers of a linear layer, collected in a loop.
fn three<T>(v: Vec<T>) -> [T; 3] {
    v.try_into()
        .unwrap_or_else(|_| unreachable!("one buffer each for q, k, v"))
}

/// A linear layer's part of [`GpuLanes`].
pub struct GpuLinearLanes {
    /// The recurrent state after each verified token [T, HV, K, V].
    rec: CudaSlice<f32>,
    /// The conv histories (q, k, v) before the call, and the call's conv inputs [T, C].
    conv_base: [CudaSlice<f32>; 3],
    pre: [CudaSlice<bf16>; 3],
}

/// What [`GpuHybrid::forward_lanes`] keeps for [`GpuHybrid::commit`].
pub struct GpuLanes {
    t: usize,
    layers: Vec<Option<GpuLinearLanes>>,
}

/// Every layer's cache for B sequences.
pub struct GpuHybridState {
    layers: Vec<LayerCache>,
    pub batch: usize,
    pub capacity: usize,
    pub len: usize,
    /// The stream the caches live on (copies of the state run on it).
    stream: Arc<CudaStream>,
}

impl GpuHybridState {
    /// A copy holding the same tokens with room for `capacity` (≥ len) per sequence: a
    /// prefix-cache checkpoint (capacity = len) or a sequence whose cache grows.
    pub fn resized(&self, capacity: usize) -> Result<GpuHybridState> {
        if capacity < self.len {
            bail!(
                "a cache of {} tokens does not fit a capacity of {capacity}",
                self.len
            );
        }
        let s = &self.stream;
        let copy_err = |e| anyhow::anyhow!("copying a GPU cache: {e:?}");
        let mut layers = vec![];
        for l in &self.layers {
            layers.push(match l {
                LayerCache::Attention { k, v, row } => {
                    let row = *row;
                    let (old, new) = (self.capacity * row, capacity * row);
                    let mut out = vec![];
                    for src in [k, v] {
                        let mut dst = s
                            .alloc_zeros::<bf16>((self.batch * new).max(1))
                            .map_err(copy_err)?;
                        for b in 0..self.batch {
                            let n = self.len * row;
                            s.memcpy_dtod(
                                &src.slice(b * old..b * old + n),
                                &mut dst.slice_mut(b * new..b * new + n),
                            )
                            .map_err(copy_err)?;
                        }
                        out.push(dst);
                    }
                    let v = out.pop().expect("two caches");
                    let k = out.pop().expect("two caches");
                    LayerCache::Attention { k, v, row }
                }
                LayerCache::Linear { rec, conv } => LayerCache::Linear {
                    rec: s.clone_dtod(rec).map_err(copy_err)?,
                    conv: [
                        s.clone_dtod(&conv[0]).map_err(copy_err)?,
                        s.clone_dtod(&conv[1]).map_err(copy_err)?,
                        s.clone_dtod(&conv[2]).map_err(copy_err)?,
                    ],
                },
            });
        }
        Ok(GpuHybridState {
            layers,
            batch: self.batch,
            capacity,
            len: self.len,
            stream: s.clone(),
        })
    }

    /// Device bytes each layer's cache holds (allocated, not only filled).
    pub fn layer_bytes(&self) -> Vec<usize> {
        self.layers
            .iter()
            .map(|l| match l {
                LayerCache::Attention { k, v, .. } => (k.len() + v.len()) * 2,
                LayerCache::Linear { rec, conv } => {
                    (rec.len() + conv.iter().map(|c| c.len()).sum::<usize>()) * 4
                }
            })
            .collect()
    }
}

fn bf(gpu: &Gpu, x: &[f32]) -> Result<CudaSlice<bf16>> {
    let h: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    Ok(gpu.upload(&h)?)
}

impl GpuHybrid {
    pub fn new(cpu: &HybridModel, ordinal: usize) -> Result<Self> {
        if cpu.config.moe.is_some() {
            bail!(
                "models with mixture-of-experts MLPs run on the CPU only for now; use --device cpu"
            );
        }
        let gpu = Gpu::open(ordinal)?;
        let c = cpu.config.clone();
        let mut blocks = vec![];
        for bl in &cpu.blocks {
            let p = &bl.params;
            let mixer = match &bl.mixer {
                Mixer::Attention(a) => {
                    let ac = a.cfg.clone();
                    if ac.qkv_bias || ac.qk_norm.is_some() || ac.mla.is_some() {
                        bail!("attention with q/k/v biases, q/k norms or MLA (Qwen2, Qwen3, Qwen3-Next, Kimi-Linear) runs on the CPU only for now; use --device cpu");
                    }
                    if ac.head_dim % 32 != 0 {
                        bail!(
                            "attention layers run on the GPU with head dims that are multiples of 32; this model has {}",
                            ac.head_dim
                        );
                    }
                    let inv: Vec<f32> = (0..ac.rot_dims / 2)
                        .map(|i| ac.rope_theta.powf(-2.0 * i as f64 / ac.rot_dims as f64) as f32)
                        .collect();
                    let w = |n: &str| bf(&gpu, a.params.get(n));
                    GpuMixer::Attention(Box::new(GpuAttention {
                        q: w("q_proj.weight")?,
                        k: w("k_proj.weight")?,
                        v: w("v_proj.weight")?,
                        o: w("o_proj.weight")?,
                        inv_freq: gpu.upload(&inv)?,
                        cfg: ac,
                    }))
                }
                Mixer::Linear(l) => {
                    GpuMixer::Linear(Box::new(linear_layer(&gpu, &l.cfg, &l.params)?))
                }
            };
            let mlp = if c.intermediate_size > 0 {
                Some(GpuMlp {
                    norm: gpu.upload(p.get("post_attention_layernorm.weight"))?,
                    gate: bf(&gpu, p.get("mlp.gate_proj.weight"))?,
                    up: bf(&gpu, p.get("mlp.up_proj.weight"))?,
                    down: bf(&gpu, p.get("mlp.down_proj.weight"))?,
                })
            } else {
                None
            };
            blocks.push(GpuBlock {
                attn_norm: gpu.upload(p.get("input_layernorm.weight"))?,
                mixer,
                mlp,
            });
        }
        Ok(GpuHybrid {
            embed: bf(&gpu, cpu.top.get("model.embed_tokens.weight"))?,
            head: if c.tie_word_embeddings {
                None
            } else {
                Some(bf(&gpu, cpu.top.get("lm_head.weight"))?)
            },
            norm: gpu.upload(cpu.top.get("model.norm.weight"))?,
            blocks,
            mlp_starts: tensor_parallel::mlp_unit_starts(c.intermediate_size, 0, 1),
            config: c,
            gpu,
            tp: None,
        })
    }

    /// Makes this model rank `collective.rank()` of a tensor-parallel group: it must hold that
    /// rank's slice ([`super::tensor_parallel::shard`]) of a model whose MLP has
    /// `whole_intermediate` hidden units, on the collective's GPU.
    pub fn join(&mut self, collective: Collective, whole_intermediate: usize) {
        self.mlp_starts = tensor_parallel::mlp_unit_starts(
            whole_intermediate,
            collective.rank(),
            collective.world(),
        );
        self.tp = Some(collective);
    }

    /// Split-invariant arithmetic ([`tensor::cuda::invariant`]): the same logits, bit for bit,
    /// whole or split over a power-of-two number of ranks (each rank must be told); slower.
    pub fn set_split_invariant(&self, on: bool) {
        self.gpu.set_split_invariant(on);
    }

    /// The tensor-parallel rank (0 when the model is whole).
    pub fn rank(&self) -> usize {
        self.tp.as_ref().map_or(0, |c| c.rank())
    }

    /// Empty caches for `batch` sequences of up to `capacity` tokens.
    pub fn new_state(&self, batch: usize, capacity: usize) -> Result<GpuHybridState> {
        let g = &self.gpu;
        let mut layers = vec![];
        for bl in &self.blocks {
            layers.push(match &bl.mixer {
                GpuMixer::Attention(a) => {
                    let row = a.cfg.n_kv_heads * a.cfg.head_dim;
                    let n = (batch * capacity * row).max(1);
                    LayerCache::Attention {
                        k: g.zeros(n)?,
                        v: g.zeros(n)?,
                        row,
                    }
                }
                GpuMixer::Linear(l) => {
                    let c = &l.cfg;
                    let hist = batch * c.conv_size.saturating_sub(1);
                    LayerCache::Linear {
                        rec: g.zeros(batch * c.n_v_heads * c.head_k_dim * c.head_v_dim)?,
                        conv: [
                            g.zeros(hist * c.n_heads * c.head_k_dim)?,
                            g.zeros(hist * c.n_heads * c.head_k_dim)?,
                            g.zeros(hist * c.n_v_heads * c.head_v_dim)?,
                        ],
                    }
                }
            });
        }
        Ok(GpuHybridState {
            layers,
            batch,
            capacity,
            len: 0,
            stream: g.stream.clone(),
        })
    }

    /// Runs tokens [B, T] after what `state` holds; returns logits [B·T, V] (f32, on the GPU).
    pub fn forward(&self, tokens: &[u32], state: &mut GpuHybridState) -> Result<CudaSlice<f32>> {
        self.forward_impl(tokens, state, None)
    }

    /// Speculative verification of one sequence (batch 1): runs `tokens` (T) after `state` and
    /// returns the logits of every token [T, V] and the lanes [`GpuHybrid::commit`] keeps a
    /// prefix of: per linear layer, the recurrent state after each token (the delta-rule step
    /// writes each token's state to its own lane; the sequence's own state is not touched until
    /// the commit), the conv histories before the call and the call's conv inputs. Attention
    /// caches take all T tokens and are cut back by the commit.
    pub fn forward_lanes(
        &self,
        tokens: &[u32],
        state: &mut GpuHybridState,
    ) -> Result<(CudaSlice<f32>, GpuLanes)> {
        if state.batch != 1 {
            bail!(
                "speculative verification runs one sequence at a time, not {}",
                state.batch
            );
        }
        self.check_lanes()?;
        let mut layers = vec![];
        let logits = self.forward_impl(tokens, state, Some(&mut layers))?;
        Ok((
            logits,
            GpuLanes {
                t: tokens.len(),
                layers,
            },
        ))
    }

    /// Whether every layer can be verified speculatively: the lanes come from the delta-rule
    /// step kernel, so GLA layers (and value head dims not a multiple of 4) cannot.
    pub fn check_lanes(&self) -> Result<()> {
        for (i, bl) in self.blocks.iter().enumerate() {
            if let GpuMixer::Linear(l) = &bl.mixer {
                let c = &l.cfg;
                if c.kind == LinearKind::Gla || c.head_k_dim > 256 || c.head_v_dim % 4 != 0 {
                    bail!(
                        "speculative verification on the GPU needs delta-rule linear layers (GDN, KDA) with value head dims a multiple of 4; layer {i} is {} with value head dim {}",
                        c.kind.name(),
                        c.head_v_dim
                    );
                }
            }
        }
        Ok(())
    }

    /// Keeps the first `keep` (0..=T) tokens of a [`GpuHybrid::forward_lanes`] call: each
    /// linear layer's state becomes lane `keep` (copied; unchanged for 0), its conv histories
    /// the last W−1 inputs before token `keep`, and every cache's length drops to match.
    pub fn commit(&self, state: &mut GpuHybridState, lanes: GpuLanes, keep: usize) -> Result<()> {
        let t = lanes.t;
        if keep > t || state.len < t {
            bail!("cannot keep {keep} of {t} verified tokens");
        }
        let g = &self.gpu;
        let copy_err = |e| anyhow::anyhow!("committing a verified state: {e:?}");
        for ((bl, cache), lane) in self
            .blocks
            .iter()
            .zip(state.layers.iter_mut())
            .zip(lanes.layers)
        {
            let (GpuMixer::Linear(l), LayerCache::Linear { rec, conv }, Some(lane)) =
                (&bl.mixer, cache, lane)
            else {
                continue;
            };
            let n = rec.len();
            if keep > 0 {
                g.stream
                    .memcpy_dtod(&lane.rec.slice((keep - 1) * n..keep * n), rec)
                    .map_err(copy_err)?;
            }
            if keep < t {
                for ((hist, base), pre) in conv.iter_mut().zip(lane.conv_base).zip(&lane.pre) {
                    *hist = base;
                    if keep > 0 {
                        let ch = pre.len() / t;
                        g.short_conv_history_bf16(pre, hist, (1, keep, ch, l.cfg.conv_size))?;
                    }
                }
            }
        }
        state.len = state.len - t + keep;
        Ok(())
    }

    fn forward_impl(
        &self,
        tokens: &[u32],
        state: &mut GpuHybridState,
        mut lanes: Option<&mut Vec<Option<GpuLinearLanes>>>,
    ) -> Result<CudaSlice<f32>> {
        let c = &self.config;
        let g = &self.gpu;
        let b = state.batch;
        let t = tokens.len() / b.max(1);
        if t == 0 || tokens.len() != b * t {
            bail!("{} tokens do not fill {b} sequences", tokens.len());
        }
        if state.len + t > state.capacity {
            bail!(
                "{} tokens exceed the cache capacity of {}",
                state.len + t,
                state.capacity
            );
        }
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            bail!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            );
        }
        let (n, d, f) = (b * t, c.hidden_size, c.intermediate_size);
        let mut x = g.zeros::<bf16>(n * d)?;
        g.embedding_bf16(&self.embed, &g.upload(tokens)?, &mut x, n, d)?;
        let mut h = g.zeros::<bf16>(n * d)?;
        let mut y = g.zeros::<bf16>(n * d)?;
        let past = state.len;
        for (bl, cache) in self.blocks.iter().zip(state.layers.iter_mut()) {
            g.rmsnorm_bf16(&x, &bl.attn_norm, &mut h, n, d, c.rms_norm_eps)?;
            match (&bl.mixer, cache) {
                (GpuMixer::Attention(a), LayerCache::Attention { k, v, .. }) => {
                    let tp = self.tp.as_ref();
                    attention_forward(g, tp, a, &h, &mut y, (b, t), past, state.capacity, k, v)?;
                    if let Some(ls) = lanes.as_deref_mut() {
                        ls.push(None);
                    }
                }
                (GpuMixer::Linear(l), LayerCache::Linear { rec, conv }) => {
                    let (tp, lanes_on) = (self.tp.as_ref(), lanes.is_some());
                    let lane =
                        linear_forward(g, tp, l, &h, &mut y, (b, t), d, rec, conv, lanes_on)?;
                    if let Some(ls) = lanes.as_deref_mut() {
                        ls.push(lane);
                    }
                }
                _ => unreachable!("caches are made from the blocks"),
            }
            g.add_bf16(&mut x, &y, n * d)?;
            if let Some(m) = &bl.mlp {
                g.rmsnorm_bf16(&x, &m.norm, &mut h, n, d, c.rms_norm_eps)?;
                let mut gt = g.zeros::<bf16>(n * f)?;
                let mut ut = g.zeros::<bf16>(n * f)?;
                g.matmul_nt_bf16(&h, &m.gate, &mut gt, n, f, d)?;
                g.matmul_nt_bf16(&h, &m.up, &mut ut, n, f, d)?;
                let mut act = g.zeros::<bf16>(n * f)?;
                g.swiglu_bf16(&gt, &ut, &mut act, n * f)?;
                let units = &self.mlp_starts;
                project_out(g, self.tp.as_ref(), &act, &m.down, &mut y, (n, d, f), units)?;
                g.add_bf16(&mut x, &y, n * d)?;
            }
        }
        state.len = past + t;
        if self.rank() > 0 {
            // Every rank computes the same final hidden states; rank 0's logits are used.
            return Ok(g.zeros::<f32>(1)?);
        }
        g.rmsnorm_bf16(&x, &self.norm, &mut h, n, d, c.rms_norm_eps)?;
        let mut logits = g.zeros::<f32>(n * c.vocab_size)?;
        g.matmul_nt_bf16_f32(
            &h,
            self.head.as_ref().unwrap_or(&self.embed),
            &mut logits,
            n,
            c.vocab_size,
            d,
        )?;
        Ok(logits)
    }
}

fn linear_layer(gpu: &Gpu, c: &LinearConfig, p: &Params) -> Result<GpuLinear> {
    if c.conv_size == 0 {
        bail!("linear layers without a short conv do not run on the GPU yet");
    }
    if c.head_k_dim > 128 || !c.head_v_dim.is_multiple_of(2) {
        bail!(
            "linear layers run on the GPU with key head dims up to 128 and even value head dims; this model has {} and {}",
            c.head_k_dim,
            c.head_v_dim
        );
    }
    let w = |n: &str| bf(gpu, p.get(n));
    let f = |n: &str| -> Result<CudaSlice<f32>> { Ok(gpu.upload(p.get(n))?) };
    let (ga, gb, a_log, g_bias) = match c.kind {
        LinearKind::Gdn => (w("a_proj.weight")?, None, f("A_log")?, f("dt_bias")?),
        LinearKind::Kda => (
            w("f_a_proj.weight")?,
            Some(w("f_b_proj.weight")?),
            f("A_log")?,
            f("dt_bias")?,
        ),
        LinearKind::Gla => (
            w("gk_proj.0.weight")?,
            Some(w("gk_proj.1.weight")?),
            gpu.zeros::<f32>(1)?,
            f("gk_proj.1.bias")?,
        ),
    };
    let (za, zb) = if c.kind == LinearKind::Kda {
        (
            w("g_a_proj.weight")?,
            Some((w("g_b_proj.weight")?, f("g_b_proj.bias")?)),
        )
    } else {
        (w("g_proj.weight")?, None)
    };
    Ok(GpuLinear {
        q: w("q_proj.weight")?,
        k: w("k_proj.weight")?,
        v: w("v_proj.weight")?,
        conv: [
            f("q_conv1d.weight")?,
            f("k_conv1d.weight")?,
            f("v_conv1d.weight")?,
        ],
        b: if c.kind != LinearKind::Gla {
            Some(w("b_proj.weight")?)
        } else {
            None
        },
        ga,
        gb,
        a_log,
        g_bias,
        za,
        zb,
        o_norm: f("o_norm.weight")?,
        o: w("o_proj.weight")?,
        cfg: c.clone(),
    })
}

/// y[n, out] = x·wᵀ for a projection out of heads or hidden units. Alone: one bf16 GEMM. As a
/// tensor-parallel rank, x holds this rank's heads or units: the partial products are summed
/// over the group in f32 and rounded to bf16 once, as the one GEMM over all of them would be.
///
/// Split-invariant: K is cut at `units` (where each head group or MLP block starts, K last),
/// the units' products summed by the fixed tree in f32; a rank's sum is a subtree, so the
/// ranks' sums gathered and added by the same tree are the whole model's bits.
fn project_out(
    g: &Gpu,
    tp: Option<&Collective>,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    y: &mut CudaSlice<bf16>,
    (n, out, k): (usize, usize, usize),
    units: &[usize],
) -> Result<()> {
    if g.split_invariant() {
        let mut part = g.zeros::<f32>(n * out)?;
        g.matmul_units_f32(x, w, &mut part, (n, out, k), units)?;
        match tp {
            None => g.f32_to_bf16(&part, y, n * out)?,
            Some(c) => {
                let mut all = g.zeros::<f32>(c.world() * n * out)?;
                c.all_gather_f32(&part, &mut all)?;
                g.tree_sum_bf16(&all, c.world(), y)?;
            }
        }
        return Ok(());
    }
    match tp {
        None => g.matmul_nt_bf16(x, w, y, n, out, k)?,
        Some(c) => {
            let mut part = g.zeros::<f32>(n * out)?;
            g.matmul_nt_bf16_f32(x, w, &mut part, n, out, k)?;
            c.all_reduce_sum_f32(&mut part)?;
            g.f32_to_bf16(&part, y, n * out)?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn attention_forward(
    g: &Gpu,
    tp: Option<&Collective>,
    a: &GpuAttention,
    h: &CudaSlice<bf16>,
    y: &mut CudaSlice<bf16>,
    (b, t): (usize, usize),
    past: usize,
    capacity: usize,
    kc: &mut CudaSlice<bf16>,
    vc: &mut CudaSlice<bf16>,
) -> Result<()> {
    let c = &a.cfg;
    let (n, d, dh, nh, hk) = (b * t, c.hidden, c.head_dim, c.n_heads, c.n_kv_heads);
    let mut q = g.zeros::<bf16>(n * nh * dh)?;
    let mut gate = None;
    if c.output_gate {
        let mut qg = g.zeros::<bf16>(n * nh * dh * 2)?;
        g.matmul_nt_bf16(h, &a.q, &mut qg, n, 2 * nh * dh, d)?;
        let mut gt = g.zeros::<bf16>(n * nh * dh)?;
        g.split_q_gate(&qg, &mut q, &mut gt, n * nh, dh)?;
        gate = Some(gt);
    } else {
        g.matmul_nt_bf16(h, &a.q, &mut q, n, nh * dh, d)?;
    }
    let mut k = g.zeros::<bf16>(n * hk * dh)?;
    let mut v = g.zeros::<bf16>(n * hk * dh)?;
    g.matmul_nt_bf16(h, &a.k, &mut k, n, hk * dh, d)?;
    g.matmul_nt_bf16(h, &a.v, &mut v, n, hk * dh, d)?;
    g.rope_bf16(&mut q, &a.inv_freq, n, nh, dh, c.rot_dims, past, t)?;
    g.rope_bf16(&mut k, &a.inv_freq, n, hk, dh, c.rot_dims, past, t)?;
    g.kv_append_bf16(&k, kc, b, t, hk * dh, capacity, past)?;
    g.kv_append_bf16(&v, vc, b, t, hk * dh, capacity, past)?;
    let mut o = g.zeros::<bf16>(n * nh * dh)?;
    // A prefill chunk on tensor cores (flash attention over the cached keys, which it reads as
    // [B, past + T, Hk, D]: contiguous when one sequence runs or the cache is exactly full);
    // decode steps and batched prefills with room in their caches use the split-K kernel.
    let flash = t > 1 && (b == 1 || capacity == past + t) && (dh == 64 || dh == 128);
    if flash {
        let mut lse = g.zeros::<f32>(b * nh * t)?;
        let dims = FlashDims {
            b,
            t,
            s: past + t,
            h: nh,
            hk,
            d: dh,
        };
        let scale = (dh as f32).powf(-0.5);
        g.flash_attn_fwd_bf16(&q, kc, vc, &mut o, &mut lse, dims, scale, c.window)?;
    } else {
        g.attention_bf16(
            &q,
            kc,
            vc,
            &mut o,
            (b, t, nh, hk, dh),
            capacity,
            past,
            c.window.unwrap_or(0),
        )?;
    }
    if let Some(gt) = &gate {
        g.sigmoid_gate_mul(&mut o, gt, n * nh * dh)?;
    }
    // Units: the key/value heads' groups of query heads (what tensor parallelism deals out).
    let units: Vec<usize> = (0..=hk).map(|i| i * (nh / hk) * dh).collect();
    project_out(g, tp, &o, &a.o, y, (n, d, nh * dh), &units)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn linear_forward(
    g: &Gpu,
    tp: Option<&Collective>,
    l: &GpuLinear,
    h: &CudaSlice<bf16>,
    y: &mut CudaSlice<bf16>,
    (b, t): (usize, usize),
    d: usize,
    rec: &mut CudaSlice<f32>,
    conv: &mut [CudaSlice<f32>; 3],
    lanes: bool,
) -> Result<Option<GpuLinearLanes>> {
    let c = &l.cfg;
    let n = b * t;
    let delta = c.kind != LinearKind::Gla;
    let step_kernel = delta && c.head_k_dim <= 256 && c.head_v_dim.is_multiple_of(4);
    if lanes && !step_kernel {
        bail!(
            "speculative verification on the GPU needs delta-rule linear layers (GDN, KDA) with value head dims a multiple of 4; this layer is {}",
            c.kind.name()
        );
    }
    let copy_err = |e| anyhow::anyhow!("keeping a verification's conv history: {e:?}");
    let (mut conv_base, mut pres) = (vec![], vec![]);
    let (nh, hv, kd, vd) = (c.n_heads, c.n_v_heads, c.head_k_dim, c.head_v_dim);
    let (ck, cv) = (nh * kd, hv * vd);
    // q, k, v: projection, short conv + SiLU (histories carried in `conv`).
    let mut qkv = vec![];
    for (i, (w, ch)) in [(&l.q, ck), (&l.k, ck), (&l.v, cv)].into_iter().enumerate() {
        let mut pre = g.zeros::<bf16>(n * ch)?;
        g.matmul_nt_bf16(h, w, &mut pre, n, ch, d)?;
        if lanes {
            conv_base.push(g.stream.clone_dtod(&conv[i]).map_err(copy_err)?);
        }
        let mut out = g.zeros::<bf16>(n * ch)?;
        g.short_conv_batched_bf16(
            &pre,
            &mut conv[i],
            &l.conv[i],
            &mut out,
            (b, t, ch, c.conv_size),
            true,
        )?;
        qkv.push(out);
        if lanes {
            pres.push(pre);
        }
    }
    let (mut q, mut k, v) = {
        let mut it = qkv.into_iter();
        (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
    };
    let beta = if delta {
        g.l2norm_rows_bf16(&mut q, n * nh, kd)?;
        g.l2norm_rows_bf16(&mut k, n * nh, kd)?;
        let mut bp = g.zeros::<bf16>(n * hv)?;
        g.matmul_nt_bf16(
            h,
            l.b.as_ref().expect("delta-rule layers have b_proj"),
            &mut bp,
            n,
            hv,
            d,
        )?;
        let mut beta = g.zeros::<f32>(n * hv)?;
        g.sigmoid_to_f32(&bp, &mut beta, n * hv)?;
        Some(beta)
    } else {
        None
    };
    // Decays.
    let (per_head, p) = if c.kind == LinearKind::Gdn {
        (true, hv)
    } else {
        (false, hv * kd)
    };
    let mut a = g.zeros::<bf16>(n * p)?;
    match &l.gb {
        None => g.matmul_nt_bf16(h, &l.ga, &mut a, n, p, d)?,
        Some(gb) => {
            let mut mid = g.zeros::<bf16>(n * c.gate_rank)?;
            g.matmul_nt_bf16(h, &l.ga, &mut mid, n, c.gate_rank, d)?;
            g.matmul_nt_bf16(&mid, gb, &mut a, n, p, c.gate_rank)?;
        }
    }
    let mode = match c.kind {
        LinearKind::Gdn => DecayGate::PerHead,
        LinearKind::Kda => DecayGate::PerChannel,
        LinearKind::Gla => DecayGate::LogSigmoid,
    };
    let mut gd = g.zeros::<f32>(n * p)?;
    g.decay_gates(&a, &l.a_log, &l.g_bias, &mut gd, n, p, kd, mode)?;
    // The recurrence: the fused one-token step for delta-rule decode, else the chunked form.
    let scale = (kd as f32).powf(-0.5);
    let mut o = g.zeros::<bf16>(n * cv)?;
    let sd = StepDims {
        b,
        h: nh,
        hv,
        k: kd,
        v: vd,
    };
    let mut kept = None;
    if lanes {
        // Token by token, as decode steps run; token j's state goes to lane j.
        let mut lane = g.zeros::<f32>(t * rec.len())?;
        let beta = beta.as_ref().expect("delta-rule layers have β");
        for j in 0..t {
            g.gdn_step_lane(
                sd,
                j,
                (&q, &k, &v),
                (&gd, per_head, beta),
                rec,
                &mut lane,
                &mut o,
                scale,
            )?;
        }
        kept = Some(GpuLinearLanes {
            rec: lane,
            conv_base: three(conv_base),
            pre: three(pres),
        });
    } else if t == 1 && step_kernel {
        g.gdn_step(
            sd,
            &q,
            &k,
            &v,
            &gd,
            per_head,
            beta.as_ref().unwrap(),
            rec,
            &mut o,
            scale,
        )?;
    } else {
        let cd = ChunkDims {
            b,
            t,
            h: nh,
            hv,
            k: kd,
            v: vd,
        };
        let mut scratch = g.chunk_linear_scratch(cd)?;
        g.chunk_linear_fwd(
            cd,
            &q,
            &k,
            &v,
            &gd,
            per_head,
            beta.as_ref(),
            scale,
            rec,
            &mut o,
            &mut scratch,
        )?;
    }
    // Output gate and norm.
    let mut z = g.zeros::<bf16>(n * cv)?;
    match &l.zb {
        None => g.matmul_nt_bf16(h, &l.za, &mut z, n, cv, d)?,
        Some((zb, bias)) => {
            let mut mid = g.zeros::<bf16>(n * c.gate_rank)?;
            g.matmul_nt_bf16(h, &l.za, &mut mid, n, c.gate_rank, d)?;
            g.matmul_nt_bf16(&mid, zb, &mut z, n, cv, c.gate_rank)?;
            g.add_bias_bf16(&mut z, bias, n * cv, cv)?;
        }
    }
    let mut yn = g.zeros::<bf16>(n * cv)?;
    g.gated_rmsnorm_bf16(
        &o,
        &z,
        &l.o_norm,
        &mut yn,
        n * hv,
        vd,
        c.norm_eps,
        c.kind == LinearKind::Kda,
    )?;
    // Units: each q/k head with the value heads that read it (what tensor parallelism deals
    // out).
    let units: Vec<usize> = (0..=nh).map(|i| i * cv / nh).collect();
    project_out(g, tp, &yn, &l.o, y, (n, d, cv), &units)?;
    Ok(kept)
}
