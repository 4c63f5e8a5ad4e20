//! Launchers of the small kernels in kernels/elementwise.cu. Shapes are the callers' to check;
//! each launcher states them.
use super::{cuda_err, Gpu, ATTENTION, ELEMENTWISE};
use crate::Result;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

fn linear_cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Gpu {
    /// out[T, D] = table[ids[t], :]
    pub fn embedding_bf16(
        &self,
        table: &CudaSlice<bf16>,
        ids: &CudaSlice<u32>,
        out: &mut CudaSlice<bf16>,
        t: usize,
        d: usize,
    ) -> Result<()> {
        let f = self.function(ELEMENTWISE, "embedding_bf16")?;
        let (di, n) = (d as i32, (t * d) as i64);
        let mut b = self.stream.launch_builder(&f);
        b.arg(table).arg(ids).arg(out).arg(&di).arg(&n);
        // SAFETY: argument list matches the kernel; ids < rows of table (callers).
        unsafe { b.launch(linear_cfg(t * d)) }.map_err(|e| cuda_err("embedding launch", e))?;
        Ok(())
    }

    /// out = silu(gate) ⊙ up, n elements.
    pub fn swiglu_bf16(
        &self,
        gate: &CudaSlice<bf16>,
        up: &CudaSlice<bf16>,
        out: &mut CudaSlice<bf16>,
        n: usize,
    ) -> Result<()> {
        let f = self.function(ELEMENTWISE, "swiglu_bf16")?;
        let ni = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(gate).arg(up).arg(out).arg(&ni);
        // SAFETY: as above.
        unsafe { b.launch(linear_cfg(n)) }.map_err(|e| cuda_err("swiglu launch", e))?;
        Ok(())
    }

    /// Rotate-half RoPE in place on x [T, nh, dh] holding sequences of `seq_t` tokens each;
    /// token t at position pos0 + t % seq_t.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_bf16(
        &self,
        x: &mut CudaSlice<bf16>,
        inv_freq: &CudaSlice<f32>,
        t: usize,
        nh: usize,
        dh: usize,
        rot: usize,
        pos0: usize,
        seq_t: usize,
    ) -> Result<()> {
        let f = self.function(ELEMENTWISE, "rope_bf16")?;
        let (ti, nhi, dhi, roti, p0, st) = (
            t as i32,
            nh as i32,
            dh as i32,
            rot as i32,
            pos0 as i32,
            seq_t.max(1) as i32,
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(x)
            .arg(inv_freq)
            .arg(&ti)
            .arg(&nhi)
            .arg(&dhi)
            .arg(&roti)
            .arg(&p0)
            .arg(&st);
        // SAFETY: as above.
        unsafe { b.launch(linear_cfg(t * nh * rot / 2)) }
            .map_err(|e| cuda_err("rope launch", e))?;
        Ok(())
    }

    /// Per-row cross-entropy over logits [N, V]; targets < 0 are ignored. Writes loss[N]
    /// (each already divided by the count of supervised rows) and dlogits [N, V].
    pub fn cross_entropy_f32(
        &self,
        logits: &CudaSlice<f32>,
        targets: &CudaSlice<i64>,
        loss: &mut CudaSlice<f32>,
        dlogits: &mut CudaSlice<f32>,
        n: usize,
        v: usize,
        count: usize,
    ) -> Result<()> {
        let f = self.function(ELEMENTWISE, "cross_entropy_f32")?;
        let (vi, inv) = (v as i32, 1.0f32 / count.max(1) as f32);
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(logits)
            .arg(targets)
            .arg(loss)
            .arg(dlogits)
            .arg(&vi)
            .arg(&inv);
        // SAFETY: as above.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("cross-entropy launch", e))?;
        Ok(())
    }

    /// One AdamW step (PyTorch semantics) on f32 parameters with f32 moments; `step` >= 1.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_f32(
        &self,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        n: usize,
        lr: f32,
        betas: (f32, f32),
        eps: f32,
        wd: f32,
        step: u64,
    ) -> Result<()> {
        let f = self.function(ELEMENTWISE, "adamw_f32")?;
        let (bc1, bc2) = (
            1.0 - betas.0.powi(step as i32),
            1.0 - betas.1.powi(step as i32),
        );
        let ni = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(p)
            .arg(g)
            .arg(m)
            .arg(v)
            .arg(&ni)
            .arg(&lr)
            .arg(&betas.0)
            .arg(&betas.1)
            .arg(&eps)
            .arg(&wd)
            .arg(&bc1)
            .arg(&bc2);
        // SAFETY: as above.
        unsafe { b.launch(linear_cfg(n)) }.map_err(|e| cuda_err("adamw launch", e))?;
        Ok(())
    }

    /// Short causal conv + SiLU over x [T, C] of one sequence, history hist [W−1, C] (updated),
    /// weight [C, W]; y [T, C].
    #[allow(clippy::too_many_arguments)]
    pub fn short_conv_bf16(
        &self,
        x: &CudaSlice<bf16>,
        hist: &mut CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<bf16>,
        t: usize,
        c: usize,
        kw: usize,
    ) -> Result<()> {
        let f = self.function(ELEMENTWISE, "short_conv_bf16")?;
        let (ti, ci, kwi) = (t as i32, c as i32, kw as i32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(hist).arg(w).arg(y).arg(&ti).arg(&ci).arg(&kwi);
        // SAFETY: as above.
        unsafe { b.launch(linear_cfg(c)) }.map_err(|e| cuda_err("short conv launch", e))?;
        Ok(())
    }

    /// Causal GQA attention of q [B, T, H, D] over the cache [B, S_max, Hk, D] holding
    /// positions 0 .. past+T−1; `window` = 0 for full attention. o: [B, T, H, D].
    pub fn attention_bf16(
        &self,
        q: &CudaSlice<bf16>,
        kc: &CudaSlice<bf16>,
        vc: &CudaSlice<bf16>,
        o: &mut CudaSlice<bf16>,
        dims: (usize, usize, usize, usize, usize),
        s_max: usize,
        past: usize,
        window: usize,
    ) -> Result<()> {
        let (b, t, h, hk, d) = dims;
        if d % 32 != 0 || d > 256 || hk == 0 || h % hk != 0 {
            return Err(crate::Error::Msg(format!("attention_bf16 needs a head dim that is a multiple of 32 up to 256 and H a multiple of Hk; got D={d}, H={h}, Hk={hk}")));
        }
        let f = self.function(ATTENTION, "attention_bf16")?;
        let rows = b * t * h;
        // Keys per split: at least 256 (a block's worth of work), and no more splits than
        // keep about 1024 blocks in flight; a long prefill (many rows) runs unsplit.
        let keys = if window > 0 {
            window.min(past + t)
        } else {
            past + t
        };
        // Split-invariant arithmetic (see `invariant`) bounds the splits by the tokens alone:
        // a split depending on the head count would merge in another order on a tensor-parallel
        // rank, which holds fewer heads.
        let max_splits = if self.split_invariant() {
            (8192 / (b * t)).max(1)
        } else {
            (1024 / rows).max(1)
        };
        let splits = keys.div_ceil(256).clamp(1, max_splits);
        let split_len = keys.div_ceil(splits);
        let part = if splits > 1 {
            Some(self.zeros::<f32>(rows * splits * (d + 2))?)
        } else {
            None
        };
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, splits as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (ti, hi, hki, di, smi, pi, wi, ri, sli) = (
            t as i32,
            h as i32,
            hk as i32,
            d as i32,
            s_max as i32,
            past as i32,
            window as i32,
            rows as i32,
            split_len as i32,
        );
        let scale = (d as f32).powf(-0.5);
        let null = 0u64;
        let mut bl = self.stream.launch_builder(&f);
        bl.arg(q)
            .arg(kc)
            .arg(vc)
            .arg(&*o)
            .arg(&ti)
            .arg(&hi)
            .arg(&hki)
            .arg(&di)
            .arg(&smi)
            .arg(&pi)
            .arg(&wi)
            .arg(&scale)
            .arg(&ri)
            .arg(&sli);
        match &part {
            Some(p) => bl.arg(p),
            None => bl.arg(&null),
        };
        // SAFETY: argument list matches the kernel; the cache holds past + t positions (callers);
        // `part` holds rows × splits × (D + 2) values when there are several splits (else the
        // kernel never reads the null pointer).
        unsafe { bl.launch(cfg) }.map_err(|e| cuda_err("attention launch", e))?;
        if let Some(p) = &part {
            let m = self.function(ATTENTION, "attention_merge")?;
            let (spi, di, ri) = (splits as i32, d as i32, rows as i32);
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (32, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut bl = self.stream.launch_builder(&m);
            bl.arg(p).arg(o).arg(&di).arg(&spi).arg(&ri);
            // SAFETY: part was filled by the launch above for rows × splits; o holds rows × D.
            unsafe { bl.launch(cfg) }.map_err(|e| cuda_err("attention merge launch", e))?;
        }
        Ok(())
    }

    /// Writes src [B, T, row] into cache [B, S_max, row] at positions past .. past+T−1.
    pub fn kv_append_bf16(
        &self,
        src: &CudaSlice<bf16>,
        cache: &mut CudaSlice<bf16>,
        b: usize,
        t: usize,
        row: usize,
        s_max: usize,
        past: usize,
    ) -> Result<()> {
        let f = self.function(ATTENTION, "kv_append_bf16")?;
        let n = b * t * row;
        let (ti, ri, smi, pi, ni) = (t as i32, row as i32, s_max as i32, past as i32, n as i64);
        let mut bl = self.stream.launch_builder(&f);
        bl.arg(src)
            .arg(cache)
            .arg(&ti)
            .arg(&ri)
            .arg(&smi)
            .arg(&pi)
            .arg(&ni);
        // SAFETY: as above; past + t <= s_max (callers).
        unsafe { bl.launch(linear_cfg(n)) }.map_err(|e| cuda_err("kv append launch", e))?;
        Ok(())
    }

    /// y += x over n elements.
    pub fn add_bf16(&self, y: &mut CudaSlice<bf16>, x: &CudaSlice<bf16>, n: usize) -> Result<()> {
        let f = self.function(ATTENTION, "add_bf16")?;
        let ni = n as i64;
        let mut bl = self.stream.launch_builder(&f);
        bl.arg(y).arg(x).arg(&ni);
        // SAFETY: as above.
        unsafe { bl.launch(linear_cfg(n)) }.map_err(|e| cuda_err("add launch", e))?;
        Ok(())
    }

    /// Row-wise argmax of x [rows, n] (first index on ties).
    pub fn argmax_bf16(
        &self,
        x: &CudaSlice<bf16>,
        out: &mut CudaSlice<u32>,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        self.argmax(x, "argmax_bf16", out, rows, n)
    }

    /// Row-wise argmax of f32 rows.
    pub fn argmax_f32(
        &self,
        x: &CudaSlice<f32>,
        out: &mut CudaSlice<u32>,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        self.argmax(x, "argmax_f32", out, rows, n)
    }

    /// Row-wise argmax of f32 rows [rows, n], brought to the host.
    pub fn argmax_rows(&self, x: &CudaSlice<f32>, rows: usize, n: usize) -> Result<Vec<u32>> {
        let mut out = self.zeros::<u32>(rows)?;
        self.argmax_f32(x, &mut out, rows, n)?;
        self.download(&out)
    }

    fn argmax<T: cudarc::driver::DeviceRepr>(
        &self,
        x: &CudaSlice<T>,
        kernel: &str,
        out: &mut CudaSlice<u32>,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        let f = self.function(ATTENTION, kernel)?;
        let ni = n as i32;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut bl = self.stream.launch_builder(&f);
        bl.arg(x).arg(out).arg(&ni);
        // SAFETY: as above.
        unsafe { bl.launch(cfg) }.map_err(|e| cuda_err("argmax launch", e))?;
        Ok(())
    }
}
