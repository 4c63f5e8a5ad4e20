//! Launchers of kernels/hybrid.cu: the hybrid model's small per-layer steps (inference).
//! Shapes are the callers' to check; each launcher states them.
use super::{cuda_err, Gpu, HYBRID};
use crate::Result;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

fn elems(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp per row, 8 rows per block.
fn warp_rows(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(8).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The decay parameterisations of kernels/hybrid.cu `decay_gates`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecayGate {
    /// GDN: one decay per value head.
    PerHead,
    /// KDA: per key channel, A_log per head.
    PerChannel,
    /// GLA: logsigmoid(·)/16 per key channel.
    LogSigmoid,
}

impl Gpu {
    /// Short causal conv (+ SiLU when `silu`) over x [B, T, C] with histories hist
    /// [B, W−1, C] f32 (updated); w [C, W] f32; y [B, T, C].
    pub fn short_conv_batched_bf16(
        &self,
        x: &CudaSlice<bf16>,
        hist: &mut CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<bf16>,
        (b, t, c, kw): (usize, usize, usize, usize),
        silu: bool,
    ) -> Result<()> {
        let f = self.function(HYBRID, "short_conv_batched")?;
        let (bi, ti, ci, kwi, si) = (b as i32, t as i32, c as i32, kw as i32, silu as i32);
        let cfg = LaunchConfig {
            grid_dim: ((t * c).div_ceil(256) as u32, b as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.stream.launch_builder(&f);
        l.arg(x)
            .arg(&*hist)
            .arg(w)
            .arg(y)
            .arg(&bi)
            .arg(&ti)
            .arg(&ci)
            .arg(&kwi)
            .arg(&si);
        // SAFETY: argument list matches the kernel; sizes follow from (b, t, c, kw) (callers).
        unsafe { l.launch(cfg) }.map_err(|e| cuda_err("short conv launch", e))?;
        // Then the histories (same stream: after every read of the old ones).
        self.short_conv_history_bf16(x, hist, (b, t, c, kw))
    }

    /// The conv histories [B, W−1, C] after `t` more inputs x [B, T, C] (rows beyond `t` are
    /// not read): the last W−1 inputs of (hist ++ x), in place.
    pub fn short_conv_history_bf16(
        &self,
        x: &CudaSlice<bf16>,
        hist: &mut CudaSlice<f32>,
        (b, t, c, kw): (usize, usize, usize, usize),
    ) -> Result<()> {
        let (bi, ti, ci, kwi) = (b as i32, t as i32, c as i32, kw as i32);
        let f = self.function(HYBRID, "short_conv_history")?;
        let cfg = LaunchConfig {
            grid_dim: (c.div_ceil(128) as u32, b as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = self.stream.launch_builder(&f);
        l.arg(x).arg(hist).arg(&bi).arg(&ti).arg(&ci).arg(&kwi);
        // SAFETY: as above.
        unsafe { l.launch(cfg) }.map_err(|e| cuda_err("short conv history launch", e))?;
        Ok(())
    }

    /// In place: every row of `dim` values divided by its L2 norm (eps 1e-6 inside the sqrt).
    pub fn l2norm_rows_bf16(&self, x: &mut CudaSlice<bf16>, rows: usize, dim: usize) -> Result<()> {
        let f = self.function(HYBRID, "l2norm_rows_bf16")?;
        let (r, d) = (rows as i64, dim as i32);
        let mut l = self.stream.launch_builder(&f);
        l.arg(x).arg(&r).arg(&d);
        // SAFETY: x holds rows·dim values (callers).
        unsafe { l.launch(warp_rows(rows)) }.map_err(|e| cuda_err("l2norm launch", e))?;
        Ok(())
    }

    /// y = sigmoid(x), n values.
    pub fn sigmoid_to_f32(
        &self,
        x: &CudaSlice<bf16>,
        y: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        let f = self.function(HYBRID, "sigmoid_to_f32")?;
        let ni = n as i64;
        let mut l = self.stream.launch_builder(&f);
        l.arg(x).arg(y).arg(&ni);
        // SAFETY: both hold n values (callers).
        unsafe { l.launch(elems(n)) }.map_err(|e| cuda_err("sigmoid launch", e))?;
        Ok(())
    }

    /// Log decays g [N, P] from projections a [N, P] (see [`DecayGate`]); `bias` [P] is
    /// dt_bias (GDN, KDA) or GLA's projection bias; `a_log` [HV] (unused by GLA); `k` the key
    /// head dim (KDA's channel → head map).
    #[allow(clippy::too_many_arguments)]
    pub fn decay_gates(
        &self,
        a: &CudaSlice<bf16>,
        a_log: &CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        g: &mut CudaSlice<f32>,
        n: usize,
        p: usize,
        k: usize,
        mode: DecayGate,
    ) -> Result<()> {
        let f = self.function(HYBRID, "decay_gates")?;
        let m = match mode {
            DecayGate::PerHead => 0i32,
            DecayGate::PerChannel => 1,
            DecayGate::LogSigmoid => 2,
        };
        let (ni, pi, ki) = (n as i64, p as i32, k as i32);
        let mut l = self.stream.launch_builder(&f);
        l.arg(a)
            .arg(a_log)
            .arg(bias)
            .arg(g)
            .arg(&ni)
            .arg(&pi)
            .arg(&ki)
            .arg(&m);
        // SAFETY: a, g hold n·p values; bias p; a_log p / k (callers).
        unsafe { l.launch(elems(n * p)) }.map_err(|e| cuda_err("decay gates launch", e))?;
        Ok(())
    }

    /// y = rmsnorm(o row) · w ⊙ act(z) per row of v values; act: SiLU, or sigmoid when
    /// `sigmoid`.
    #[allow(clippy::too_many_arguments)]
    pub fn gated_rmsnorm_bf16(
        &self,
        o: &CudaSlice<bf16>,
        z: &CudaSlice<bf16>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<bf16>,
        rows: usize,
        v: usize,
        eps: f32,
        sigmoid: bool,
    ) -> Result<()> {
        let f = self.function(HYBRID, "gated_rmsnorm_bf16")?;
        let (r, vi, a) = (rows as i64, v as i32, sigmoid as i32);
        let mut l = self.stream.launch_builder(&f);
        l.arg(o)
            .arg(z)
            .arg(w)
            .arg(y)
            .arg(&r)
            .arg(&vi)
            .arg(&eps)
            .arg(&a);
        // SAFETY: o, z, y hold rows·v values, w v (callers).
        unsafe { l.launch(warp_rows(rows)) }.map_err(|e| cuda_err("gated rmsnorm launch", e))?;
        Ok(())
    }

    /// Splits qg [rows, 2·dh] (per head: q then gate) into q and gate [rows, dh].
    pub fn split_q_gate(
        &self,
        qg: &CudaSlice<bf16>,
        q: &mut CudaSlice<bf16>,
        gate: &mut CudaSlice<bf16>,
        rows: usize,
        dh: usize,
    ) -> Result<()> {
        let f = self.function(HYBRID, "split_q_gate")?;
        let (r, d) = (rows as i64, dh as i32);
        let mut l = self.stream.launch_builder(&f);
        l.arg(qg).arg(q).arg(gate).arg(&r).arg(&d);
        // SAFETY: sizes as documented (callers).
        unsafe { l.launch(elems(rows * dh)) }.map_err(|e| cuda_err("split gate launch", e))?;
        Ok(())
    }

    /// o ⊙= sigmoid(gate), n values.
    pub fn sigmoid_gate_mul(
        &self,
        o: &mut CudaSlice<bf16>,
        gate: &CudaSlice<bf16>,
        n: usize,
    ) -> Result<()> {
        let f = self.function(HYBRID, "sigmoid_gate_mul")?;
        let ni = n as i64;
        let mut l = self.stream.launch_builder(&f);
        l.arg(o).arg(gate).arg(&ni);
        // SAFETY: both hold n values (callers).
        unsafe { l.launch(elems(n)) }.map_err(|e| cuda_err("gate mul launch", e))?;
        Ok(())
    }

    /// x [n / cols, cols] += bias [cols].
    pub fn add_bias_bf16(
        &self,
        x: &mut CudaSlice<bf16>,
        bias: &CudaSlice<f32>,
        n: usize,
        cols: usize,
    ) -> Result<()> {
        let f = self.function(HYBRID, "add_bias_bf16")?;
        let (ni, c) = (n as i64, cols as i32);
        let mut l = self.stream.launch_builder(&f);
        l.arg(x).arg(bias).arg(&ni).arg(&c);
        // SAFETY: sizes as documented (callers).
        unsafe { l.launch(elems(n)) }.map_err(|e| cuda_err("bias launch", e))?;
        Ok(())
    }
}
