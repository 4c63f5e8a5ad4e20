//! Launchers of kernels/model_train.cu: the elementwise f32 pieces of whole-model training
//! (SwiGLU forward, residual add, gradient-norm clipping). Each checks its buffers.
use super::train_ops::{check, per_element};
use super::{cuda_err, Gpu, MODEL_TRAIN};
use crate::Result;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

impl Gpu {
    /// act = silu(gate) · up, n elements (f32).
    pub fn swiglu_f32(
        &self,
        gate: &CudaSlice<f32>,
        up: &CudaSlice<f32>,
        act: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        for (what, len) in [("gate", gate.len()), ("up", up.len()), ("act", act.len())] {
            check(&format!("swiglu: {what}"), len, n)?;
        }
        let f = self.function(MODEL_TRAIN, "swiglu_fwd_f32")?;
        let ni = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(gate).arg(up).arg(act).arg(&ni);
        // SAFETY: argument list matches swiglu_fwd_f32; lengths checked above.
        unsafe { b.launch(per_element(n)) }.map_err(|e| cuda_err("swiglu launch", e))?;
        Ok(())
    }

    /// y += x, n elements (f32).
    pub fn add_f32(&self, y: &mut CudaSlice<f32>, x: &CudaSlice<f32>, n: usize) -> Result<()> {
        check("add: y", y.len(), n)?;
        check("add: x", x.len(), n)?;
        let f = self.function(MODEL_TRAIN, "add_f32")?;
        let ni = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(y).arg(x).arg(&ni);
        // SAFETY: argument list matches add_f32; lengths checked above.
        unsafe { b.launch(per_element(n)) }.map_err(|e| cuda_err("add launch", e))?;
        Ok(())
    }

    /// acc[0] += Σ x², over all of x (f32).
    pub fn sumsq_f32(&self, x: &CudaSlice<f32>, acc: &mut CudaSlice<f32>) -> Result<()> {
        check("sum of squares: acc", acc.len(), 1)?;
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let f = self.function(MODEL_TRAIN, "sumsq_f32")?;
        let ni = n as i64;
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(256).min(1024) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(acc).arg(&ni);
        // SAFETY: argument list matches sumsq_f32; the grid strides over x's n elements, acc
        // holds one.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("sum of squares launch", e))?;
        Ok(())
    }

    /// x *= s, over all of x (f32).
    pub fn scale_f32(&self, x: &mut CudaSlice<f32>, s: f32) -> Result<()> {
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let f = self.function(MODEL_TRAIN, "scale_f32")?;
        let ni = n as i64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut *x).arg(&s).arg(&ni);
        // SAFETY: argument list matches scale_f32; n is x's length.
        unsafe { b.launch(per_element(n)) }.map_err(|e| cuda_err("scale launch", e))?;
        Ok(())
    }
}
