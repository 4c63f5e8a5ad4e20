//! Launchers of kernels/flash_attn.cu: FlashAttention-2 forward and backward on tensor cores,
//! with the semantics of `mixers::attention_core` (causal with `past = s − t` earlier keys, GQA,
//! optional sliding window). Layouts: q, o [B, T, H, D]; k, v [B, S, Hk, D]; lse [B, H, T] f32.
use super::{cuda_err, Gpu, FLASH_ATTN, FLASH_SM90};
use crate::{Error, Result};
use cudarc::driver::sys::{self, CUfunction_attribute_enum};
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use half::bf16;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Shapes of one attention call (as `mixers::attention_core::Dims`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashDims {
    pub b: usize,
    /// Query tokens of this call.
    pub t: usize,
    /// Key tokens: `s − t` earlier ones, then this call's.
    pub s: usize,
    pub h: usize,
    pub hk: usize,
    pub d: usize,
}

/// A forward tiling: query rows per CTA, keys per step, warps per CTA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwdTiling {
    pub bm: usize,
    pub bn: usize,
    pub warps: usize,
}

impl FwdTiling {
    /// The tilings compiled for head dim `d` (the first is the default).
    pub fn available(d: usize) -> &'static [FwdTiling] {
        // Default at both head dims: 32 rows a warp (timed at d = 128 only, where 16 rows a
        // warp ran 20-25% slower: twice the ldmatrix traffic per mma).
        const T64: &[FwdTiling] = &[
            FwdTiling {
                bm: 128,
                bn: 64,
                warps: 4,
            },
            FwdTiling {
                bm: 128,
                bn: 64,
                warps: 8,
            },
            FwdTiling {
                bm: 64,
                bn: 64,
                warps: 4,
            },
        ];
        const T128: &[FwdTiling] = &[
            FwdTiling {
                bm: 128,
                bn: 64,
                warps: 4,
            },
            FwdTiling {
                bm: 128,
                bn: 64,
                warps: 8,
            },
            FwdTiling {
                bm: 64,
                bn: 64,
                warps: 4,
            },
            FwdTiling {
                bm: 128,
                bn: 32,
                warps: 4,
            },
        ];
        match d {
            64 => T64,
            128 => T128,
            _ => &[],
        }
    }
    fn name(&self, d: usize) -> String {
        format!("flash_fwd_d{d}_m{}n{}w{}", self.bm, self.bn, self.warps)
    }
}

/// A backward tiling: keys per CTA (16 per warp), query rows per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BwdTiling {
    pub bm: usize,
    pub bn: usize,
    pub warps: usize,
}

impl BwdTiling {
    /// The tilings compiled (the same for head dims 64 and 128; the first is the default).
    pub fn available(d: usize) -> &'static [BwdTiling] {
        const ALL: &[BwdTiling] = &[
            BwdTiling {
                bm: 64,
                bn: 128,
                warps: 8,
            },
            BwdTiling {
                bm: 64,
                bn: 64,
                warps: 4,
            },
        ];
        match d {
            64 | 128 => ALL,
            _ => &[],
        }
    }
    fn name(&self, d: usize) -> String {
        format!("flash_bwd_d{d}_m{}n{}w{}", self.bm, self.bn, self.warps)
    }
    /// K, V tiles; two buffers of Q, dO, lse and delta; the dS tile (kernels/flash_attn.cu).
    fn smem(&self, d: usize) -> usize {
        2 * self.bn * (d + 8) * 2
            + 4 * self.bm * (d + 8) * 2
            + self.bn * (self.bm + 8) * 2
            + 4 * self.bm * 4
    }
}

impl FlashDims {
    fn check(&self) -> Result<()> {
        let ok = (self.d == 64 || self.d == 128)
            && self.hk > 0
            && self.h.is_multiple_of(self.hk)
            && self.t > 0
            && self.t <= self.s
            && self.b > 0
            && self.s < i32::MAX as usize;
        if ok {
            Ok(())
        } else {
            Err(Error::Msg(format!(
                "flash attention needs head dim 64 or 128, H a multiple of Hk and 0 < T <= S; got {self:?}"
            )))
        }
    }
    fn q_len(&self) -> usize {
        self.b * self.t * self.h * self.d
    }
    fn kv_len(&self) -> usize {
        self.b * self.s * self.hk * self.d
    }
    fn rows(&self) -> usize {
        self.b * self.t * self.h
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got < want {
        return Err(Error::Msg(format!(
            "flash attention: {what} holds {got} elements, the shapes need {want}"
        )));
    }
    Ok(())
}

fn window_arg(window: Option<usize>) -> i32 {
    window.map_or(0, |w| w.clamp(1, i32::MAX as usize) as i32)
}

/// The wgmma forward (FlashAttention-3's schedule — a TMA producer, two consumer warpgroups
/// sharing each K/V tile, the softmax overlapped with P V inside a warpgroup).
const FWD_WS: &str = "flash_fwd_ws_d128";
/// Q, two stages of K and V (32 KB tiles), 1 KB of alignment, 9 mbarriers.
const FWD_WS_SMEM: usize = 1024 + 5 * 128 * 128 * 2 + 8 * 9;

/// Whether [`Gpu::flash_attn_fwd_bf16`] runs the wgmma forward at head dim 128 on sm_90 (else,
/// and wherever sm_90a does not compile, the mma.sync forward).
pub const WGMMA_DEFAULT: bool = true;

/// A backward kernel: mma.sync with one of [`BwdTiling::available`], or wgmma (Hopper, head dim
/// 128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BwdKernel {
    MmaSync(BwdTiling),
    Wgmma,
}

/// The backward's inputs and outputs, checked against the dims, as the kernels' launchers take
/// them.
struct BwdBuffers<'a> {
    q: &'a CudaSlice<bf16>,
    k: &'a CudaSlice<bf16>,
    v: &'a CudaSlice<bf16>,
    o: &'a CudaSlice<bf16>,
    d_o: &'a CudaSlice<bf16>,
    lse: &'a CudaSlice<f32>,
    dq: &'a mut CudaSlice<bf16>,
    dk: &'a mut CudaSlice<bf16>,
    dv: &'a mut CudaSlice<bf16>,
}

/// Whether [`Gpu::flash_attn_bwd_bf16`] runs the wgmma backward at head dim 128 on sm_90.
pub const WGMMA_BWD_DEFAULT: bool = true;
const BWD_WS: &str = "flash_bwd_ws_d128";
/// K and V (32 KB each), two stages of Q, dO (16 KB each) and lse/delta (512 B), two dS^T
/// buffers (16 KB each), four dQ blocks (16 KB each), 1 KB of alignment, 5 mbarriers.
const BWD_WS_SMEM: usize = 1024 + 2 * 32768 + 2 * (2 * 16384 + 512) + 2 * 16384 + 4 * 16384 + 8 * 5;

/// Byte strides (leading, stride) of the MN-major V descriptor of the wgmma forward: between
/// the two 64-column halves of the V tile and between its 8-key row groups.
pub const WGMMA_V_STRIDES: (u32, u32) = (16384, 1024);

/// The Hopper kernels by (context, name): `None` once loading failed (an sm_90a build that does
/// not compile or load is not retried on every call; the mma.sync kernels serve instead).
type Sm90Cache = HashMap<(usize, &'static str), Option<CudaFunction>>;
static SM90_FUNCTIONS: OnceLock<Mutex<Sm90Cache>> = OnceLock::new();

/// A TMA tensor map (the driver's 128-byte descriptor), passed to a kernel by value as a
/// `const __grid_constant__ TmaMap`.
#[repr(C, align(128))]
#[derive(Clone, Copy)]
struct TmaMap(sys::CUtensorMap);
// SAFETY: plain bytes the kernel reads as its 128-byte, 64-aligned TmaMap parameter.
unsafe impl DeviceRepr for TmaMap {}

impl TmaMap {
    /// A [B, rows, heads, 128] bf16 tensor at `ptr`, read as boxes of `box_rows` x 64 columns of
    /// one (batch, head), with the 128-byte swizzle the wgmma descriptors expect; rows past
    /// `rows` read as zeros.
    fn rows_of_heads(
        ptr: u64,
        b: usize,
        rows: usize,
        heads: usize,
        box_rows: u32,
    ) -> Result<TmaMap> {
        const D: u64 = 128;
        let dims = [D, heads as u64, rows as u64, b as u64];
        let strides = [
            D * 2,
            heads as u64 * D * 2,
            rows as u64 * heads as u64 * D * 2,
        ];
        let boxes = [64u32, 1, box_rows, 1];
        let unit = [1u32; 4];
        let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
        // SAFETY: every pointer names an array of the rank's length (strides one less), alive
        // for the call; the driver only writes `map`.
        let r = unsafe {
            sys::cuTensorMapEncodeTiled(
                map.as_mut_ptr(),
                sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                4,
                ptr as *mut std::ffi::c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                boxes.as_ptr(),
                unit.as_ptr(),
                sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
                sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(Error::Msg(format!(
                "cuTensorMapEncodeTiled refused a [{b}, {rows}, {heads}, 128] bf16 tensor: {r:?}"
            )));
        }
        // SAFETY: initialised by the successful call above.
        Ok(TmaMap(unsafe { map.assume_init() }))
    }
}

impl Gpu {
    /// `name` from kernels/flash_sm90.cu (built for sm_90a), allowed `smem` bytes of dynamic
    /// shared memory.
    fn sm90_function(&self, name: &'static str, smem: usize) -> Result<CudaFunction> {
        if self.compute_capability != (9, 0) {
            return Err(Error::Msg(format!(
                "the wgmma flash kernels need a Hopper GPU (sm_90), this is sm_{}{}",
                self.compute_capability.0, self.compute_capability.1
            )));
        }
        let key = (Arc::as_ptr(&self.ctx) as usize, name);
        let cache = SM90_FUNCTIONS.get_or_init(Default::default);
        if let Some(f) = cache.lock().unwrap().get(&key) {
            return f
                .clone()
                .ok_or_else(|| Error::Msg(format!("{name} failed to load earlier")));
        }
        // One module for all of them (the Gpu's module cache), built by NVRTC for sm_90a.
        let loaded = self
            .function_for_arch(FLASH_SM90, name, "sm_90a")
            .and_then(|f| {
                f.set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .map_err(|e| cuda_err("setting shared memory size", e))?;
                Ok(f)
            });
        // The map keeps the function, and through it the module and the context, alive: a key
        // (the context's address) cannot be reused by another context.
        cache
            .lock()
            .unwrap()
            .insert(key, loaded.as_ref().ok().cloned());
        loaded
    }

    /// Whether [`Gpu::flash_attn_fwd_bf16`] takes the wgmma forward for head dim `d` here: head
    /// dim 128 on an sm_90 GPU where the sm_90a build compiles and loads.
    pub fn flash_fwd_uses_wgmma(&self, d: usize) -> bool {
        WGMMA_DEFAULT && d == 128 && self.sm90_function(FWD_WS, FWD_WS_SMEM).is_ok()
    }

    /// [`Gpu::flash_attn_fwd_bf16`] on Hopper's wgmma (head dim 128 only, `flash_fwd_ws_d128`),
    /// with the V descriptor's byte strides given (normally [`WGMMA_V_STRIDES`]); the default
    /// forward there (see [`Gpu::flash_fwd_uses_wgmma`]). Tested by
    /// `flash_forward_wgmma_matches_reference`.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attn_fwd_bf16_wgmma(
        &self,
        q: &CudaSlice<bf16>,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
        o: &mut CudaSlice<bf16>,
        lse: &mut CudaSlice<f32>,
        dims: FlashDims,
        scale: f32,
        window: Option<usize>,
        v_strides: (u32, u32),
    ) -> Result<()> {
        dims.check()?;
        if dims.d != 128 {
            return Err(Error::Msg(format!(
                "the wgmma flash forward is built for head dim 128, got {}",
                dims.d
            )));
        }
        check_len("q", q.len(), dims.q_len())?;
        check_len("o", o.len(), dims.q_len())?;
        check_len("k", k.len(), dims.kv_len())?;
        check_len("v", v.len(), dims.kv_len())?;
        check_len("lse", lse.len(), dims.rows())?;
        let f = self.sm90_function(FWD_WS, FWD_WS_SMEM)?;
        let cfg = LaunchConfig {
            grid_dim: ((dims.b * dims.h) as u32, dims.t.div_ceil(128) as u32, 1),
            block_dim: (384, 1, 1),
            shared_mem_bytes: FWD_WS_SMEM as u32,
        };
        let (t, s, h, hk, w) = (
            dims.t as i32,
            dims.s as i32,
            dims.h as i32,
            dims.hk as i32,
            window_arg(window),
        );
        let (lbo, sbo) = (v_strides.0 as i32, v_strides.1 as i32);
        let scale_log2 = scale * std::f32::consts::LOG2_E;
        let mut b = self.stream.launch_builder(&f);
        let (qp, _rq) = q.device_ptr(&self.stream);
        let (kp, _rk) = k.device_ptr(&self.stream);
        let (vp, _rv) = v.device_ptr(&self.stream);
        let maps = [
            TmaMap::rows_of_heads(qp, dims.b, dims.t, dims.h, 128)?,
            TmaMap::rows_of_heads(kp, dims.b, dims.s, dims.hk, 128)?,
            TmaMap::rows_of_heads(vp, dims.b, dims.s, dims.hk, 128)?,
        ];
        b.arg(&maps[0])
            .arg(&maps[1])
            .arg(&maps[2])
            .arg(o)
            .arg(lse)
            .arg(&t)
            .arg(&s)
            .arg(&h)
            .arg(&hk)
            .arg(&w)
            .arg(&scale_log2)
            .arg(&lbo)
            .arg(&sbo);
        // SAFETY: the argument list matches flash_fwd_ws_d128 (tensor maps of q, k, v, built
        // over the buffers checked against `dims` above); its shared memory is FWD_WS_SMEM,
        // allowed when the function was loaded.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("flash wgmma forward launch", e))?;
        Ok(())
    }

    /// Loads `func` and allows it `smem` bytes of dynamic shared memory.
    fn flash_function(&self, func: &str, smem: usize) -> Result<cudarc::driver::CudaFunction> {
        let f = self.function(FLASH_ATTN, func)?;
        f.set_attribute(
            CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .map_err(|e| cuda_err("setting shared memory size", e))?;
        Ok(f)
    }

    /// Causal (GQA, optionally sliding-window) attention forward: o = softmax(scale·q kᵀ) v and
    /// the natural-log log-sum-exp of each row's scaled scores, lse [B, H, T]. On sm_90 at head
    /// dim 128 the wgmma kernel; elsewhere (or if sm_90a fails to compile) mma.sync.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attn_fwd_bf16(
        &self,
        q: &CudaSlice<bf16>,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
        o: &mut CudaSlice<bf16>,
        lse: &mut CudaSlice<f32>,
        dims: FlashDims,
        scale: f32,
        window: Option<usize>,
    ) -> Result<()> {
        if self.flash_fwd_uses_wgmma(dims.d) {
            return self.flash_attn_fwd_bf16_wgmma(
                q,
                k,
                v,
                o,
                lse,
                dims,
                scale,
                window,
                WGMMA_V_STRIDES,
            );
        }
        let tiling = *FwdTiling::available(dims.d).first().ok_or_else(|| {
            Error::Msg(format!(
                "flash attention needs head dim 64 or 128, got {}",
                dims.d
            ))
        })?;
        self.flash_attn_fwd_bf16_tiled(q, k, v, o, lse, dims, scale, window, tiling)
    }

    /// [`Gpu::flash_attn_fwd_bf16`] with an explicit tiling from [`FwdTiling::available`].
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attn_fwd_bf16_tiled(
        &self,
        q: &CudaSlice<bf16>,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
        o: &mut CudaSlice<bf16>,
        lse: &mut CudaSlice<f32>,
        dims: FlashDims,
        scale: f32,
        window: Option<usize>,
        tiling: FwdTiling,
    ) -> Result<()> {
        dims.check()?;
        if !FwdTiling::available(dims.d).contains(&tiling) {
            return Err(Error::Msg(format!(
                "no flash forward kernel for {tiling:?} at head dim {}",
                dims.d
            )));
        }
        check_len("q", q.len(), dims.q_len())?;
        check_len("o", o.len(), dims.q_len())?;
        check_len("k", k.len(), dims.kv_len())?;
        check_len("v", v.len(), dims.kv_len())?;
        check_len("lse", lse.len(), dims.rows())?;
        let smem = (tiling.bm + 2 * tiling.bn) * (dims.d + 8) * 2;
        let f = self.flash_function(&tiling.name(dims.d), smem)?;
        let cfg = LaunchConfig {
            grid_dim: (
                (dims.b * dims.h) as u32,
                dims.t.div_ceil(tiling.bm) as u32,
                1,
            ),
            block_dim: ((tiling.warps * 32) as u32, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let (t, s, h, hk, w) = (
            dims.t as i32,
            dims.s as i32,
            dims.h as i32,
            dims.hk as i32,
            window_arg(window),
        );
        let scale_log2 = scale * std::f32::consts::LOG2_E;
        let mut b = self.stream.launch_builder(&f);
        b.arg(q)
            .arg(k)
            .arg(v)
            .arg(o)
            .arg(lse)
            .arg(&t)
            .arg(&s)
            .arg(&h)
            .arg(&hk)
            .arg(&w)
            .arg(&scale_log2);
        // SAFETY: the argument list matches FA_FWD's kernels; every buffer was checked above to
        // hold what `dims` addresses, and the tiling names a compiled kernel whose shared
        // memory is the `smem` allowed and passed.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("flash forward launch", e))?;
        Ok(())
    }

    /// Gradients of [`Gpu::flash_attn_fwd_bf16`] given its o and lse and the output gradient
    /// d_o: dq [B, T, H, D], dk, dv [B, S, Hk, D] (summed over the query heads of a group).
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attn_bwd_bf16(
        &self,
        q: &CudaSlice<bf16>,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
        o: &CudaSlice<bf16>,
        d_o: &CudaSlice<bf16>,
        lse: &CudaSlice<f32>,
        dq: &mut CudaSlice<bf16>,
        dk: &mut CudaSlice<bf16>,
        dv: &mut CudaSlice<bf16>,
        dims: FlashDims,
        scale: f32,
        window: Option<usize>,
    ) -> Result<()> {
        let kernel = if self.flash_bwd_uses_wgmma(dims.d) {
            BwdKernel::Wgmma
        } else {
            BwdKernel::MmaSync(*BwdTiling::available(dims.d).first().ok_or_else(|| {
                Error::Msg(format!(
                    "flash attention needs head dim 64 or 128, got {}",
                    dims.d
                ))
            })?)
        };
        self.flash_attn_bwd_bf16_with(
            q, k, v, o, d_o, lse, dq, dk, dv, dims, scale, window, kernel,
        )
    }

    /// [`Gpu::flash_attn_bwd_bf16`] by the given kernel: an mma.sync tiling from
    /// [`BwdTiling::available`], or the wgmma one (Hopper, head dim 128; see
    /// [`Gpu::flash_bwd_uses_wgmma`]).
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attn_bwd_bf16_with(
        &self,
        q: &CudaSlice<bf16>,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
        o: &CudaSlice<bf16>,
        d_o: &CudaSlice<bf16>,
        lse: &CudaSlice<f32>,
        dq: &mut CudaSlice<bf16>,
        dk: &mut CudaSlice<bf16>,
        dv: &mut CudaSlice<bf16>,
        dims: FlashDims,
        scale: f32,
        window: Option<usize>,
        kernel: BwdKernel,
    ) -> Result<()> {
        dims.check()?;
        for (what, len) in [("q", q.len()), ("o", o.len()), ("d_o", d_o.len())] {
            check_len(what, len, dims.q_len())?;
        }
        check_len("dq", dq.len(), dims.q_len())?;
        check_len("k", k.len(), dims.kv_len())?;
        check_len("v", v.len(), dims.kv_len())?;
        check_len("dk", dk.len(), dims.kv_len())?;
        check_len("dv", dv.len(), dims.kv_len())?;
        check_len("lse", lse.len(), dims.rows())?;
        let x = BwdBuffers {
            q,
            k,
            v,
            o,
            d_o,
            lse,
            dq,
            dk,
            dv,
        };
        match kernel {
            BwdKernel::MmaSync(tiling) => {
                if !BwdTiling::available(dims.d).contains(&tiling) {
                    return Err(Error::Msg(format!(
                        "no flash backward kernel for {tiling:?} at head dim {}",
                        dims.d
                    )));
                }
                self.bwd_mma_sync(x, dims, scale, window, tiling)
            }
            BwdKernel::Wgmma => {
                if dims.d != 128 {
                    return Err(Error::Msg(format!(
                        "the wgmma flash backward is built for head dim 128, got {}",
                        dims.d
                    )));
                }
                self.bwd_wgmma(x, dims, scale, window)
            }
        }
    }

    /// The mma.sync backward (any GPU from sm_80, head dims 64 and 128); buffers checked.
    fn bwd_mma_sync(
        &self,
        x: BwdBuffers<'_>,
        dims: FlashDims,
        scale: f32,
        window: Option<usize>,
        tiling: BwdTiling,
    ) -> Result<()> {
        let BwdBuffers {
            q,
            k,
            v,
            o,
            d_o,
            lse,
            dq,
            dk,
            dv,
        } = x;
        let rows = dims.rows();
        let mut delta = self.zeros::<f32>(rows)?;
        let mut dq_acc = self.zeros::<f32>(dims.q_len())?;
        let (t, s, h, hk, d, w) = (
            dims.t as i32,
            dims.s as i32,
            dims.h as i32,
            dims.hk as i32,
            dims.d as i32,
            window_arg(window),
        );

        let pre = self.function(FLASH_ATTN, "flash_bwd_pre")?;
        let rows_i = rows as i64;
        let mut b = self.stream.launch_builder(&pre);
        b.arg(o)
            .arg(d_o)
            .arg(&mut delta)
            .arg(&t)
            .arg(&h)
            .arg(&d)
            .arg(&rows_i);
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: o and d_o hold `rows` rows of d (checked), delta was allocated with `rows`.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("flash backward pre-pass launch", e))?;

        let smem = tiling.smem(dims.d);
        let f = self.flash_function(&tiling.name(dims.d), smem)?;
        let scale_log2 = scale * std::f32::consts::LOG2_E;
        let cfg = LaunchConfig {
            grid_dim: (
                (dims.b * dims.hk) as u32,
                dims.s.div_ceil(tiling.bn) as u32,
                1,
            ),
            block_dim: ((tiling.warps * 32) as u32, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(q)
            .arg(k)
            .arg(v)
            .arg(d_o)
            .arg(lse)
            .arg(&delta)
            .arg(&mut dq_acc)
            .arg(dk)
            .arg(dv)
            .arg(&t)
            .arg(&s)
            .arg(&h)
            .arg(&hk)
            .arg(&w)
            .arg(&scale)
            .arg(&scale_log2);
        // SAFETY: the argument list matches FA_BWD's kernels; the buffers were checked against
        // `dims` above (dq_acc and delta allocated here); the tiling names a compiled kernel
        // and `smem` is its layout in flash_bwd.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("flash backward launch", e))?;

        let conv = self.function(FLASH_ATTN, "flash_bwd_dq")?;
        let n = dims.q_len();
        let ni = n as i64;
        let mut b = self.stream.launch_builder(&conv);
        b.arg(&dq_acc).arg(dq).arg(&scale).arg(&ni);
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: dq_acc and dq hold n elements.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("flash backward dq launch", e))?;
        Ok(())
    }

    /// Whether [`Gpu::flash_attn_bwd_bf16`] takes the wgmma backward for head dim `d` here (as
    /// [`Gpu::flash_fwd_uses_wgmma`]).
    pub fn flash_bwd_uses_wgmma(&self, d: usize) -> bool {
        WGMMA_BWD_DEFAULT && d == 128 && self.sm90_function(BWD_WS, BWD_WS_SMEM).is_ok()
    }

    /// The wgmma backward (Hopper, head dim 128; buffers checked): `flash_bwd_ws_d128` after a
    /// pre-pass that packs lse (log2 units) and delta per 64-row tile. Tested by
    /// `flash_backward_matches_attention_core`.
    fn bwd_wgmma(
        &self,
        x: BwdBuffers<'_>,
        dims: FlashDims,
        scale: f32,
        window: Option<usize>,
    ) -> Result<()> {
        let BwdBuffers {
            q,
            k,
            v,
            o,
            d_o,
            lse,
            dq,
            dk,
            dv,
        } = x;
        let main = self.sm90_function(BWD_WS, BWD_WS_SMEM)?;
        let pre = self.sm90_function("flash_bwd_pre_sm90", 0)?;
        let rows = dims.rows();
        let tpad = dims.t.div_ceil(64) * 64;
        // Zeros past t: a padded row's P and dS come out zero.
        let mut ld = self.zeros::<f32>(dims.b * dims.h * tpad * 2)?;
        // 64 x 64 blocks per (batch, head, 64-row tile, column half): B·H·tpad·128 f32.
        let mut dq_acc = self.zeros::<f32>(dims.b * dims.h * tpad * 128)?;
        let (t, s, h, hk, w, tp) = (
            dims.t as i32,
            dims.s as i32,
            dims.h as i32,
            dims.hk as i32,
            window_arg(window),
            tpad as i32,
        );
        let rows_i = rows as i64;
        let mut b = self.stream.launch_builder(&pre);
        b.arg(o)
            .arg(d_o)
            .arg(lse)
            .arg(&mut ld)
            .arg(&t)
            .arg(&h)
            .arg(&tp)
            .arg(&rows_i);
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: o, d_o hold `rows` rows of 128 and lse `rows` values (checked); ld was
        // allocated for B·H·tpad pairs.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("flash backward pre-pass launch", e))?;

        let scale_log2 = scale * std::f32::consts::LOG2_E;
        let (qp, _rq) = q.device_ptr(&self.stream);
        let (kp, _rk) = k.device_ptr(&self.stream);
        let (vp, _rv) = v.device_ptr(&self.stream);
        let (dop, _rdo) = d_o.device_ptr(&self.stream);
        let maps = [
            TmaMap::rows_of_heads(kp, dims.b, dims.s, dims.hk, 128)?,
            TmaMap::rows_of_heads(vp, dims.b, dims.s, dims.hk, 128)?,
            TmaMap::rows_of_heads(qp, dims.b, dims.t, dims.h, 64)?,
            TmaMap::rows_of_heads(dop, dims.b, dims.t, dims.h, 64)?,
        ];
        let cfg = LaunchConfig {
            grid_dim: ((dims.b * dims.hk) as u32, dims.s.div_ceil(128) as u32, 1),
            block_dim: (384, 1, 1),
            shared_mem_bytes: BWD_WS_SMEM as u32,
        };
        let mut b = self.stream.launch_builder(&main);
        b.arg(&maps[0])
            .arg(&maps[1])
            .arg(&maps[2])
            .arg(&maps[3])
            .arg(&ld)
            .arg(&mut dq_acc)
            .arg(dk)
            .arg(dv)
            .arg(&t)
            .arg(&s)
            .arg(&h)
            .arg(&hk)
            .arg(&w)
            .arg(&tp)
            .arg(&scale)
            .arg(&scale_log2);
        // SAFETY: the argument list matches flash_bwd_ws_d128; the tensor maps cover k, v, q,
        // d_o as checked against `dims`; ld and dq_acc were allocated here for those shapes;
        // its shared memory is BWD_WS_SMEM, allowed when the function was loaded.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("flash wgmma backward launch", e))?;

        let conv = self.sm90_function("flash_bwd_dq_sm90", 0)?;
        let pairs = dims.q_len() / 2;
        let (pairs_i, tiles) = (pairs as i64, (tpad / 64) as i32);
        let mut b = self.stream.launch_builder(&conv);
        b.arg(&dq_acc)
            .arg(dq)
            .arg(&scale)
            .arg(&t)
            .arg(&h)
            .arg(&tiles)
            .arg(&pairs_i);
        let cfg = LaunchConfig {
            grid_dim: (pairs.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: dq holds 2·pairs elements (checked); dq_acc was allocated above with the
        // block layout flash_bwd_dq_sm90 reads, B·H·tpad·128 f32.
        unsafe { b.launch(cfg) }.map_err(|e| cuda_err("flash backward dq launch", e))?;
        Ok(())
    }
}
