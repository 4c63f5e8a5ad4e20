//! Launchers of kernels/chunk_linear.cu: the chunked forward of GDN / KDA / GLA on tensor
//! cores (layouts as in mixers::linear_core, which is its specification).
use super::{cuda_err, Gpu, CHUNK_LINEAR};
use crate::{Error, Result};
use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

/// Tokens per chunk (CH in the kernel); value tiles are padded to 16 columns, and the
/// sequential kernel takes 16 or 32 of them per block.
const CHUNK: usize = 64;
const BV: usize = 16;
const PAD: usize = 8;
/// chunk_state's block: four warps carry the state, four make the outputs (see the .cu).
const STATE_THREADS: u32 = 256;

/// Shapes of a chunked call: q, k [B, T, H, K]; v, o [B, T, HV, V]; g [B, T, HV] (scalar
/// decay, GDN) or [B, T, HV, K]; beta [B, T, HV]; state [B, HV, K, V] f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkDims {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub hv: usize,
    pub k: usize,
    pub v: usize,
}

impl ChunkDims {
    pub(super) fn chunks(&self) -> usize {
        self.t.div_ceil(CHUNK)
    }
    /// Key dims padded to the kernel's instantiation (64 or 128).
    pub(super) fn kp(&self) -> usize {
        if self.k <= 64 {
            64
        } else {
            128
        }
    }
    pub(super) fn vp(&self) -> usize {
        self.v.div_ceil(BV) * BV
    }
    /// Dynamic shared memory of chunk_prep (its regions, in the .cu's order); the backward
    /// runs the same kernel.
    pub(super) fn prep_smem(&self) -> usize {
        let kp = self.kp();
        let (ldk, ldc) = (kp + PAD, CHUNK + PAD);
        let region = (CHUNK * ldk).max(kp * ldc);
        2 * CHUNK * ldk   // kb
            + 2 * region  // qb
            + 4 * (CHUNK * kp).max(CHUNK * (CHUNK + 1)) // cum, later T
            + 4 * CHUNK   // β
            + 4 * CHUNK * (CHUNK + 1) // A
            + 2 * CHUNK * ldc // Tb
            + 2 * region // X
    }
    fn check(&self) -> Result<()> {
        if self.k == 0 || self.k > 128 || self.v == 0 || !self.v.is_multiple_of(2) {
            return Err(Error::Msg(format!(
                "the chunked linear kernels take key head dims 1..=128 and even value head dims; got k={} v={}",
                self.k, self.v
            )));
        }
        if self.h == 0 || !self.hv.is_multiple_of(self.h) || self.t == 0 || self.b == 0 {
            return Err(Error::Msg(format!(
                "value heads must be a multiple of key heads and B, T nonzero; got {self:?}"
            )));
        }
        Ok(())
    }
}

/// The first kernel's per-chunk outputs, read by the forward's sequential kernel and by the
/// backward's (which runs the first kernel again into its own): W, QG, KT and AQK in the
/// padded blocks of kernels/common.cuh `PrepBlocks` (whole-block copies), U over the value
/// dims padded to 16, EL.
pub(super) struct PrepBuffers {
    pub(super) w: CudaSlice<bf16>,
    pub(super) u: CudaSlice<bf16>,
    pub(super) qg: CudaSlice<bf16>,
    pub(super) kt: CudaSlice<bf16>,
    pub(super) aqk: CudaSlice<bf16>,
    pub(super) el: CudaSlice<f32>,
}

impl PrepBuffers {
    pub(super) fn new(gpu: &Gpu, d: &ChunkDims) -> Result<Self> {
        let blocks = d.b * d.hv * d.chunks();
        let (kp, vp) = (d.kp(), d.vp());
        Ok(Self {
            w: gpu.zeros(blocks * CHUNK * (kp + PAD))?,
            u: gpu.zeros(blocks * CHUNK * vp)?,
            qg: gpu.zeros(blocks * CHUNK * (kp + PAD))?,
            kt: gpu.zeros(blocks * kp * (CHUNK + PAD))?,
            aqk: gpu.zeros(blocks * CHUNK * (CHUNK + PAD))?,
            el: gpu.zeros(blocks * kp)?,
        })
    }

    fn bytes(&self) -> usize {
        2 * (self.w.len() + self.u.len() + self.qg.len() + self.kt.len() + self.aqk.len())
            + 4 * self.el.len()
    }
}

/// Per-chunk operands written by the first kernel and streamed by the second (see the .cu).
pub struct ChunkScratch {
    dims: ChunkDims,
    prep: PrepBuffers,
    /// With `keep_states`, the forward writes the state entering every chunk here
    /// ([B, HV, n_chunks, K, V] f32): the saved activation of the backward pass.
    pub chunk_states: Option<CudaSlice<f32>>,
    /// When set, each launch is followed by a synchronize and its wall time (ms) is recorded
    /// here as (kernel, ms): for benchmarks that want the split between the two kernels.
    pub timings: Option<Vec<(&'static str, f64)>>,
}

impl ChunkScratch {
    /// Makes the forward keep every chunk's entry state (for the backward pass).
    pub fn keep_states(&mut self, gpu: &Gpu) -> Result<()> {
        if self.chunk_states.is_none() {
            let d = self.dims;
            self.chunk_states = Some(gpu.zeros(d.b * d.hv * d.chunks() * d.k * d.v)?);
        }
        Ok(())
    }
    pub fn dims(&self) -> ChunkDims {
        self.dims
    }
    fn lap(&mut self, gpu: &Gpu, name: &'static str, since: std::time::Instant) -> Result<()> {
        if let Some(t) = self.timings.as_mut() {
            gpu.synchronize()?;
            t.push((name, since.elapsed().as_secs_f64() * 1e3));
        }
        Ok(())
    }

    /// Bytes held (≈ 5 bf16 values per token, head and channel).
    pub fn bytes(&self) -> usize {
        self.prep.bytes()
    }
}

impl Gpu {
    /// Scratch for [`Gpu::chunk_linear_fwd`] at these shapes; reusable across calls.
    pub fn chunk_linear_scratch(&self, d: ChunkDims) -> Result<ChunkScratch> {
        d.check()?;
        Ok(ChunkScratch {
            dims: d,
            prep: PrepBuffers::new(self, &d)?,
            chunk_states: None,
            timings: None,
        })
    }

    /// Chunked forward of the linear recurrence: writes o and advances `state` (initial state
    /// in, final state out). `beta` None is the plain form (GLA); `g_per_head` says g holds one
    /// log decay per (token, value head) instead of one per key channel.
    #[allow(clippy::too_many_arguments)]
    pub fn chunk_linear_fwd(
        &self,
        d: ChunkDims,
        q: &CudaSlice<bf16>,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
        g: &CudaSlice<f32>,
        g_per_head: bool,
        beta: Option<&CudaSlice<f32>>,
        scale: f32,
        state: &mut CudaSlice<f32>,
        o: &mut CudaSlice<bf16>,
        scratch: &mut ChunkScratch,
    ) -> Result<()> {
        d.check()?;
        if scratch.dims != d {
            return Err(Error::Msg(format!(
                "chunk scratch was made for {:?}, not {d:?}",
                scratch.dims
            )));
        }
        let qk_len = d.b * d.t * d.h * d.k;
        let v_len = d.b * d.t * d.hv * d.v;
        let g_len = d.b * d.t * d.hv * if g_per_head { 1 } else { d.k };
        let sizes = [
            ("q", q.len(), qk_len),
            ("k", k.len(), qk_len),
            ("v", v.len(), v_len),
            ("o", o.len(), v_len),
            ("g", g.len(), g_len),
            ("state", state.len(), d.b * d.hv * d.k * d.v),
            (
                "beta",
                beta.map_or(d.b * d.t * d.hv, |x| x.len()),
                d.b * d.t * d.hv,
            ),
        ];
        if let Some((name, got, want)) = sizes.iter().find(|(_, got, want)| got < want) {
            return Err(Error::Msg(format!(
                "chunk_linear_fwd: {name} holds {got} values, the shapes {d:?} need {want}"
            )));
        }
        let (kp, vp, nc) = (d.kp(), d.vp(), d.chunks());
        let (ldk, ldc) = (kp + PAD, CHUNK + PAD);
        let prep_smem = d.prep_smem();
        // Value columns per sequential block: 32 halves the re-reads of each chunk's operands
        // (one per block) when that still leaves a block for most SMs; else 16.
        let bvt = match std::env::var("HYBRID_CHUNK_BV").ok().as_deref() {
            Some("16") => 16,
            Some("32") => 32,
            _ if vp.is_multiple_of(32) && d.b * d.hv * vp / 32 >= 96 => 32,
            _ => 16,
        };
        let bvt = if vp.is_multiple_of(bvt) { bvt } else { 16 };
        let stage = 2 * (2 * CHUNK * ldk + kp * ldc + CHUNK * ldc + CHUNK * (bvt + PAD)) + 4 * kp;
        // NSTAGE = 3 stages, Sᵀ and v'ᵀ, and one 8-byte mbarrier per stage (rounded to 16).
        let state_smem = 3 * stage + 2 * bvt * ldk + 2 * bvt * ldc + 32;
        let prep = self.function(CHUNK_LINEAR, &format!("chunk_prep_k{kp}"))?;
        let run = self.function(CHUNK_LINEAR, &format!("chunk_state_k{kp}_v{}", bvt / 8))?;
        for (f, bytes) in [(&prep, prep_smem), (&run, state_smem)] {
            f.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(|e| cuda_err("shared memory attribute", e))?;
            // All of L1 as shared memory: two prep blocks fit on an SM only then.
            f.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                100,
            )
            .map_err(|e| cuda_err("shared memory carveout", e))?;
        }
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
        let s = scratch;
        if let Some(t) = s.timings.as_mut() {
            self.synchronize()?;
            // What the compiler made of the kernels: registers, spills, blocks per SM.
            for (name, f, threads, smem) in [
                ("prep", &prep, 256, prep_smem),
                ("state", &run, STATE_THREADS, state_smem),
            ] {
                let regs = f.num_regs().map_err(|e| cuda_err("attribute", e))?;
                let local = f.local_size_bytes().map_err(|e| cuda_err("attribute", e))?;
                let occ = f
                    .occupancy_max_active_blocks_per_multiprocessor(threads, smem, None)
                    .map_err(|e| cuda_err("occupancy", e))?;
                t.push((
                    if name == "prep" {
                        "prep_regs"
                    } else {
                        "state_regs"
                    },
                    regs as f64,
                ));
                t.push((
                    if name == "prep" {
                        "prep_local_bytes"
                    } else {
                        "state_local_bytes"
                    },
                    local as f64,
                ));
                t.push((
                    if name == "prep" {
                        "prep_blocks_per_sm"
                    } else {
                        "state_blocks_per_sm"
                    },
                    occ as f64,
                ));
            }
        }
        let t0 = std::time::Instant::now();
        let mut b = self.stream.launch_builder(&prep);
        b.arg(q)
            .arg(k)
            .arg(v)
            .arg(g)
            .arg(beta_arg)
            .arg(&mut s.prep.w)
            .arg(&mut s.prep.u)
            .arg(&mut s.prep.qg)
            .arg(&mut s.prep.kt)
            .arg(&mut s.prep.aqk)
            .arg(&mut s.prep.el)
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
        // SAFETY: argument list matches chunk_prep; sizes checked above and by the scratch.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("chunk_prep launch", e))?;
        s.lap(self, "chunk_prep_ms", t0)?;
        let t1 = std::time::Instant::now();
        let mut b = self.stream.launch_builder(&run);
        b.arg(&s.prep.w)
            .arg(&s.prep.u)
            .arg(&s.prep.qg)
            .arg(&s.prep.kt)
            .arg(&s.prep.aqk)
            .arg(&s.prep.el)
            .arg(state)
            .arg(o);
        let save = s.chunk_states.is_some() as i32;
        match s.chunk_states.as_mut() {
            Some(cs) => b.arg(cs),
            None => b.arg(&s.prep.el), // never written when save == 0
        };
        b.arg(&t)
            .arg(&hv)
            .arg(&kd)
            .arg(&vd)
            .arg(&vpi)
            .arg(&delta)
            .arg(&save);
        let cfg = LaunchConfig {
            grid_dim: ((vp / bvt) as u32, (d.b * d.hv) as u32, 1),
            block_dim: (STATE_THREADS, 1, 1),
            shared_mem_bytes: state_smem as u32,
        };
        // SAFETY: as above, for chunk_state.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("chunk_state launch", e))?;
        s.lap(self, "chunk_state_ms", t1)
    }
}
