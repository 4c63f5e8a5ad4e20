//! The CUDA backend: a device context and stream through `cudarc` (libraries opened at run
//! time, see [`libs`]), cuBLAS for GEMMs (bf16 in, f32 accumulate), and kernels written as
//! `.cu` files beside this module, compiled by NVRTC for the device's compute capability on
//! first use and cached on disk (key: source hash, arch, options).
//!
//! This is the foundation of the GPU issue; the op set grows kernel by kernel, each tested
//! against the CPU reference by the `#[ignore]`d tests that scripts/gpu-check runs on a GPU.
#![allow(clippy::too_many_arguments)] // launchers take their shapes explicitly

mod chunk_linear;
mod chunk_linear_bwd;
pub mod collective;
pub mod flash;
mod gemm;
mod gguf_ops;
mod hybrid_ops;
pub mod invariant;
pub mod libs;
mod model_train_ops;
mod ops;
mod ops_bwd;
mod threads;
mod train_ops;
pub use threads::each_on_its_gpu;
pub use train_ops::GateActivation;

pub use chunk_linear::{ChunkDims, ChunkScratch};
pub use chunk_linear_bwd::ChunkGrads;
pub use collective::Collective;
pub use flash::FlashDims;
pub use gguf_ops::{gguf_type_code, Q8Act};
pub use hybrid_ops::DecayGate;

use crate::{Error, Result};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx};
use half::bf16;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// Kernel sources, compiled together with the shared header.
const COMMON: &str = include_str!("kernels/common.cuh");
pub const CONVERT: (&str, &str) = ("convert", include_str!("kernels/convert.cu"));
pub const RMSNORM: (&str, &str) = ("rmsnorm", include_str!("kernels/rmsnorm.cu"));
pub const GDN_STEP: (&str, &str) = ("gdn_step", include_str!("kernels/gdn_step.cu"));
pub const ELEMENTWISE: (&str, &str) = ("elementwise", include_str!("kernels/elementwise.cu"));
pub const ATTENTION: (&str, &str) = ("attention", include_str!("kernels/attention.cu"));
pub const FLASH_ATTN: (&str, &str) = (
    "flash_attn",
    concat!(
        include_str!("kernels/flash_common.cuh"),
        include_str!("kernels/flash_attn.cu")
    ),
);
/// Flash attention's Hopper kernels (wgmma, TMA), built for sm_90a only (flash.rs).
pub const FLASH_SM90: (&str, &str) = (
    "flash_sm90",
    concat!(
        include_str!("kernels/flash_common.cuh"),
        include_str!("kernels/flash_sm90.cu")
    ),
);
pub const CHUNK_LINEAR: (&str, &str) = ("chunk_linear", include_str!("kernels/chunk_linear.cu"));
pub const HYBRID: (&str, &str) = ("hybrid", include_str!("kernels/hybrid.cu"));
pub const GGUF: (&str, &str) = ("gguf", include_str!("kernels/gguf.cu"));
pub const CHUNK_LINEAR_BWD: (&str, &str) = (
    "chunk_linear_bwd",
    include_str!("kernels/chunk_linear_bwd.cu"),
);
pub const CONV_BWD: (&str, &str) = ("conv_bwd", include_str!("kernels/conv_bwd.cu"));
pub const LOSS: (&str, &str) = ("loss", include_str!("kernels/loss.cu"));
pub const TRAIN_OPS: (&str, &str) = ("train_ops", include_str!("kernels/train_ops.cu"));
pub const MODEL_TRAIN: (&str, &str) = ("model_train", include_str!("kernels/model_train.cu"));
pub const GEMM_INVARIANT: (&str, &str) =
    ("gemm_invariant", include_str!("kernels/gemm_invariant.cu"));

/// Shapes of a linear-mixer decode step (see kernels/gdn_step.cu).
#[derive(Clone, Copy, Debug)]
pub struct StepDims {
    pub b: usize,
    pub h: usize,
    pub hv: usize,
    pub k: usize,
    pub v: usize,
}

fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Msg(format!("CUDA {what} failed: {e:?}"))
}

/// One GPU: context, stream, cuBLAS handle, and the kernels compiled so far.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub blas: CudaBlas,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_mem: usize,
    arch: &'static str,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Loaded kernel handles: looking one up in the module on every launch cost most of a
    /// batch-1 decode step (≈500 launches a token).
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
    /// Split-invariant arithmetic on ([`invariant`]).
    invariant: AtomicBool,
    /// Unit boundaries of invariant GEMMs, on the device.
    unit_starts: Mutex<HashMap<Vec<i32>, Arc<CudaSlice<i32>>>>,
}

/// Where compiled kernels are cached: `$HYBRID_CACHE/kernels` (default ~/.cache/hybrid/kernels).
pub fn kernel_cache_dir() -> PathBuf {
    let base = std::env::var_os("HYBRID_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))
                .join(".cache")
                .join("hybrid")
        });
    base.join("kernels")
}

impl Gpu {
    /// Opens device `ordinal`; every failure is one sentence.
    pub fn open(ordinal: usize) -> Result<Self> {
        Self::open_on(ordinal, false)
    }

    /// Opens device `ordinal` with a stream of its own, so that several of these, driven from
    /// different threads, run their work concurrently on the GPU (the default stream
    /// serialises everything on it).
    pub fn open_with_own_stream(ordinal: usize) -> Result<Self> {
        Self::open_on(ordinal, true)
    }

    fn open_on(ordinal: usize, own_stream: bool) -> Result<Self> {
        libs::ensure_loaded().map_err(Error::Msg)?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::Msg(format!("cannot open GPU {ordinal}: {e:?}")))?;
        // One stream carries all our work, so cudarc's per-argument event tracking (events
        // recorded on every launch to order work across streams) is pure overhead.
        // SAFETY: every allocation, copy and launch of this Gpu goes through `stream`.
        unsafe { ctx.disable_event_tracking() };
        let stream = if own_stream {
            ctx.new_stream().map_err(|e| cuda_err("stream", e))?
        } else {
            ctx.default_stream()
        };
        let blas = CudaBlas::new(stream.clone()).map_err(|e| cuda_err("cuBLAS init", e))?;
        let compute_capability = ctx.compute_capability().map_err(|e| cuda_err("query", e))?;
        let arch: &'static str = Box::leak(
            format!("sm_{}{}", compute_capability.0, compute_capability.1).into_boxed_str(),
        );
        Ok(Gpu {
            name: ctx.name().map_err(|e| cuda_err("query", e))?,
            total_mem: ctx.total_mem().map_err(|e| cuda_err("query", e))?,
            compute_capability,
            arch,
            ctx,
            stream,
            blas,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            invariant: AtomicBool::new(false),
            unit_starts: Mutex::new(HashMap::new()),
        })
    }

    pub fn arch(&self) -> &str {
        self.arch
    }

    /// PTX of `src` for this device, from the disk cache or compiled by NVRTC now.
    fn ptx(&self, name: &str, src: &str, arch: &'static str) -> Result<Ptx> {
        let full = format!("{COMMON}\n{src}");
        // Line info costs nothing at run time and lets a profiler (ncu) map stalls to .cu lines.
        let options = [
            "--std=c++17",
            "--use_fast_math=false",
            "--generate-line-info",
        ];
        let mut h = Sha256::new();
        h.update(full.as_bytes());
        h.update(arch.as_bytes());
        h.update(options.join(" ").as_bytes());
        let key = format!("{name}-{arch}-{:x}.ptx", h.finalize());
        let path = kernel_cache_dir().join(&key);
        if let Ok(text) = std::fs::read_to_string(&path) {
            return Ok(Ptx::from_src(text));
        }
        let opts = CompileOptions {
            arch: Some(arch),
            options: vec!["--std=c++17".into(), "--generate-line-info".into()],
            name: Some(format!("{name}.cu")),
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(&full, opts)
            .map_err(|e| Error::Msg(format!("NVRTC could not compile kernels/{name}.cu: {e:?}")))?;
        // A cache write failure costs a recompile next time, nothing more.
        if std::fs::create_dir_all(kernel_cache_dir()).is_ok() {
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, ptx.to_src()).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
        Ok(ptx)
    }

    /// A kernel function from one of the sources above.
    pub fn function(
        &self,
        source: (&'static str, &'static str),
        func: &str,
    ) -> Result<CudaFunction> {
        self.function_for_arch(source, func, self.arch)
    }

    /// [`Gpu::function`] from a source built for `arch` rather than the device's plain arch
    /// (Hopper's sm_90a for its wgmma kernels); a source is always built for one arch.
    pub(crate) fn function_for_arch(
        &self,
        (name, src): (&'static str, &'static str),
        func: &str,
        arch: &'static str,
    ) -> Result<CudaFunction> {
        let key = (name, func.to_string());
        if let Some(f) = self.functions.lock().unwrap().get(&key) {
            return Ok(f.clone());
        }
        let module = {
            let mut m = self.modules.lock().unwrap();
            match m.get(name) {
                Some(module) => module.clone(),
                None => {
                    let module = self
                        .ctx
                        .load_module(self.ptx(name, src, arch)?)
                        .map_err(|e| cuda_err("module load", e))?;
                    m.insert(name, module.clone());
                    module
                }
            }
        };
        let f = module
            .load_function(func)
            .map_err(|e| cuda_err(&format!("loading {func}"), e))?;
        self.functions.lock().unwrap().insert(key, f.clone());
        Ok(f)
    }

    pub fn upload<T: cudarc::driver::DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(host)
            .map_err(|e| cuda_err("copy to device", e))
    }

    pub fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        dev: &CudaSlice<T>,
    ) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(dev)
            .map_err(|e| cuda_err("copy to host", e))
    }

    /// Elements `range` of a device buffer, to the host.
    pub fn download_range<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        dev: &CudaSlice<T>,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(&dev.slice(range))
            .map_err(|e| cuda_err("copy to host", e))
    }

    pub fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(n)
            .map_err(|e| cuda_err("allocation", e))
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| cuda_err("synchronize", e))
    }

    /// RMSNorm of `rows` rows of width `d`, f32 activations.
    pub fn rmsnorm_f32(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        self.rmsnorm("rmsnorm_f32", x, w, y, rows, d, eps)
    }

    /// RMSNorm on bf16 activations with f32 weights.
    pub fn rmsnorm_bf16(
        &self,
        x: &CudaSlice<bf16>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<bf16>,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        self.rmsnorm("rmsnorm_bf16", x, w, y, rows, d, eps)
    }

    /// One block of 256 threads per row (kernels/rmsnorm.cu).
    fn rmsnorm<T: cudarc::driver::DeviceRepr>(
        &self,
        func: &str,
        x: &CudaSlice<T>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<T>,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        let f = self.function(RMSNORM, func)?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let di = d as i32;
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(w).arg(y).arg(&di).arg(&eps);
        // SAFETY: argument types and counts match the kernel signature; sizes checked by callers.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("rmsnorm launch", e))?;
        Ok(())
    }

    /// One decode token of the delta rule on an f32 state, in place (GDN: `g_per_head`).
    #[allow(clippy::too_many_arguments)]
    pub fn gdn_step(
        &self,
        d: StepDims,
        q: &CudaSlice<bf16>,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
        g: &CudaSlice<f32>,
        g_per_head: bool,
        beta: &CudaSlice<f32>,
        state: &mut CudaSlice<f32>,
        o: &mut CudaSlice<bf16>,
        scale: f32,
    ) -> Result<()> {
        if d.k > 256 || !d.v.is_multiple_of(4) || d.h == 0 || !d.hv.is_multiple_of(d.h) {
            return Err(Error::Msg(format!(
                "gdn_step supports key head dims up to 256, value head dims that are multiples of 4, and value heads a multiple of key heads; got {d:?}"
            )));
        }
        self.gdn_step_launch(
            d,
            (&q.as_view(), &k.as_view(), &v.as_view()),
            (&g.as_view(), g_per_head, &beta.as_view()),
            (None, &mut state.as_view_mut()),
            &mut o.as_view_mut(),
            scale,
        )
    }

    /// [`Gpu::gdn_step`] for token `j` of a speculative verification of one sequence (B = 1):
    /// reads row `j` of q, k, v, g, β, the state before the token from `state_in` (the
    /// sequence's state for j = 0, else lane j−1 of `lanes`), writes the state after it to
    /// lane j of `lanes` [T, HV, K, V] and the output to row j of `o`.
    #[allow(clippy::too_many_arguments)]
    pub fn gdn_step_lane(
        &self,
        d: StepDims,
        j: usize,
        (q, k, v): (&CudaSlice<bf16>, &CudaSlice<bf16>, &CudaSlice<bf16>),
        (g, g_per_head, beta): (&CudaSlice<f32>, bool, &CudaSlice<f32>),
        state: &CudaSlice<f32>,
        lanes: &mut CudaSlice<f32>,
        o: &mut CudaSlice<bf16>,
        scale: f32,
    ) -> Result<()> {
        let (ck, cv, st) = (d.h * d.k, d.hv * d.v, d.hv * d.k * d.v);
        let gw = if g_per_head { d.hv } else { d.hv * d.k };
        if d.b != 1 || lanes.len() < (j + 1) * st || state.len() < st || q.len() < (j + 1) * ck {
            return Err(Error::Msg(format!(
                "gdn_step_lane: lane {j} of {} values does not fit buffers of {} (state {}), {d:?}",
                st,
                lanes.len(),
                state.len()
            )));
        }
        fn row(x: &CudaSlice<bf16>, j: usize, w: usize) -> CudaView<'_, bf16> {
            x.slice(j * w..(j + 1) * w)
        }
        let sp = if j == 0 {
            state.device_ptr(&self.stream).0
        } else {
            lanes.slice((j - 1) * st..j * st).device_ptr(&self.stream).0
        };
        self.gdn_step_launch(
            d,
            (&row(q, j, ck), &row(k, j, ck), &row(v, j, cv)),
            (
                &g.slice(j * gw..(j + 1) * gw),
                g_per_head,
                &beta.slice(j * d.hv..(j + 1) * d.hv),
            ),
            (Some(sp), &mut lanes.slice_mut(j * st..(j + 1) * st)),
            &mut o.slice_mut(j * cv..(j + 1) * cv),
            scale,
        )
    }

    /// The launch behind [`Gpu::gdn_step`] and [`Gpu::gdn_step_lane`]: in place (`None`) or
    /// from the state at a raw device address (a lane of the buffer the output lane is in).
    #[allow(clippy::type_complexity)]
    fn gdn_step_launch(
        &self,
        d: StepDims,
        (q, k, v): (&CudaView<bf16>, &CudaView<bf16>, &CudaView<bf16>),
        (g, g_per_head, beta): (&CudaView<f32>, bool, &CudaView<f32>),
        (state_in, state_out): (Option<u64>, &mut CudaViewMut<f32>),
        o: &mut CudaViewMut<bf16>,
        scale: f32,
    ) -> Result<()> {
        let name = if state_in.is_some() {
            "gdn_step_lane"
        } else {
            "gdn_step"
        };
        let f = self.function(GDN_STEP, name)?;
        // 16 warps, 128 columns per block: STEP_WARPS in kernels/gdn_step.cu.
        let cfg = LaunchConfig {
            grid_dim: ((d.b * d.hv) as u32, d.v.div_ceil(128) as u32, 1),
            block_dim: (512, 1, 1),
            shared_mem_bytes: 0,
        };
        let (h, hv, kd, vd, gph) = (
            d.h as i32,
            d.hv as i32,
            d.k as i32,
            d.v as i32,
            g_per_head as i32,
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(q).arg(k).arg(v).arg(g).arg(beta);
        if let Some(p) = &state_in {
            b.arg(p);
        }
        b.arg(state_out)
            .arg(o)
            .arg(&h)
            .arg(&hv)
            .arg(&kd)
            .arg(&vd)
            .arg(&scale)
            .arg(&gph);
        // SAFETY: argument list matches the kernel; buffer sizes follow from `d` (callers).
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("gdn_step launch", e))?;
        Ok(())
    }

    /// `c[M,N] = a[M,K] · b[N,K]ᵀ` in bf16 with f32 accumulation (cuBLAS), row-major.
    pub fn matmul_nt_bf16(
        &self,
        a: &CudaSlice<bf16>,
        b: &CudaSlice<bf16>,
        c: &mut CudaSlice<bf16>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        if self.split_invariant() {
            return self.matmul_nt_invariant_bf16(a, b, c, (m, n, k));
        }
        // Row-major C = A Bᵀ is column-major Cᵀ = B Aᵀ: cuBLAS with (op_b = T on B, op_a = N).
        let cfg = GemmConfig {
            transa: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
            transb: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: bf16::ONE,
            lda: k as i32,
            ldb: k as i32,
            beta: bf16::ZERO,
            ldc: n as i32,
        };
        // SAFETY: the buffers hold m·k, n·k and m·n elements (checked by callers).
        unsafe { self.blas.gemm(cfg, b, a, c) }.map_err(|e| cuda_err("cuBLAS GEMM", e))
    }
}
