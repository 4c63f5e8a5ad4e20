//! Decode speed at a given context without running the prefill: the caches are filled as if
//! `ctx` tokens had been run (the time of a step does not depend on the cached values), then
//! single-token steps are timed. Used by `hybrid bench context` and the conversion report.
use super::gpu::GpuHybrid;
use super::HybridModel;
use anyhow::Result;
use std::time::Instant;

/// Decode tokens/s of one sequence at context `ctx` on `device` (median-free: one warm-up
/// step, then `steps` timed steps in a row).
pub fn decode_tokens_per_s(
    m: &HybridModel,
    device: tensor::Device,
    ctx: usize,
    steps: usize,
) -> Result<f64> {
    let tok = [1u32];
    let steps = steps.max(1);
    match device {
        tensor::Device::Cpu => {
            let mut st = m.filled_state(1, ctx);
            m.forward(&tok, 1, &mut st, false)?;
            let t0 = Instant::now();
            for _ in 0..steps {
                m.forward(&tok, 1, &mut st, false)?;
            }
            Ok(steps as f64 / t0.elapsed().as_secs_f64())
        }
        tensor::Device::Cuda(n) => {
            let g = GpuHybrid::new(m, n)?;
            decode_tokens_per_s_gpu(&g, ctx, steps)
        }
    }
}

/// [`decode_tokens_per_s`] on a model already on the GPU.
pub fn decode_tokens_per_s_gpu(g: &GpuHybrid, ctx: usize, steps: usize) -> Result<f64> {
    let tok = [1u32];
    let mut st = g.new_state(1, ctx + steps + 2)?;
    st.len = ctx;
    g.forward(&tok, &mut st)?;
    g.gpu.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..steps {
        g.forward(&tok, &mut st)?;
    }
    g.gpu.synchronize()?;
    Ok(steps as f64 / t0.elapsed().as_secs_f64())
}
