//! Tensor parallelism, Megatron-style: each of `world` ranks holds a slice of every layer's
//! heads and of the MLP's hidden units, and the two projections that leave a layer (the
//! mixer's `o_proj`, the MLP's `down_proj`) produce partial sums that an all-reduce adds up.
//!
//! A rank's slice is itself a [`HybridModel`] with fewer heads: projections into heads are cut
//! by rows (column parallel), the projections out of them by columns (row parallel); norms,
//! embeddings and the LM head are replicated. So every device path that runs a model runs a
//! shard unchanged, and the only new step is the sum after the two cut projections.
//!
//! Heads are split in whole groups so that no group is cut: attention by key/value heads (with
//! the query heads that read them), linear mixers by q/k heads (with the value heads that read
//! them, GVA). Counts need not divide evenly (SmolLM2 has 3 key/value heads): rank r takes
//! units `r·n/world .. (r+1)·n/world`.
//!
//! [`forward_simulated`] runs the shards on the CPU with the all-reduce as a plain sum: the
//! specification the GPU ranks (which sum through NCCL) are tested against, and the test of
//! the slicing itself on machines with no GPU.
use super::{Block, HybridModel, LayerState, Mixer};
use anyhow::{bail, Result};
use mixers::attention::Attention;
use mixers::linear_mixer::{LinearKind, LinearMixer};
use mixers::params::{linear, Params};
use tensor::cpu;

/// The units `rank` holds when `n` are split over `world` ranks. For a power-of-two world,
/// the node at depth log2(world) of the tree that halves a range (the left half getting the
/// floor): the tree the split-invariant sums add by ([`tensor::cuda::invariant`]), so that a
/// rank's partial sum is one of its subtrees. That equals `r·n/world .. (r+1)·n/world` for 2
/// and 4 ranks, not always for 8; other worlds take that.
pub fn split(n: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    if !world.is_power_of_two() {
        return rank * n / world..(rank + 1) * n / world;
    }
    let (mut lo, mut hi) = (0, n);
    let mut bit = world >> 1;
    while bit > 0 {
        let mid = lo + (hi - lo) / 2;
        if rank & bit != 0 {
            lo = mid;
        } else {
            hi = mid;
        }
        bit >>= 1;
    }
    lo..hi
}

/// Blocks the MLP's hidden units are dealt out in: a rank holds whole blocks, and the
/// split-invariant `down_proj` sums their partial products by the tree. Fixed by the model
/// (not by the world) so that every split sums the same blocks.
pub const MLP_BLOCKS: usize = 8;

/// The MLP blocks of `f` hidden units: block i is `i·f/B .. (i+1)·f/B`, B = min(8, f).
fn mlp_blocks(f: usize) -> usize {
    f.min(MLP_BLOCKS)
}

/// The hidden units `rank` holds: its blocks ([`split`] of the blocks).
pub fn mlp_split(f: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let nb = mlp_blocks(f);
    let b = split(nb, rank, world);
    b.start * f / nb..b.end * f / nb
}

/// Where rank `rank`'s MLP blocks start within its own hidden units, and its count last:
/// the K units of its `down_proj` (the whole model's: world 1).
pub fn mlp_unit_starts(f: usize, rank: usize, world: usize) -> Vec<usize> {
    let nb = mlp_blocks(f);
    let b = split(nb, rank, world);
    let base = b.start * f / nb;
    (b.start..=b.end).map(|i| i * f / nb - base).collect()
}

/// Whether split-invariant arithmetic can serve `world` ranks: the summation tree is cut
/// evenly only by a power of two.
pub fn check_split_invariant(world: usize) -> Result<()> {
    if !world.is_power_of_two() {
        bail!(
            "split-invariant arithmetic needs a power-of-two number of GPUs (1, 2, 4, 8); got {world}"
        );
    }
    Ok(())
}

/// Whether `model` can be split over `world` ranks; the error names the layer and the count.
pub fn check(model: &HybridModel, world: usize) -> Result<()> {
    if world == 0 {
        bail!("tensor parallelism needs at least one rank");
    }
    if model.config.moe.is_some() {
        bail!("mixture-of-experts models cannot be split for tensor parallelism yet");
    }
    let f = model.config.intermediate_size;
    if f > 0 && mlp_blocks(f) < world {
        bail!(
            "the MLP's {f} hidden units are dealt out in {} blocks, which cannot be split over {world} ranks",
            mlp_blocks(f)
        );
    }
    for (i, bl) in model.blocks.iter().enumerate() {
        let (what, n) = match &bl.mixer {
            Mixer::Attention(a) => {
                if a.cfg.mla.is_some() {
                    bail!("layer {i} is latent attention (MLA), which cannot be split for tensor parallelism yet");
                }
                ("key/value heads", a.cfg.n_kv_heads)
            }
            Mixer::Linear(l) => ("q/k heads", l.cfg.n_heads),
        };
        if n < world {
            bail!(
                "tensor parallelism over {world} ranks needs at least {world} {what} per layer; layer {i} has {n}"
            );
        }
    }
    Ok(())
}

/// Rows `r` of a row-major [rows, cols] parameter.
fn rows(p: &Params, name: &str, r: std::ops::Range<usize>, out: &mut Params) {
    let src = &p.map[name];
    let cols: usize = src.shape[1..].iter().product();
    let mut shape = src.shape.clone();
    shape[0] = r.len();
    out.insert(
        name,
        &shape,
        src.data[r.start * cols..r.end * cols].to_vec(),
    );
}

/// Columns `c` of a row-major [rows, cols] parameter.
fn cols(p: &Params, name: &str, c: std::ops::Range<usize>, out: &mut Params) {
    let src = &p.map[name];
    let n = src.shape[1];
    let data = src
        .data
        .chunks_exact(n)
        .flat_map(|row| row[c.clone()].iter().copied())
        .collect();
    out.insert(name, &[src.shape[0], c.len()], data);
}

fn copy(p: &Params, name: &str, out: &mut Params) {
    let src = &p.map[name];
    out.insert(name, &src.shape, src.data.clone());
}

/// `r` scaled by `k` (a head range in rows of `k` each).
fn times(r: &std::ops::Range<usize>, k: usize) -> std::ops::Range<usize> {
    r.start * k..r.end * k
}

fn shard_attention(a: &Attention, rank: usize, world: usize) -> Attention {
    let c = &a.cfg;
    let group = c.n_heads / c.n_kv_heads;
    let kv = split(c.n_kv_heads, rank, world);
    let q = times(&kv, group);
    let dh = c.head_dim;
    // A gated layer's q_proj holds each head's query and gate rows together.
    let q_rows = dh * if c.output_gate { 2 } else { 1 };
    let p = &a.params;
    let mut s = Params::default();
    rows(p, "q_proj.weight", times(&q, q_rows), &mut s);
    rows(p, "k_proj.weight", times(&kv, dh), &mut s);
    rows(p, "v_proj.weight", times(&kv, dh), &mut s);
    cols(p, "o_proj.weight", times(&q, dh), &mut s);
    if c.qkv_bias {
        rows(p, "q_proj.bias", times(&q, q_rows), &mut s);
        rows(p, "k_proj.bias", times(&kv, dh), &mut s);
        rows(p, "v_proj.bias", times(&kv, dh), &mut s);
    }
    if c.qk_norm.is_some() {
        copy(p, "q_norm.weight", &mut s);
        copy(p, "k_norm.weight", &mut s);
    }
    let mut cfg = c.clone();
    cfg.n_heads = q.len();
    cfg.n_kv_heads = kv.len();
    Attention::new(cfg, s)
}

fn shard_linear(l: &LinearMixer, rank: usize, world: usize) -> LinearMixer {
    let c = &l.cfg;
    let group = c.n_v_heads / c.n_heads;
    let qk = split(c.n_heads, rank, world);
    let vh = times(&qk, group);
    let (kd, vd) = (c.head_k_dim, c.head_v_dim);
    let (qk_ch, v_ch, vk_ch) = (times(&qk, kd), times(&vh, vd), times(&vh, kd));
    let p = &l.params;
    let mut s = Params::default();
    rows(p, "q_proj.weight", qk_ch.clone(), &mut s);
    rows(p, "k_proj.weight", qk_ch.clone(), &mut s);
    rows(p, "v_proj.weight", v_ch.clone(), &mut s);
    cols(p, "o_proj.weight", v_ch.clone(), &mut s);
    if c.conv_size > 0 {
        rows(p, "q_conv1d.weight", qk_ch.clone(), &mut s);
        rows(p, "k_conv1d.weight", qk_ch, &mut s);
        rows(p, "v_conv1d.weight", v_ch.clone(), &mut s);
    }
    match c.kind {
        LinearKind::Gdn => {
            rows(p, "a_proj.weight", vh.clone(), &mut s);
            rows(p, "b_proj.weight", vh.clone(), &mut s);
            rows(p, "g_proj.weight", v_ch, &mut s);
            rows(p, "A_log", vh.clone(), &mut s);
            rows(p, "dt_bias", vh.clone(), &mut s);
        }
        LinearKind::Kda => {
            // The low-rank gates' first factors read the whole input: replicated.
            copy(p, "f_a_proj.weight", &mut s);
            rows(p, "f_b_proj.weight", vk_ch.clone(), &mut s);
            rows(p, "b_proj.weight", vh.clone(), &mut s);
            copy(p, "g_a_proj.weight", &mut s);
            rows(p, "g_b_proj.weight", v_ch.clone(), &mut s);
            rows(p, "g_b_proj.bias", v_ch, &mut s);
            rows(p, "A_log", vh.clone(), &mut s);
            rows(p, "dt_bias", vk_ch, &mut s);
        }
        LinearKind::Gla => {
            copy(p, "gk_proj.0.weight", &mut s);
            rows(p, "gk_proj.1.weight", vk_ch.clone(), &mut s);
            rows(p, "gk_proj.1.bias", vk_ch, &mut s);
            rows(p, "g_proj.weight", v_ch, &mut s);
        }
    }
    copy(p, "o_norm.weight", &mut s);
    let mut cfg = c.clone();
    cfg.n_heads = qk.len();
    cfg.n_v_heads = vh.len();
    LinearMixer::new(cfg, s)
}

/// Rank `rank`'s slice of `model` for tensor parallelism over `world` ranks.
pub fn shard(model: &HybridModel, rank: usize, world: usize) -> Result<HybridModel> {
    check(model, world)?;
    if rank >= world {
        bail!("rank {rank} is outside a world of {world}");
    }
    let f = mlp_split(model.config.intermediate_size, rank, world);
    let blocks = model
        .blocks
        .iter()
        .map(|bl| {
            let mixer = match &bl.mixer {
                Mixer::Attention(a) => Mixer::Attention(shard_attention(a, rank, world)),
                Mixer::Linear(l) => Mixer::Linear(shard_linear(l, rank, world)),
            };
            let p = &bl.params;
            let mut s = Params::default();
            copy(p, "input_layernorm.weight", &mut s);
            if p.contains("mlp.gate_proj.weight") {
                copy(p, "post_attention_layernorm.weight", &mut s);
                rows(p, "mlp.gate_proj.weight", f.clone(), &mut s);
                rows(p, "mlp.up_proj.weight", f.clone(), &mut s);
                cols(p, "mlp.down_proj.weight", f.clone(), &mut s);
            }
            Block { mixer, params: s }
        })
        .collect();
    let mut config = model.config.clone();
    config.intermediate_size = f.len();
    Ok(HybridModel {
        config,
        top: model.top.clone(),
        blocks,
    })
}

/// All `world` slices of `model`.
pub fn shards(model: &HybridModel, world: usize) -> Result<Vec<HybridModel>> {
    (0..world).map(|r| shard(model, r, world)).collect()
}

/// Runs tokens [B, T] through the shards as the ranks of a tensor-parallel group would, the
/// all-reduce being a plain sum in rank order; `states[r]` is rank r's cache. Returns the
/// logits of every token [B·T, V] (every rank holds the replicated head; rank 0's are used).
pub fn forward_simulated(
    shards: &[HybridModel],
    tokens: &[u32],
    b: usize,
    states: &mut [Vec<LayerState>],
) -> Result<Vec<f32>> {
    let Some(first) = shards.first() else {
        bail!("no shards");
    };
    if states.len() != shards.len() {
        bail!("{} states for {} shards", states.len(), shards.len());
    }
    let t = tokens.len() / b.max(1);
    if t == 0 || tokens.len() != b * t {
        bail!("{} tokens do not fill {b} sequences", tokens.len());
    }
    let c = &first.config;
    let d = c.hidden_size;
    let n = b * t;
    let mut x = first.embed(tokens)?;
    for l in 0..first.blocks.len() {
        let h = first.norm(&x, &first.blocks[l], "input_layernorm.weight");
        let mut sum = vec![0f32; n * d];
        for (s, st) in shards.iter().zip(states.iter_mut()) {
            let y = match (&s.blocks[l].mixer, &mut st[l]) {
                (Mixer::Attention(a), LayerState::Attention(st)) => a.forward(&h, b, t, Some(st)).0,
                (Mixer::Linear(m), LayerState::Linear(st)) => m.forward(&h, b, t, Some(st)).0,
                _ => bail!("layer {l}: state kinds follow layer kinds"),
            };
            cpu::add_inplace(&mut sum, &y);
        }
        cpu::add_inplace(&mut x, &sum);
        if first.blocks[l].params.contains("mlp.gate_proj.weight") {
            let h2 = first.norm(&x, &first.blocks[l], "post_attention_layernorm.weight");
            let mut sum = vec![0f32; n * d];
            for s in shards {
                let (p, f) = (&s.blocks[l].params, s.config.intermediate_size);
                let gate = linear(&h2, p.get("mlp.gate_proj.weight"), None, n, f, d);
                let up = linear(&h2, p.get("mlp.up_proj.weight"), None, n, f, d);
                let mut act = vec![0f32; n * f];
                cpu::swiglu(&gate, &up, &mut act);
                let y = linear(&act, p.get("mlp.down_proj.weight"), None, n, d, f);
                cpu::add_inplace(&mut sum, &y);
            }
            cpu::add_inplace(&mut x, &sum);
        }
    }
    Ok(first.head(&x, n).0)
}
