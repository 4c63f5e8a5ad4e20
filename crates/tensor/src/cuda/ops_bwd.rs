//! Launchers of the small backward kernels: RMSNorm's (kernels/rmsnorm.cu), the short causal
//! conv's (kernels/conv_bwd.cu) and the distillation loss with its gradient (kernels/loss.cu).
//! Each checks that its buffers hold what the shapes address. Weight gradients accumulate
//! (`dw +=`, as `tensor::cpu::rms_norm_backward`), deterministically: per-slice partial sums
//! added in a fixed order, no atomics.
use super::{cuda_err, Gpu, CONV_BWD, LOSS, RMSNORM};
use crate::{Error, Result};
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use half::bf16;

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got < want {
        return Err(Error::Msg(format!(
            "{what} holds {got} elements, the shapes need {want}"
        )));
    }
    Ok(())
}

fn linear_cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Threads that fill an H200 a few times over (132 SMs x 2048): the slicing target of the
/// weight-gradient passes.
const FILL_THREADS: usize = 132 * 2048 * 2;

impl Gpu {
    /// Backward of [`Gpu::rmsnorm_f32`]: given x, w and dy [rows, d], writes dx [rows, d] and
    /// adds the weight gradient into dw [d].
    pub fn rmsnorm_bwd_f32(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        self.rmsnorm_bwd("f32", x, w, dy, dx, dw, rows, d, eps)
    }

    /// Backward of [`Gpu::rmsnorm_bf16`]: bf16 activations and dx, f32 weight and dw.
    pub fn rmsnorm_bwd_bf16(
        &self,
        x: &CudaSlice<bf16>,
        w: &CudaSlice<f32>,
        dy: &CudaSlice<bf16>,
        dx: &mut CudaSlice<bf16>,
        dw: &mut CudaSlice<f32>,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        self.rmsnorm_bwd("bf16", x, w, dy, dx, dw, rows, d, eps)
    }

    /// dx (one block of 256 threads a row, saving each row's 1/rms), then dw: column blocks
    /// of 32 x 8 threads over slices of rows, partial sums added in order.
    fn rmsnorm_bwd<T: DeviceRepr>(
        &self,
        ty: &str,
        x: &CudaSlice<T>,
        w: &CudaSlice<f32>,
        dy: &CudaSlice<T>,
        dx: &mut CudaSlice<T>,
        dw: &mut CudaSlice<f32>,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        if rows == 0 || d == 0 {
            return Ok(());
        }
        for (what, len) in [("x", x.len()), ("dy", dy.len()), ("dx", dx.len())] {
            check_len(&format!("rmsnorm backward: {what}"), len, rows * d)?;
        }
        check_len("rmsnorm backward: w", w.len(), d)?;
        check_len("rmsnorm backward: dw", dw.len(), d)?;
        let mut rstd = self.zeros::<f32>(rows)?;
        let di = d as i32;
        let f = self.function(RMSNORM, &format!("rmsnorm_bwd_dx_{ty}"))?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(x)
            .arg(w)
            .arg(dy)
            .arg(dx)
            .arg(&mut rstd)
            .arg(&di)
            .arg(&eps);
        // SAFETY: argument list matches rmsnorm_bwd_dx_*; lengths checked above.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("rmsnorm backward dx launch", e))?;

        let col_blocks = d.div_ceil(32);
        let splits = (FILL_THREADS / (col_blocks * 256)).clamp(1, rows.div_ceil(64));
        let rps = rows.div_ceil(splits);
        let splits = rows.div_ceil(rps);
        let mut part = self.zeros::<f32>(splits * d)?;
        let f = self.function(RMSNORM, &format!("rmsnorm_bwd_dw_{ty}"))?;
        let cfg = LaunchConfig {
            grid_dim: (col_blocks as u32, splits as u32, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        let (ri, rpsi) = (rows as i32, rps as i32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(x)
            .arg(dy)
            .arg(&rstd)
            .arg(&mut part)
            .arg(&ri)
            .arg(&di)
            .arg(&rpsi);
        // SAFETY: argument list matches rmsnorm_bwd_dw_*; part holds splits·d, rstd rows.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("rmsnorm backward dw launch", e))?;

        let f = self.function(RMSNORM, "sum_parts_f32")?;
        let si = splits as i32;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&part).arg(dw).arg(&si).arg(&di);
        // SAFETY: part holds splits·d, dw d (checked).
        unsafe { b.launch(linear_cfg(d)) }.map_err(|e| cuda_err("rmsnorm dw sum launch", e))?;
        Ok(())
    }

    /// Backward of the short causal conv + SiLU (`mixers::conv::backward`: zero history) over
    /// x, dy [b, t, c] f32 with weight [c, kw] (kw ≤ 4): writes dx [b, t, c] and adds into
    /// dw [c, kw]. The pre-activations are recomputed from x.
    pub fn short_conv_bwd_f32(
        &self,
        x: &CudaSlice<f32>,
        weight: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        b: usize,
        t: usize,
        c: usize,
        kw: usize,
    ) -> Result<()> {
        self.short_conv_bwd("f32", x, weight, dy, dx, dw, b, t, c, kw)
    }

    /// [`Gpu::short_conv_bwd_f32`] with bf16 x, dy and dx (f32 weight and dw).
    pub fn short_conv_bwd_bf16(
        &self,
        x: &CudaSlice<bf16>,
        weight: &CudaSlice<f32>,
        dy: &CudaSlice<bf16>,
        dx: &mut CudaSlice<bf16>,
        dw: &mut CudaSlice<f32>,
        b: usize,
        t: usize,
        c: usize,
        kw: usize,
    ) -> Result<()> {
        self.short_conv_bwd("bf16", x, weight, dy, dx, dw, b, t, c, kw)
    }

    /// One thread per (channel, chunk of tokens, sequence); chunks sized so the grid fills the
    /// GPU; partial dw per chunk, added in order.
    fn short_conv_bwd<T: DeviceRepr>(
        &self,
        ty: &str,
        x: &CudaSlice<T>,
        weight: &CudaSlice<f32>,
        dy: &CudaSlice<T>,
        dx: &mut CudaSlice<T>,
        dw: &mut CudaSlice<f32>,
        b: usize,
        t: usize,
        c: usize,
        kw: usize,
    ) -> Result<()> {
        if !(1..=4).contains(&kw) {
            return Err(Error::Msg(format!(
                "short conv backward supports kernel sizes 1 to 4, got {kw}"
            )));
        }
        if b == 0 || t == 0 || c == 0 {
            return Ok(());
        }
        let n = b * t * c;
        for (what, len) in [("x", x.len()), ("dy", dy.len()), ("dx", dx.len())] {
            check_len(&format!("short conv backward: {what}"), len, n)?;
        }
        check_len("short conv backward: weight", weight.len(), c * kw)?;
        check_len("short conv backward: dw", dw.len(), c * kw)?;
        if t > i32::MAX as usize || c > i32::MAX as usize {
            return Err(Error::Msg(format!(
                "short conv backward: T = {t} or C = {c} too large"
            )));
        }
        // At least 16 tokens a chunk (each chunk recomputes kw − 1 extra), at most 65535 chunks.
        let chunks = (FILL_THREADS / (b * c)).clamp(1, t.div_ceil(16)).min(65535);
        let cb = t.div_ceil(chunks);
        let chunks = t.div_ceil(cb);
        let mut part = self.zeros::<f32>(b * chunks * c * kw)?;
        let f = self.function(CONV_BWD, &format!("conv_bwd_{ty}_w{kw}"))?;
        let cfg = LaunchConfig {
            grid_dim: (c.div_ceil(128) as u32, chunks as u32, b as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let (ti, ci, cbi) = (t as i32, c as i32, cb as i32);
        let mut bl = self.stream.launch_builder(&f);
        bl.arg(x)
            .arg(weight)
            .arg(dy)
            .arg(dx)
            .arg(&mut part)
            .arg(&ti)
            .arg(&ci)
            .arg(&cbi);
        // SAFETY: argument list matches conv_bwd_*_w*; lengths checked above, part allocated
        // for the grid's b·chunks·c·kw partial sums.
        unsafe { bl.launch(cfg) }.map_err(|e| cuda_err("short conv backward launch", e))?;

        let f = self.function(CONV_BWD, "conv_bwd_sum")?;
        let (pi, ni) = ((b * chunks) as i32, (c * kw) as i32);
        let mut bl = self.stream.launch_builder(&f);
        bl.arg(&part).arg(dw).arg(&pi).arg(&ni);
        // SAFETY: part holds (b·chunks)·(c·kw), dw c·kw (checked).
        unsafe { bl.launch(linear_cfg(c * kw)) }
            .map_err(|e| cuda_err("short conv dw sum launch", e))?;
        Ok(())
    }

    /// Distillation loss `train::loss::kl_div` on the GPU: student and teacher logits [n, v]
    /// f32 at `temperature`. Writes loss [n] (each row's T²·KL(p_teacher ‖ p_student) / n, so
    /// their sum is kl_div's loss) and dstudent [n, v] = T · (p_student − p_teacher) / n.
    pub fn kl_div_f32(
        &self,
        student: &CudaSlice<f32>,
        teacher: &CudaSlice<f32>,
        loss: &mut CudaSlice<f32>,
        dstudent: &mut CudaSlice<f32>,
        n: usize,
        v: usize,
        temperature: f32,
    ) -> Result<()> {
        if temperature.is_nan() || temperature <= 0.0 {
            return Err(Error::Msg(format!(
                "kl_div: temperature must be positive, got {temperature}"
            )));
        }
        if n == 0 || v == 0 {
            return Ok(());
        }
        for (what, len) in [
            ("student", student.len()),
            ("teacher", teacher.len()),
            ("dstudent", dstudent.len()),
        ] {
            check_len(&format!("kl_div: {what}"), len, n * v)?;
        }
        check_len("kl_div: loss", loss.len(), n)?;
        let f = self.function(LOSS, "kl_div_f32")?;
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (512, 1, 1),
            shared_mem_bytes: 0,
        };
        let vi = v as i32;
        let inv_t = 1.0 / temperature;
        let loss_scale = temperature * temperature / n as f32;
        let grad_scale = temperature / n as f32;
        let mut b = self.stream.launch_builder(&f);
        b.arg(student)
            .arg(teacher)
            .arg(loss)
            .arg(dstudent)
            .arg(&vi)
            .arg(&inv_t)
            .arg(&loss_scale)
            .arg(&grad_scale);
        // SAFETY: argument list matches kl_div_f32; lengths checked above.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("kl_div launch", e))?;
        Ok(())
    }
}
