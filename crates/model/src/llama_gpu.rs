//! The Llama architecture on a GPU: the CPU model's weights (Q/K rows already in the
//! rotate-half layout) dequantised to bf16 on the device, bf16 activations, f32 norms, a bf16
//! KV cache of fixed capacity per sequence, cuBLAS GEMMs and the NVRTC kernels of
//! `tensor::cuda`. Batched: B sequences of T tokens each, all at the same position.
//!
//! Shapes: N = B·T rows; D hidden; H, Hk heads; Dh head dim; F MLP width; V vocabulary.
use crate::llama::{Llama, LlamaConfig};
use anyhow::{bail, Result};
use cudarc::driver::CudaSlice;
use half::bf16;
use tensor::cuda::Gpu;
use tensor::quant::Matrix;

struct GpuBlock {
    attn_norm: CudaSlice<f32>,
    q: CudaSlice<bf16>,
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
    o: CudaSlice<bf16>,
    mlp_norm: CudaSlice<f32>,
    gate: CudaSlice<bf16>,
    up: CudaSlice<bf16>,
    down: CudaSlice<bf16>,
}

pub struct GpuLlama {
    pub gpu: Gpu,
    pub config: LlamaConfig,
    embed: CudaSlice<bf16>,
    head: Option<CudaSlice<bf16>>,
    norm: CudaSlice<f32>,
    inv_freq: CudaSlice<f32>,
    blocks: Vec<GpuBlock>,
}

/// K and V of every layer: [B, S_max, Hk, Dh] bf16 each.
pub struct GpuKvCache {
    k: Vec<CudaSlice<bf16>>,
    v: Vec<CudaSlice<bf16>>,
    pub batch: usize,
    pub capacity: usize,
    pub len: usize,
}

fn to_bf16(m: &Matrix) -> Vec<bf16> {
    m.to_dense()
        .to_f32_vec()
        .iter()
        .map(|&x| bf16::from_f32(x))
        .collect()
}

/// Checks the tokens of a batched forward (B sequences of T tokens after `past` cached ones)
/// and returns T.
pub(crate) fn check_batch(
    tokens: &[u32],
    b: usize,
    past: usize,
    capacity: usize,
    vocab: usize,
) -> Result<usize> {
    let t = tokens.len() / b;
    if t == 0 || tokens.len() != b * t {
        bail!("{} tokens do not fill {b} sequences", tokens.len());
    }
    if past + t > capacity {
        bail!(
            "{} tokens exceed the cache capacity of {capacity}",
            past + t
        );
    }
    if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= vocab) {
        bail!("token id {bad} is outside the vocabulary of {vocab}");
    }
    Ok(t)
}

impl GpuLlama {
    pub fn new(cpu: &Llama, ordinal: usize) -> Result<Self> {
        Self::on(cpu, Gpu::open(ordinal)?)
    }

    /// The model on an opened GPU (e.g. one with its own stream, for concurrent workers).
    pub fn on(cpu: &Llama, gpu: Gpu) -> Result<Self> {
        let c = cpu.config.clone();
        let up = |m: &Matrix| -> Result<CudaSlice<bf16>> { Ok(gpu.upload(&to_bf16(m))?) };
        let mut blocks = vec![];
        for b in &cpu.blocks {
            blocks.push(GpuBlock {
                attn_norm: gpu.upload(&b.attn_norm)?,
                q: up(&b.q)?,
                k: up(&b.k)?,
                v: up(&b.v)?,
                o: up(&b.o)?,
                mlp_norm: gpu.upload(&b.mlp_norm)?,
                gate: up(&b.gate)?,
                up: up(&b.up)?,
                down: up(&b.down)?,
            });
        }
        let inv: Vec<f32> = (0..c.rope_dims / 2)
            .map(|i| c.rope_theta.powf(-2.0 * i as f64 / c.rope_dims as f64) as f32)
            .collect();
        Ok(GpuLlama {
            embed: up(&cpu.embed)?,
            head: cpu.lm_head.as_ref().map(up).transpose()?,
            norm: gpu.upload(&cpu.norm)?,
            inv_freq: gpu.upload(&inv)?,
            blocks,
            config: c,
            gpu,
        })
    }

    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<GpuKvCache> {
        let c = &self.config;
        let n = batch * capacity * c.n_kv_heads * c.head_dim;
        let mut k = vec![];
        let mut v = vec![];
        for _ in 0..c.n_layers {
            k.push(self.gpu.zeros::<bf16>(n)?);
            v.push(self.gpu.zeros::<bf16>(n)?);
        }
        Ok(GpuKvCache {
            k,
            v,
            batch,
            capacity,
            len: 0,
        })
    }

    /// Runs tokens [B, T] after the cache's contents; returns logits [B·T, V] (f32, on the
    /// GPU: in bf16 the top logits of a large vocabulary tie constantly).
    pub fn forward(&self, tokens: &[u32], cache: &mut GpuKvCache) -> Result<CudaSlice<f32>> {
        let c = &self.config;
        let g = &self.gpu;
        let b = cache.batch;
        let past = cache.len;
        let t = check_batch(tokens, b, past, cache.capacity, c.vocab_size)?;
        let (n, d, dh, h, hk, f) = (b * t, c.hidden, c.head_dim, c.n_heads, c.n_kv_heads, c.ffn);
        let mut x = g.zeros::<bf16>(n * d)?;
        g.embedding_bf16(&self.embed, &g.upload(tokens)?, &mut x, n, d)?;
        let mut hbuf = g.zeros::<bf16>(n * d)?;
        let mut q = g.zeros::<bf16>(n * h * dh)?;
        let mut kk = g.zeros::<bf16>(n * hk * dh)?;
        let mut vv = g.zeros::<bf16>(n * hk * dh)?;
        let mut att = g.zeros::<bf16>(n * h * dh)?;
        let mut y = g.zeros::<bf16>(n * d)?;
        let mut gt = g.zeros::<bf16>(n * f)?;
        let mut ut = g.zeros::<bf16>(n * f)?;
        let mut at = g.zeros::<bf16>(n * f)?;
        for (l, bl) in self.blocks.iter().enumerate() {
            g.rmsnorm_bf16(&x, &bl.attn_norm, &mut hbuf, n, d, c.eps)?;
            g.matmul_nt_bf16(&hbuf, &bl.q, &mut q, n, h * dh, d)?;
            g.matmul_nt_bf16(&hbuf, &bl.k, &mut kk, n, hk * dh, d)?;
            g.matmul_nt_bf16(&hbuf, &bl.v, &mut vv, n, hk * dh, d)?;
            g.rope_bf16(&mut q, &self.inv_freq, n, h, dh, c.rope_dims, past, t)?;
            g.rope_bf16(&mut kk, &self.inv_freq, n, hk, dh, c.rope_dims, past, t)?;
            g.kv_append_bf16(&kk, &mut cache.k[l], b, t, hk * dh, cache.capacity, past)?;
            g.kv_append_bf16(&vv, &mut cache.v[l], b, t, hk * dh, cache.capacity, past)?;
            g.attention_bf16(
                &q,
                &cache.k[l],
                &cache.v[l],
                &mut att,
                (b, t, h, hk, dh),
                cache.capacity,
                past,
                0,
            )?;
            g.matmul_nt_bf16(&att, &bl.o, &mut y, n, d, h * dh)?;
            g.add_bf16(&mut x, &y, n * d)?;
            g.rmsnorm_bf16(&x, &bl.mlp_norm, &mut hbuf, n, d, c.eps)?;
            g.matmul_nt_bf16(&hbuf, &bl.gate, &mut gt, n, f, d)?;
            g.matmul_nt_bf16(&hbuf, &bl.up, &mut ut, n, f, d)?;
            g.swiglu_bf16(&gt, &ut, &mut at, n * f)?;
            g.matmul_nt_bf16(&at, &bl.down, &mut y, n, d, f)?;
            g.add_bf16(&mut x, &y, n * d)?;
        }
        cache.len = past + t;
        g.rmsnorm_bf16(&x, &self.norm, &mut hbuf, n, d, c.eps)?;
        let mut logits = g.zeros::<f32>(n * c.vocab_size)?;
        g.matmul_nt_bf16_f32(
            &hbuf,
            self.head.as_ref().unwrap_or(&self.embed),
            &mut logits,
            n,
            c.vocab_size,
            d,
        )?;
        Ok(logits)
    }

    /// Greedy next tokens of each row of logits [rows, V].
    pub fn argmax(&self, logits: &CudaSlice<f32>, rows: usize) -> Result<Vec<u32>> {
        Ok(self.gpu.argmax_rows(logits, rows, self.config.vocab_size)?)
    }

    pub fn logits_to_host(&self, logits: &CudaSlice<f32>) -> Result<Vec<f32>> {
        Ok(self.gpu.download(logits)?)
    }
}
