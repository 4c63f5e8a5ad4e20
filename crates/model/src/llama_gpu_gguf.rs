//! The Llama architecture on a GPU with the GGUF file's own quantized weights, computed with
//! llama.cpp's CPU arithmetic (kernels/gguf.cu): 8-bit activation blocks and integer block dots
//! for every linear layer, f32 activations, an f16 KV cache, ggml's expf. It reproduces the
//! CPU forward (which matches llama.cpp bit for bit) in the same summation orders, where the
//! bf16 path ([`crate::llama_gpu::GpuLlama`]: weights dequantised to bf16, bf16 activations)
//! is a slightly different model. Weights stay 4/8-bit on the device.
//!
//! Scope: Q4_0 / Q4_1 / Q8_0 weights (what [`tensor::quant::QMatrix`] keeps quantized);
//! batch-1-sized work (attention walks the keys one thread per head dim; the bf16 path is the
//! fast one for batches and long contexts).
use crate::llama::{Llama, LlamaConfig};
use crate::llama_gpu::check_batch;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::CudaSlice;
use tensor::cpu::Rope;
use tensor::cuda::{gguf_type_code, Gpu, Q8Act};
use tensor::quant::Matrix;

struct QWeight {
    data: CudaSlice<u8>,
    ty: i32,
    rows: usize,
    cols: usize,
}

struct GgufBlock {
    attn_norm: CudaSlice<f32>,
    q: QWeight,
    k: QWeight,
    v: QWeight,
    o: QWeight,
    mlp_norm: CudaSlice<f32>,
    gate: QWeight,
    up: QWeight,
    down: QWeight,
}

pub struct GpuLlamaGguf {
    pub gpu: Gpu,
    pub config: LlamaConfig,
    embed: QWeight,
    head: Option<QWeight>,
    norm: CudaSlice<f32>,
    rope: Rope,
    blocks: Vec<GgufBlock>,
}

/// K and V of every layer, f16 (as raw bits): [B, capacity, Hk, Dh]; and the RoPE table of
/// every position the cache can hold.
pub struct GpuGgufCache {
    k: Vec<CudaSlice<u16>>,
    v: Vec<CudaSlice<u16>>,
    rope: CudaSlice<f32>,
    pub batch: usize,
    pub capacity: usize,
    pub len: usize,
}

impl GpuLlamaGguf {
    /// Why this model cannot take this path (a weight type without a GPU integer dot), if so.
    pub fn unsupported(cpu: &Llama) -> Option<String> {
        let mut all = vec![("token_embd", &cpu.embed)];
        if let Some(h) = &cpu.lm_head {
            all.push(("output", h));
        }
        for b in &cpu.blocks {
            for (n, m) in [
                ("attn_q", &b.q),
                ("attn_k", &b.k),
                ("attn_v", &b.v),
                ("attn_output", &b.o),
                ("ffn_gate", &b.gate),
                ("ffn_up", &b.up),
                ("ffn_down", &b.down),
            ] {
                all.push((n, m));
            }
        }
        all.into_iter().find_map(|(name, m)| match m {
            Matrix::Dense(_) => Some(format!(
                "{name} is not stored as Q4_0, Q4_1 or Q8_0 (the quantized GPU path's types)"
            )),
            Matrix::Quant(q) => gguf_type_code(q.ty).err().map(|e| format!("{name}: {e}")),
        })
    }

    pub fn new(cpu: &Llama, ordinal: usize) -> Result<Self> {
        if let Some(why) = Self::unsupported(cpu) {
            bail!("{why}; use the bf16 GPU path (--gpu-weights bf16)");
        }
        let gpu = Gpu::open(ordinal)?;
        let c = cpu.config.clone();
        if c.head_dim > 256
            || !c.head_dim.is_multiple_of(16)
            || !c.hidden.is_multiple_of(32)
            || !c.ffn.is_multiple_of(32)
        {
            bail!("the quantized GPU path needs head dim a multiple of 16 up to 256 and widths in multiples of 32");
        }
        let up = |m: &Matrix| -> Result<QWeight> {
            match m {
                Matrix::Quant(q) => Ok(QWeight {
                    data: gpu.upload(&q.data)?,
                    ty: gguf_type_code(q.ty)?,
                    rows: q.rows,
                    cols: q.cols,
                }),
                Matrix::Dense(_) => Err(anyhow!("dense weight (checked above)")),
            }
        };
        let mut blocks = vec![];
        for b in &cpu.blocks {
            blocks.push(GgufBlock {
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
        Ok(GpuLlamaGguf {
            embed: up(&cpu.embed)?,
            head: cpu.lm_head.as_ref().map(up).transpose()?,
            norm: gpu.upload(&cpu.norm)?,
            rope: Rope::new(c.head_dim, c.rope_dims, c.rope_theta),
            blocks,
            config: c,
            gpu,
        })
    }

    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<GpuGgufCache> {
        let c = &self.config;
        let n = batch * capacity * c.n_kv_heads * c.head_dim;
        let (mut k, mut v) = (vec![], vec![]);
        for _ in 0..c.n_layers {
            k.push(self.gpu.zeros::<u16>(n)?);
            v.push(self.gpu.zeros::<u16>(n)?);
        }
        // The CPU's own cos/sin (ggml's step-by-step angles), so rotations round alike.
        let mut table = Vec::with_capacity(capacity * c.rope_dims);
        for pos in 0..capacity {
            let (cos, sin) = self.rope.cos_sin(pos);
            table.extend(cos);
            table.extend(sin);
        }
        Ok(GpuGgufCache {
            k,
            v,
            rope: self.gpu.upload(&table)?,
            batch,
            capacity,
            len: 0,
        })
    }

    /// x [n, cols] quantized into `xq`, then out [n, rows] = x · wᵀ.
    fn linear(
        &self,
        x: &CudaSlice<f32>,
        w: &QWeight,
        xq: &mut Q8Act,
        out: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        self.gpu.q8_1_quantize(x, xq, n * w.cols)?;
        self.gpu
            .qmatmul_nt(&w.data, w.ty, w.rows, w.cols, xq, out, n)?;
        Ok(())
    }

    /// Runs tokens [B, T] after the cache's contents; returns logits [B·T, V] f32 on the GPU.
    pub fn forward(&self, tokens: &[u32], cache: &mut GpuGgufCache) -> Result<CudaSlice<f32>> {
        let c = &self.config;
        let g = &self.gpu;
        let b = cache.batch;
        let past = cache.len;
        let t = check_batch(tokens, b, past, cache.capacity, c.vocab_size)?;
        let (n, d, dh, h, hk, f) = (b * t, c.hidden, c.head_dim, c.n_heads, c.n_kv_heads, c.ffn);
        let mut x = g.zeros::<f32>(n * d)?;
        g.dequant_rows(
            &self.embed.data,
            self.embed.ty,
            d,
            &g.upload(tokens)?,
            &mut x,
            n,
        )?;
        let widest = d.max(h * dh).max(f);
        let mut xq = Q8Act::new(g, n * widest)?;
        let mut hbuf = g.zeros::<f32>(n * d)?;
        let mut q = g.zeros::<f32>(n * h * dh)?;
        let mut kk = g.zeros::<f32>(n * hk * dh)?;
        let mut vv = g.zeros::<f32>(n * hk * dh)?;
        let mut att = g.zeros::<f32>(n * h * dh)?;
        let mut scores = g.zeros::<f32>(Gpu::attention_f16kv_scratch(b, t, h, past))?;
        let mut y = g.zeros::<f32>(n * d)?;
        let mut gt = g.zeros::<f32>(n * f)?;
        let mut ut = g.zeros::<f32>(n * f)?;
        let mut at = g.zeros::<f32>(n * f)?;
        for (l, bl) in self.blocks.iter().enumerate() {
            g.rmsnorm_exact(&x, &bl.attn_norm, &mut hbuf, n, d, c.eps)?;
            // One quantization of the normed rows serves q, k and v (as on the CPU).
            g.q8_1_quantize(&hbuf, &mut xq, n * d)?;
            g.qmatmul_nt(&bl.q.data, bl.q.ty, bl.q.rows, d, &xq, &mut q, n)?;
            g.qmatmul_nt(&bl.k.data, bl.k.ty, bl.k.rows, d, &xq, &mut kk, n)?;
            g.qmatmul_nt(&bl.v.data, bl.v.ty, bl.v.rows, d, &xq, &mut vv, n)?;
            g.rope_table(&mut q, &cache.rope, (n, t, h, dh, c.rope_dims), past)?;
            g.rope_table(&mut kk, &cache.rope, (n, t, hk, dh, c.rope_dims), past)?;
            // Keys in llama.cpp's adjacent-pair layout: attention sums head dims in its order.
            let (kd, vd) = ((b, t, hk * dh, dh, c.rope_dims), (b, t, hk * dh, dh, 0));
            g.kv_append_f16(&kk, &mut cache.k[l], kd, cache.capacity, past)?;
            g.kv_append_f16(&vv, &mut cache.v[l], vd, cache.capacity, past)?;
            g.attention_f16kv(
                &q,
                &cache.k[l],
                &cache.v[l],
                &mut att,
                &mut scores,
                (b, t, h, hk, dh),
                c.rope_dims,
                cache.capacity,
                past,
            )?;
            self.linear(&att, &bl.o, &mut xq, &mut y, n)?;
            g.add_exact(&mut x, &y, n * d)?;
            g.rmsnorm_exact(&x, &bl.mlp_norm, &mut hbuf, n, d, c.eps)?;
            g.q8_1_quantize(&hbuf, &mut xq, n * d)?;
            g.qmatmul_nt(&bl.gate.data, bl.gate.ty, f, d, &xq, &mut gt, n)?;
            g.qmatmul_nt(&bl.up.data, bl.up.ty, f, d, &xq, &mut ut, n)?;
            g.swiglu_exact(&gt, &ut, &mut at, n * f)?;
            self.linear(&at, &bl.down, &mut xq, &mut y, n)?;
            g.add_exact(&mut x, &y, n * d)?;
        }
        cache.len = past + t;
        g.rmsnorm_exact(&x, &self.norm, &mut hbuf, n, d, c.eps)?;
        let mut logits = g.zeros::<f32>(n * c.vocab_size)?;
        self.linear(
            &hbuf,
            self.head.as_ref().unwrap_or(&self.embed),
            &mut xq,
            &mut logits,
            n,
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
