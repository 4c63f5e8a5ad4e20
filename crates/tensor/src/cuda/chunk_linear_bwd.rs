//! Launchers of kernels/chunk_linear_bwd.cu: the backward pass of the chunked GDN / KDA / GLA
//! recurrence (specification: mixers::linear_core::backward), after a forward that kept its
//! chunk-entry states (`ChunkScratch::keep_states`).
//!
//! Three launches: the forward's `chunk_prep` again (the per-chunk operands W, QG, KT, AQK,
//! EL, into buffers of [`ChunkGrads`]: `ChunkScratch`'s own are private to its module), the
//! reverse sequential pass `lbwd_state` (dV' and the exit-state gradient of every chunk, dh0),
//! and the per-chunk `lbwd_chunk` (dq, dk, dv, dg, dβ), which recomputes T, V' in f32.
use super::chunk_linear::PrepBuffers;
use super::{cuda_err, ChunkDims, ChunkScratch, Gpu, CHUNK_LINEAR, CHUNK_LINEAR_BWD};
use crate::{Error, Result};
use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

const CHUNK: usize = 64;
const PAD: usize = 8;
const BVT: usize = 16;
const LV: usize = 17;

/// Gradients of one backward call (all f32) and the backward's own scratch. dq, dk
/// [B, T, H, K]; dv [B, T, HV, V]; dg [B, T, HV] (scalar decays, GDN) or [B, T, HV, K];
/// dbeta [B, T, HV] (left zero in the plain form); dh0 [B, HV, K, V].
pub struct ChunkGrads {
    dims: ChunkDims,
    g_per_head: bool,
    pub dq: CudaSlice<f32>,
    pub dk: CudaSlice<f32>,
    pub dv: CudaSlice<f32>,
    pub dg: CudaSlice<f32>,
    pub dbeta: CudaSlice<f32>,
    pub dh0: CudaSlice<f32>,
    /// The first kernel's outputs, recomputed by the backward.
    prep: PrepBuffers,
    /// Exit-state gradient of every chunk [B, HV, NC, K, V] and dV' [B, T, HV, V].
    ds: CudaSlice<f32>,
    dvp: CudaSlice<f32>,
    /// When set, each launch is followed by a synchronize and its wall time (ms) recorded.
    pub timings: Option<Vec<(&'static str, f64)>>,
}

fn check(d: &ChunkDims) -> Result<()> {
    if d.k == 0 || d.k > 128 || d.v == 0 || !d.v.is_multiple_of(16) {
        return Err(Error::Msg(format!(
            "the chunked linear backward takes key head dims 1..=128 and value head dims that are multiples of 16; got k={} v={}",
            d.k, d.v
        )));
    }
    if d.h == 0 || !d.hv.is_multiple_of(d.h) || d.t == 0 || d.b == 0 {
        return Err(Error::Msg(format!(
            "value heads must be a multiple of key heads and B, T nonzero; got {d:?}"
        )));
    }
    Ok(())
}

fn shared(f: &CudaFunction, bytes: usize) -> Result<()> {
    f.set_attribute(
        CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .map_err(|e| cuda_err("shared memory attribute", e))?;
    f.set_attribute(
        CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
        100,
    )
    .map_err(|e| cuda_err("shared memory carveout", e))
}

impl ChunkGrads {
    fn lap(&mut self, gpu: &Gpu, name: &'static str, since: std::time::Instant) -> Result<()> {
        if let Some(t) = self.timings.as_mut() {
            gpu.synchronize()?;
            t.push((name, since.elapsed().as_secs_f64() * 1e3));
        }
        Ok(())
    }
}

impl Gpu {
    /// Gradient buffers (and backward scratch) for [`Gpu::chunk_linear_bwd`] at these shapes.
    pub fn chunk_linear_grads(&self, d: ChunkDims, g_per_head: bool) -> Result<ChunkGrads> {
        check(&d)?;
        let blocks = d.b * d.hv * d.chunks();
        let g_len = d.b * d.t * d.hv * if g_per_head { 1 } else { d.k };
        Ok(ChunkGrads {
            dims: d,
            g_per_head,
            dq: self.zeros(d.b * d.t * d.h * d.k)?,
            dk: self.zeros(d.b * d.t * d.h * d.k)?,
            dv: self.zeros(d.b * d.t * d.hv * d.v)?,
            dg: self.zeros(g_len)?,
            dbeta: self.zeros(d.b * d.t * d.hv)?,
            dh0: self.zeros(d.b * d.hv * d.k * d.v)?,
            prep: PrepBuffers::new(self, &d)?,
            ds: self.zeros(blocks * d.k * d.v)?,
            dvp: self.zeros(d.b * d.t * d.hv * d.v)?,
            timings: None,
        })
    }

    /// Backward of [`Gpu::chunk_linear_fwd`]: given the output gradient `do_` [B, T, HV, V]
    /// and optionally the final state's gradient `dht` [B, HV, K, V], writes every gradient
    /// into `grads`. `scratch` is the forward's, run with `keep_states` on the same inputs and
    /// initial state.
    #[allow(clippy::too_many_arguments)]
    pub fn chunk_linear_bwd(
        &self,
        d: ChunkDims,
        q: &CudaSlice<bf16>,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
        g: &CudaSlice<f32>,
        g_per_head: bool,
        beta: Option<&CudaSlice<f32>>,
        scale: f32,
        scratch: &ChunkScratch,
        do_: &CudaSlice<bf16>,
        dht: Option<&CudaSlice<f32>>,
        grads: &mut ChunkGrads,
    ) -> Result<()> {
        check(&d)?;
        if scratch.dims() != d || grads.dims != d || grads.g_per_head != g_per_head {
            return Err(Error::Msg(format!(
                "chunk_linear_bwd: scratch ({:?}) or grads ({:?}, per-head decay {}) were made for other shapes than {d:?}",
                scratch.dims(),
                grads.dims,
                grads.g_per_head
            )));
        }
        let Some(cs) = scratch.chunk_states.as_ref() else {
            return Err(Error::Msg(
                "chunk_linear_bwd needs a forward run with keep_states (the chunk-entry states)"
                    .into(),
            ));
        };
        let qk_len = d.b * d.t * d.h * d.k;
        let v_len = d.b * d.t * d.hv * d.v;
        let g_len = d.b * d.t * d.hv * if g_per_head { 1 } else { d.k };
        let s_len = d.b * d.hv * d.k * d.v;
        let sizes = [
            ("q", q.len(), qk_len),
            ("k", k.len(), qk_len),
            ("v", v.len(), v_len),
            ("do", do_.len(), v_len),
            ("g", g.len(), g_len),
            ("dht", dht.map_or(s_len, |x| x.len()), s_len),
            (
                "beta",
                beta.map_or(d.b * d.t * d.hv, |x| x.len()),
                d.b * d.t * d.hv,
            ),
        ];
        if let Some((name, got, want)) = sizes.iter().find(|(_, got, want)| got < want) {
            return Err(Error::Msg(format!(
                "chunk_linear_bwd: {name} holds {got} values, the shapes {d:?} need {want}"
            )));
        }
        let (kp, nc) = (d.kp(), d.chunks());
        let vp = d.v; // a multiple of 16 (checked)
        let prep_smem = d.prep_smem(); // the forward's prep, sized as its launcher sizes it
                                       // The reverse pass on tensor cores (default) or in plain f32 (HYBRID_LBWD_STATE=f32, a
                                       // cross-check): two cp.async stages of W, QG, KT, AQK, dO, EL, plus dSᵀ and dV'ᵀ.
        let f32_state = std::env::var("HYBRID_LBWD_STATE").is_ok_and(|x| x == "f32");
        let state_smem = if f32_state {
            4 * (CHUNK * (CHUNK + 1)
                + kp * (CHUNK + 1)
                + 2 * CHUNK * (kp + 1)
                + kp
                + 2 * CHUNK * LV
                + kp * LV)
        } else {
            let stage = 2
                * (2 * CHUNK * (kp + PAD) + (kp + CHUNK) * (CHUNK + PAD) + CHUNK * (BVT + PAD))
                + 4 * kp;
            2 * stage + 2 * BVT * (kp + PAD) + 2 * BVT * (CHUNK + PAD)
        };
        let chunk_smem = 4
            * (3 * CHUNK * kp
                + 3 * CHUNK * (CHUNK + 1)
                + CHUNK * kp
                + 2 * kp * LV
                + 6 * CHUNK * LV
                + 3 * CHUNK
                + 2 * kp);
        let prep = self.function(CHUNK_LINEAR, &format!("chunk_prep_k{kp}"))?;
        // The per-chunk pass's value-tile products in f32 (default) or on tensor cores with
        // bf16 operands (HYBRID_LBWD_CHUNK=mma: 17 % faster backward at 64K, but GDN's dg error
        // rises from 3e-4 to 1.3e-2 of its max on the K=128 test, near the 2e-2 tolerance).
        let chunk_mma = std::env::var("HYBRID_LBWD_CHUNK").is_ok_and(|x| x == "mma") as i32;
        let state_name = if f32_state {
            "lbwd_state_f32"
        } else {
            "lbwd_state"
        };
        let state = self.function(CHUNK_LINEAR_BWD, &format!("{state_name}_k{kp}"))?;
        let chunk = self.function(CHUNK_LINEAR_BWD, &format!("lbwd_chunk_k{kp}"))?;
        shared(&prep, prep_smem)?;
        shared(&state, state_smem)?;
        shared(&chunk, chunk_smem)?;
        let (t, h, hv, kd, vd, vpi) = (
            d.t as i32,
            d.h as i32,
            d.hv as i32,
            d.k as i32,
            d.v as i32,
            vp as i32,
        );
        let (gph, delta) = (g_per_head as i32, beta.is_some() as i32);
        let beta_arg = beta.unwrap_or(g); // never read in the plain form
        let gr = grads;
        for x in [&mut gr.dq, &mut gr.dk] {
            self.stream
                .memset_zeros(x)
                .map_err(|e| cuda_err("memset", e))?;
        }

        let t0 = std::time::Instant::now();
        let mut b = self.stream.launch_builder(&prep);
        b.arg(q)
            .arg(k)
            .arg(v)
            .arg(g)
            .arg(beta_arg)
            .arg(&mut gr.prep.w)
            .arg(&mut gr.prep.u)
            .arg(&mut gr.prep.qg)
            .arg(&mut gr.prep.kt)
            .arg(&mut gr.prep.aqk)
            .arg(&mut gr.prep.el)
            .arg(&t)
            .arg(&h)
            .arg(&hv)
            .arg(&kd)
            .arg(&vd)
            .arg(&vpi)
            .arg(&scale)
            .arg(&gph)
            .arg(&delta);
        let cfg = LaunchConfig {
            grid_dim: (nc as u32, (d.b * d.hv) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: prep_smem as u32,
        };
        // SAFETY: argument list matches chunk_prep; buffer sizes follow from `d` (checked).
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("chunk_prep launch", e))?;
        gr.lap(self, "bwd_prep_ms", t0)?;

        let t1 = std::time::Instant::now();
        let has_dht = dht.is_some() as i32;
        let dht_arg = dht.unwrap_or(&gr.prep.el); // never read without has_dht
        let mut b = self.stream.launch_builder(&state);
        b.arg(&gr.prep.w)
            .arg(&gr.prep.qg)
            .arg(&gr.prep.kt)
            .arg(&gr.prep.aqk)
            .arg(&gr.prep.el)
            .arg(do_)
            .arg(dht_arg)
            .arg(&mut gr.ds)
            .arg(&mut gr.dvp)
            .arg(&mut gr.dh0)
            .arg(&t)
            .arg(&hv)
            .arg(&kd)
            .arg(&vd)
            .arg(&delta)
            .arg(&has_dht);
        let cfg = LaunchConfig {
            grid_dim: ((vp / BVT) as u32, (d.b * d.hv) as u32, 1),
            block_dim: (if f32_state { 256 } else { 128 }, 1, 1),
            shared_mem_bytes: state_smem as u32,
        };
        // SAFETY: argument list matches lbwd_state; sizes as above.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("lbwd_state launch", e))?;
        gr.lap(self, "bwd_state_ms", t1)?;

        let t2 = std::time::Instant::now();
        let mut b = self.stream.launch_builder(&chunk);
        b.arg(q)
            .arg(k)
            .arg(v)
            .arg(g)
            .arg(beta_arg)
            .arg(cs)
            .arg(&gr.ds)
            .arg(&gr.dvp)
            .arg(do_)
            .arg(&mut gr.dq)
            .arg(&mut gr.dk)
            .arg(&mut gr.dv)
            .arg(&mut gr.dg)
            .arg(&mut gr.dbeta)
            .arg(&t)
            .arg(&h)
            .arg(&hv)
            .arg(&kd)
            .arg(&vd)
            .arg(&scale)
            .arg(&gph)
            .arg(&delta)
            .arg(&chunk_mma);
        let cfg = LaunchConfig {
            grid_dim: (nc as u32, (d.b * d.hv) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: chunk_smem as u32,
        };
        // SAFETY: argument list matches lbwd_chunk; sizes as above.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("lbwd_chunk launch", e))?;
        gr.lap(self, "bwd_chunk_ms", t2)
    }
}
