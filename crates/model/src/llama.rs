//! The Llama architecture (SmolLM2, TinyLlama, Llama-3 style): pre-norm blocks of
//! grouped-query attention with RoPE and a SwiGLU MLP, RMSNorm, optionally tied embeddings.
//! Mirrors llama.cpp's `llm_build_llama` (and HF's `LlamaForCausalLM`); weights come from GGUF.
//!
//! Shapes: T tokens in this call, S = cache length after it, D hidden, H query heads,
//! Hk key/value heads, Dh head dim, F MLP width, V vocabulary.
use crate::gguf::Gguf;
use anyhow::{anyhow, bail, Result};
use half::f16;
use tensor::cpu::{self, Rope};
use tensor::quant::{Matrix, QMatrix};
use tensor::Tensor;

#[derive(Clone, Debug, serde::Serialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub eps: f32,
    pub rope_theta: f64,
    pub rope_dims: usize,
    pub context_length: usize,
    pub tied_embeddings: bool,
}

impl LlamaConfig {
    /// Bytes of K and V cache per token, all layers, at f32 (what this CPU path stores).
    pub fn kv_bytes_per_token(&self, bytes_per_elem: usize) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim * bytes_per_elem
    }
}

pub(crate) struct Block {
    pub(crate) attn_norm: Vec<f32>,
    pub(crate) q: Matrix,
    pub(crate) k: Matrix,
    pub(crate) v: Matrix,
    pub(crate) o: Matrix,
    pub(crate) mlp_norm: Vec<f32>,
    pub(crate) gate: Matrix,
    pub(crate) up: Matrix,
    pub(crate) down: Matrix,
}

pub struct Llama {
    pub config: LlamaConfig,
    pub(crate) embed: Matrix,
    pub(crate) blocks: Vec<Block>,
    pub(crate) norm: Vec<f32>,
    /// None when the LM head is tied to the embedding.
    pub(crate) lm_head: Option<Matrix>,
    rope: Rope,
}

/// Keys and values of every layer for one sequence: k[l], v[l] are [S, Hk, Dh], in f16 as
/// llama.cpp keeps them by default.
pub struct KvCache {
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Drops everything after the first `n` tokens (e.g. to re-run a shared prompt prefix).
    pub fn truncate(&mut self, n: usize, kv_dim: usize) {
        self.len = self.len.min(n);
        for (k, v) in self.k.iter_mut().zip(&mut self.v) {
            k.truncate(self.len * kv_dim);
            v.truncate(self.len * kv_dim);
        }
    }
}

/// Architectures whose GGUF tensors follow llama.cpp's llama naming and Q/K row permutation.
const LLAMA_ARCHES: &[&str] = &["llama"];

impl Llama {
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g.get_str("general.architecture")?;
        if !LLAMA_ARCHES.contains(&arch) {
            bail!(
                "architecture '{arch}' is not supported (supported: {})",
                LLAMA_ARCHES.join(", ")
            );
        }
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = g.get_u64(&k("embedding_length"))? as usize;
        let n_heads = g.get_u64(&k("attention.head_count"))? as usize;
        let n_kv_heads = g
            .get(&k("attention.head_count_kv"))
            .and_then(|v| v.as_u64())
            .unwrap_or(n_heads as u64) as usize;
        if hidden == 0
            || n_heads == 0
            || n_kv_heads == 0
            || !n_heads.is_multiple_of(n_kv_heads)
            || !hidden.is_multiple_of(n_heads)
        {
            bail!("inconsistent head counts: {n_heads} query heads, {n_kv_heads} key/value heads, width {hidden}");
        }
        let head_dim = g
            .get(&k("attention.key_length"))
            .and_then(|v| v.as_u64())
            .map_or(hidden / n_heads, |v| v as usize);
        let embd = g
            .tensor_info("token_embd.weight")
            .ok_or_else(|| anyhow!("tensor 'token_embd.weight' is missing"))?;
        let vocab_size = embd.dims.get(1).copied().unwrap_or(0);
        let config = LlamaConfig {
            vocab_size,
            hidden,
            n_layers: g.get_u64(&k("block_count"))? as usize,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn: g.get_u64(&k("feed_forward_length"))? as usize,
            eps: g
                .get_f64(&k("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5) as f32,
            rope_theta: g.get_f64(&k("rope.freq_base")).unwrap_or(10000.0),
            rope_dims: g
                .get(&k("rope.dimension_count"))
                .and_then(|v| v.as_u64())
                .map_or(head_dim, |v| v as usize),
            context_length: g.get_u64(&k("context_length")).unwrap_or(2048) as usize,
            tied_embeddings: g.tensor_info("output.weight").is_none(),
        };
        // Q/K rows are un-permuted in pairs (`unpermute_qk`), so heads have an even width.
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            bail!("head dim {head_dim} is not a positive even number");
        }
        if config.rope_dims > head_dim || !config.rope_dims.is_multiple_of(2) {
            bail!(
                "rope dimension count {} does not fit head dim {head_dim}",
                config.rope_dims
            );
        }
        let c = &config;
        // Every layer has tensors, so the file's tensor count bounds what to reserve (the
        // block count is only metadata).
        let mut blocks = Vec::with_capacity(c.n_layers.min(g.tensors.len()));
        for l in 0..c.n_layers {
            let name = |s: &str| format!("blk.{l}.{s}.weight");
            blocks.push(Block {
                attn_norm: vector(g, &name("attn_norm"), c.hidden)?,
                q: unpermute_qk(
                    matrix(g, &name("attn_q"), c.n_heads * head_dim, c.hidden)?,
                    c.n_heads,
                    head_dim,
                ),
                k: unpermute_qk(
                    matrix(g, &name("attn_k"), c.n_kv_heads * head_dim, c.hidden)?,
                    c.n_kv_heads,
                    head_dim,
                ),
                v: matrix(g, &name("attn_v"), c.n_kv_heads * head_dim, c.hidden)?,
                o: matrix(g, &name("attn_output"), c.hidden, c.n_heads * head_dim)?,
                mlp_norm: vector(g, &name("ffn_norm"), c.hidden)?,
                gate: matrix(g, &name("ffn_gate"), c.ffn, c.hidden)?,
                up: matrix(g, &name("ffn_up"), c.ffn, c.hidden)?,
                down: matrix(g, &name("ffn_down"), c.hidden, c.ffn)?,
            });
        }
        let lm_head = if c.tied_embeddings {
            None
        } else {
            Some(matrix(g, "output.weight", c.vocab_size, c.hidden)?)
        };
        Ok(Llama {
            embed: matrix(g, "token_embd.weight", c.vocab_size, c.hidden)?,
            norm: vector(g, "output_norm.weight", c.hidden)?,
            lm_head,
            blocks,
            rope: Rope::new(head_dim, c.rope_dims, c.rope_theta),
            config,
        })
    }

    pub fn new_cache(&self) -> KvCache {
        let n = self.config.n_layers;
        KvCache {
            k: vec![vec![]; n],
            v: vec![vec![]; n],
            len: 0,
        }
    }

    pub fn kv_dim(&self) -> usize {
        self.config.n_kv_heads * self.config.head_dim
    }

    /// Bytes of weights in memory.
    pub fn weight_bytes(&self) -> usize {
        let b = &self.blocks;
        self.embed.bytes()
            + self.lm_head.as_ref().map_or(0, Matrix::bytes)
            + b.iter()
                .map(|b| {
                    [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down]
                        .iter()
                        .map(|m| m.bytes())
                        .sum::<usize>()
                })
                .sum::<usize>()
    }

    /// Parameter count (tied embeddings counted once).
    pub fn n_params(&self) -> usize {
        let c = &self.config;
        let per_layer = 2 * c.hidden
            + c.hidden * c.head_dim * (2 * c.n_heads + 2 * c.n_kv_heads)
            + 3 * c.hidden * c.ffn;
        c.n_layers * per_layer
            + c.hidden
            + c.vocab_size * c.hidden * if c.tied_embeddings { 1 } else { 2 }
    }

    /// Runs `tokens` after what `cache` holds and appends their keys/values to it.
    /// Returns logits [V] of the last token, or [T, V] of every token when `all_logits`.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        self.forward_tapped(tokens, cache, all_logits, &mut |_, _| {})
    }

    /// [`Self::forward`] that shows every intermediate to `tap` under llama.cpp's tensor names
    /// (`attn_norm-3`, `kqv_out-3`, `ffn_swiglu-3`, ...), as llama.cpp's `cb_eval` does: how
    /// `scripts/llamacpp-bisect.py` finds the first op whose bits differ from llama.cpp's.
    pub fn forward_tapped(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        all_logits: bool,
        tap: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let t = tokens.len();
        if t == 0 {
            bail!("forward needs at least one token");
        }
        let pos0 = cache.len;
        if pos0 + t > c.context_length {
            bail!(
                "{} tokens exceed the model's context of {} tokens",
                pos0 + t,
                c.context_length
            );
        }
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            bail!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            );
        }
        let (d, dh) = (c.hidden, c.head_dim);
        // x: [T, D]
        let mut x = vec![0f32; t * d];
        for (row, &id) in x.chunks_exact_mut(d).zip(tokens) {
            self.embed.row_f32(id as usize, row);
        }
        tap("embd", &x);
        let mut h = vec![0f32; t * d];
        for (l, b) in self.blocks.iter().enumerate() {
            cpu::rms_norm(&x, &b.attn_norm, c.eps, &mut h);
            tap(&format!("attn_norm-{l}"), &h);
            let mut q = b.q.forward(&h, t); // [T, H, Dh]
            let mut k = b.k.forward(&h, t); // [T, Hk, Dh]
            let v = b.v.forward(&h, t);
            tap(&format!("Qcur-{l}"), &q);
            tap(&format!("Kcur-{l}"), &k);
            tap(&format!("Vcur-{l}"), &v);
            self.rope.apply(&mut q, c.n_heads, pos0);
            self.rope.apply(&mut k, c.n_kv_heads, pos0);
            tap(&format!("Qcur-{l}#2"), &q);
            tap(&format!("Kcur-{l}#2"), &k);
            // The cache and the q·k sums use llama.cpp's order of head dims (see Rope).
            self.rope.to_adjacent_pairs(&mut q, c.n_heads);
            self.rope.to_adjacent_pairs(&mut k, c.n_kv_heads);
            cache.k[l].extend(k.iter().map(|&x| f16::from_f32(x)));
            cache.v[l].extend(v.iter().map(|&x| f16::from_f32(x)));
            let s = pos0 + t;
            let mut att = vec![0f32; t * c.n_heads * dh];
            cpu::causal_attention_f16kv(
                &q,
                &cache.k[l],
                &cache.v[l],
                t,
                s,
                c.n_heads,
                c.n_kv_heads,
                dh,
                None,
                &mut att,
            );
            tap(&format!("kqv_out-{l}"), &att);
            let o = b.o.forward(&att, t);
            tap(&format!("attn_out-{l}"), &o);
            cpu::add_inplace(&mut x, &o);
            tap(&format!("ffn_inp-{l}"), &x);
            cpu::rms_norm(&x, &b.mlp_norm, c.eps, &mut h);
            tap(&format!("ffn_norm-{l}"), &h);
            let g = b.gate.forward(&h, t);
            let u = b.up.forward(&h, t);
            tap(&format!("ffn_gate-{l}"), &g);
            tap(&format!("ffn_up-{l}"), &u);
            let mut a = vec![0f32; t * c.ffn];
            cpu::swiglu(&g, &u, &mut a);
            tap(&format!("ffn_swiglu-{l}"), &a);
            let down = b.down.forward(&a, t);
            tap(&format!("ffn_out-{l}"), &down);
            cpu::add_inplace(&mut x, &down);
            tap(&format!("l_out-{l}"), &x);
        }
        cache.len = pos0 + t;
        let rows = if all_logits { t } else { 1 };
        let last = &x[(t - rows) * d..];
        let mut xn = vec![0f32; rows * d];
        cpu::rms_norm(last, &self.norm, c.eps, &mut xn);
        tap("result_norm", &xn);
        let logits = self
            .lm_head
            .as_ref()
            .unwrap_or(&self.embed)
            .forward(&xn, rows);
        tap("result_output", &logits);
        Ok(logits)
    }
}

fn vector(g: &Gguf, name: &str, n: usize) -> Result<Vec<f32>> {
    let (v, dims) = g.tensor_f32(name)?;
    if dims != [n] {
        bail!("tensor '{name}' has shape {dims:?}, expected [{n}]");
    }
    Ok(v)
}

/// A [rows, cols] weight (GGUF dims [cols, rows]); Q4_0/Q4_1/Q8_0 stay quantized.
fn matrix(g: &Gguf, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
    let info = g
        .tensor_info(name)
        .ok_or_else(|| anyhow!("tensor '{name}' is missing"))?;
    if info.dims != [cols, rows] {
        bail!(
            "tensor '{name}' has GGUF dims {:?}, expected [{cols}, {rows}]",
            info.dims
        );
    }
    if QMatrix::supports(info.ty) {
        let q = QMatrix::new(info.ty, rows, cols, g.tensor_bytes(info).to_vec())
            .map_err(|e| anyhow!("{name}: {e}"))?;
        return Ok(Matrix::Quant(q));
    }
    let (v, _) = g.tensor_f32(name)?;
    Ok(Matrix::Dense(Tensor::from_vec(v, &[rows, cols])?))
}

/// Undoes llama.cpp's converter permutation of Q/K rows (which serves its adjacent-pair RoPE)
/// so that the rotate-half RoPE of [`Rope`] applies: within each head, GGUF row `2i + j`
/// holds HF row `j * Dh/2 + i`.
fn unpermute_qk(m: Matrix, heads: usize, dh: usize) -> Matrix {
    let half = dh / 2;
    let src_row = |r: usize| {
        let (h, within) = (r / dh, r % dh);
        let (j, i) = (within / half, within % half);
        h * dh + 2 * i + j
    };
    match m {
        Matrix::Quant(q) => {
            let rb = q.row_bytes();
            let mut data = vec![0u8; q.data.len()];
            for (r, out) in data.chunks_exact_mut(rb).enumerate().take(heads * dh) {
                out.copy_from_slice(q.row(src_row(r)));
            }
            Matrix::Quant(QMatrix { data, ..q })
        }
        Matrix::Dense(t) => {
            let cols = t.dim(1);
            let src = t.as_f32().expect("dense f32");
            let mut v = vec![0f32; src.len()];
            for (r, out) in v.chunks_exact_mut(cols).enumerate() {
                let s = src_row(r);
                out.copy_from_slice(&src[s * cols..(s + 1) * cols]);
            }
            Matrix::Dense(Tensor::from_vec(v, &[heads * dh, cols]).expect("same shape"))
        }
    }
}
