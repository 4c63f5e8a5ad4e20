//! Launchers of kernels/gguf.cu: a GGUF model computed in its own quantized blocks with
//! llama.cpp's CPU arithmetic (8-bit activation blocks, integer block dots, f32 elsewhere, f16
//! KV cache). Shapes are the callers' to check; each launcher states them.
use super::{cuda_err, Gpu, GGUF};
use crate::quant::GgmlType;
use crate::{Error, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// GGML's type id of a weight type this path has an integer dot for.
pub fn gguf_type_code(ty: GgmlType) -> Result<i32> {
    match ty {
        GgmlType::Q4_0 => Ok(2),
        GgmlType::Q4_1 => Ok(3),
        GgmlType::Q8_0 => Ok(8),
        other => Err(Error::Msg(format!(
            "{other:?} weights have no quantized GPU path (Q4_0, Q4_1 and Q8_0 do)"
        ))),
    }
}

fn rows_of(n: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn elems(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Activations quantized to 8-bit blocks of 32: values, scales `d` and `s = d · Σq`.
pub struct Q8Act {
    pub qs: CudaSlice<i8>,
    pub d: CudaSlice<f32>,
    pub s: CudaSlice<f32>,
}

impl Q8Act {
    /// Room for `values` activations (a multiple of 32).
    pub fn new(gpu: &Gpu, values: usize) -> Result<Self> {
        Ok(Q8Act {
            qs: gpu.zeros(values)?,
            d: gpu.zeros(values / 32)?,
            s: gpu.zeros(values / 32)?,
        })
    }
}

impl Gpu {
    /// Quantizes x [values] (a multiple of 32) into `q`, as llama.cpp's quantize_row_q8_1.
    pub fn q8_1_quantize(&self, x: &CudaSlice<f32>, q: &mut Q8Act, values: usize) -> Result<()> {
        let f = self.function(GGUF, "q8_1_quantize")?;
        let blocks = (values / 32) as i64;
        let cfg = LaunchConfig {
            grid_dim: ((values / 32).div_ceil(8).max(1) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.stream.launch_builder(&f);
        l.arg(x)
            .arg(&mut q.qs)
            .arg(&mut q.d)
            .arg(&mut q.s)
            .arg(&blocks);
        // SAFETY: x holds `values` f32 and q room for as many (callers).
        unsafe { l.launch(cfg) }.map_err(|e| cuda_err("q8_1 quantize launch", e))?;
        Ok(())
    }

    /// out [t, rows] = x [t, cols] · wᵀ, w raw GGML rows of type `ty_code`, x already
    /// quantized by [`Gpu::q8_1_quantize`].
    pub fn qmatmul_nt(
        &self,
        w: &CudaSlice<u8>,
        ty_code: i32,
        rows: usize,
        cols: usize,
        x: &Q8Act,
        out: &mut CudaSlice<f32>,
        t: usize,
    ) -> Result<()> {
        let f = self.function(GGUF, "qmatmul_nt")?;
        let (r, c) = (rows as i32, cols as i32);
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(16) as u32, t as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.stream.launch_builder(&f);
        l.arg(w)
            .arg(&ty_code)
            .arg(&r)
            .arg(&c)
            .arg(&x.qs)
            .arg(&x.d)
            .arg(&x.s)
            .arg(out);
        // SAFETY: w holds rows GGML rows of cols values, x and out t rows (callers).
        unsafe { l.launch(cfg) }.map_err(|e| cuda_err("qmatmul launch", e))?;
        Ok(())
    }

    /// out [n, cols] = rows `ids` of a quantized table (embedding lookup).
    pub fn dequant_rows(
        &self,
        table: &CudaSlice<u8>,
        ty_code: i32,
        cols: usize,
        ids: &CudaSlice<u32>,
        out: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        let f = self.function(GGUF, "dequant_rows")?;
        let c = cols as i32;
        let mut l = self.stream.launch_builder(&f);
        l.arg(table).arg(&ty_code).arg(&c).arg(ids).arg(out);
        // SAFETY: ids are < the table's rows (checked by the model), out holds n·cols.
        unsafe { l.launch(rows_of(n, 256)) }.map_err(|e| cuda_err("dequant rows launch", e))?;
        Ok(())
    }

    /// RMSNorm of `rows` f32 rows as the CPU computes it (f64 mean of squares).
    pub fn rmsnorm_exact(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        let f = self.function(GGUF, "rmsnorm_exact")?;
        let di = d as i32;
        let mut l = self.stream.launch_builder(&f);
        l.arg(x).arg(w).arg(y).arg(&di).arg(&eps);
        // SAFETY: x and y hold rows·d values, w d (callers).
        unsafe { l.launch(rows_of(rows, 256)) }.map_err(|e| cuda_err("rmsnorm launch", e))?;
        Ok(())
    }

    /// RoPE in place on x [n = B·T, nh, dh] with a cos/sin table [capacity, rot] (cos of the
    /// R/2 pairs, then their sin); row i sits at position past + i % t.
    pub fn rope_table(
        &self,
        x: &mut CudaSlice<f32>,
        table: &CudaSlice<f32>,
        (n, t, nh, dh, rot): (usize, usize, usize, usize, usize),
        past: usize,
    ) -> Result<()> {
        let f = self.function(GGUF, "rope_table")?;
        let (ti, nhi, dhi, ri, pi) = (t as i32, nh as i32, dh as i32, rot as i32, past as i32);
        let mut l = self.stream.launch_builder(&f);
        l.arg(x)
            .arg(table)
            .arg(&ti)
            .arg(&nhi)
            .arg(&dhi)
            .arg(&ri)
            .arg(&pi);
        // SAFETY: the table covers positions up to past + t (the cache's capacity, callers).
        unsafe { l.launch(rows_of(n, 128)) }.map_err(|e| cuda_err("rope launch", e))?;
        Ok(())
    }

    /// Appends x [B, T, width = Hk·dh] to an f16 cache [B, capacity, width] at position
    /// `past`; with `rot` > 0 (keys) each head's dims go to llama.cpp's adjacent-pair layout.
    pub fn kv_append_f16(
        &self,
        x: &CudaSlice<f32>,
        cache: &mut CudaSlice<u16>,
        (b, t, width, dh, rot): (usize, usize, usize, usize, usize),
        capacity: usize,
        past: usize,
    ) -> Result<()> {
        let f = self.function(GGUF, "kv_append_f16")?;
        let (ti, wi, dhi, ri, ci, pi) = (
            t as i32,
            width as i32,
            dh as i32,
            rot as i32,
            capacity as i32,
            past as i32,
        );
        let mut l = self.stream.launch_builder(&f);
        l.arg(x)
            .arg(cache)
            .arg(&ti)
            .arg(&wi)
            .arg(&dhi)
            .arg(&ri)
            .arg(&ci)
            .arg(&pi);
        // SAFETY: past + t <= capacity (callers).
        unsafe { l.launch(rows_of(b * t, 128)) }.map_err(|e| cuda_err("kv append launch", e))?;
        Ok(())
    }

    /// Scratch floats [`Gpu::attention_f16kv`] needs: scores and softmax chunk sums.
    pub fn attention_f16kv_scratch(b: usize, t: usize, h: usize, past: usize) -> usize {
        let s = past + t;
        b * t * h * (s + s.div_ceil(16))
    }

    /// Causal attention of q [B, T, H, dh] (rotate-half layout) over f16 caches [B, capacity,
    /// Hk, dh] holding past + T positions (keys in the adjacent-pair layout of `rot` dims);
    /// out [B, T, H, dh]; scratch as [`Gpu::attention_f16kv_scratch`]. dh <= 256, a
    /// multiple of 16. Summation orders: llama.cpp's batch order for T > 1, its decode order
    /// for T = 1.
    pub fn attention_f16kv(
        &self,
        q: &CudaSlice<f32>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        out: &mut CudaSlice<f32>,
        scratch: &mut CudaSlice<f32>,
        (b, t, h, hk, dh): (usize, usize, usize, usize, usize),
        rot: usize,
        capacity: usize,
        past: usize,
    ) -> Result<()> {
        if dh > 256 || !dh.is_multiple_of(16) {
            return Err(Error::Msg(format!(
                "head dim {dh}: the GGUF GPU path needs a multiple of 16 up to 256"
            )));
        }
        let f = self.function(GGUF, "attention_f16kv")?;
        let scale = 1.0 / (dh as f32).sqrt();
        let (ti, hi, hki, dhi, ri, ci, pi) = (
            t as i32,
            h as i32,
            hk as i32,
            dh as i32,
            rot as i32,
            capacity as i32,
            past as i32,
        );
        let cfg = LaunchConfig {
            grid_dim: ((t * h) as u32, b as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.stream.launch_builder(&f);
        l.arg(q)
            .arg(k)
            .arg(v)
            .arg(out)
            .arg(scratch)
            .arg(&ti)
            .arg(&hi)
            .arg(&hki)
            .arg(&dhi)
            .arg(&ri)
            .arg(&ci)
            .arg(&pi)
            .arg(&scale);
        // SAFETY: shapes as documented above (callers).
        unsafe { l.launch(cfg) }.map_err(|e| cuda_err("attention launch", e))?;
        Ok(())
    }

    /// out = silu(g) · u with ggml's expf.
    pub fn swiglu_exact(
        &self,
        g: &CudaSlice<f32>,
        u: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        let f = self.function(GGUF, "swiglu_exact")?;
        let ni = n as i64;
        let mut l = self.stream.launch_builder(&f);
        l.arg(g).arg(u).arg(out).arg(&ni);
        // SAFETY: all three hold n values (callers).
        unsafe { l.launch(elems(n)) }.map_err(|e| cuda_err("swiglu launch", e))?;
        Ok(())
    }

    /// x += y over n values.
    pub fn add_exact(&self, x: &mut CudaSlice<f32>, y: &CudaSlice<f32>, n: usize) -> Result<()> {
        let f = self.function(GGUF, "add_exact")?;
        let ni = n as i64;
        let mut l = self.stream.launch_builder(&f);
        l.arg(x).arg(y).arg(&ni);
        // SAFETY: both hold n values (callers).
        unsafe { l.launch(elems(n)) }.map_err(|e| cuda_err("add launch", e))?;
        Ok(())
    }
}
