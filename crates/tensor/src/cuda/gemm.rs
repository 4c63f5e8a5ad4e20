//! cuBLAS GEMMs beyond cudarc's same-type `Gemm` trait: bf16 operands with an f32 result
//! (logits: bf16 has 8 bits of mantissa, so the largest logits of a 49K vocabulary tie
//! constantly in bf16 and greedy decoding would pick by index).
use super::{cuda_err, Gpu};
use crate::Result;
use cudarc::cublas::{result::gemm_ex, sys};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use half::bf16;

impl Gpu {
    /// `c[M,N] = a[M,K] · b[N,K]ᵀ`, bf16 operands, f32 accumulation and result, row-major.
    pub fn matmul_nt_bf16_f32(
        &self,
        a: &CudaSlice<bf16>,
        b: &CudaSlice<bf16>,
        c: &mut CudaSlice<f32>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        if self.split_invariant() {
            return self.matmul_units_f32(a, b, c, (m, n, k), &[0, k]);
        }
        self.gemm_bf16_f32((false, true), a, b, c, (m, n, k), false)
    }

    /// `c[M,N] (+)= op(a) · op(b)`, bf16 operands, f32 accumulation and result, row-major:
    /// op(a) is [M,K] (`a` stored [M,K], or [K,M] when `ta`), op(b) is [K,N] (`b` stored [K,N],
    /// or [N,K] when `tb`). With `accumulate` the product is added to `c` (gradient
    /// accumulation). The backward of `y = x · wᵀ` is `dx = dy · w` (no transposes) and
    /// `dw += dyᵀ · x` (`ta`).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16_f32(
        &self,
        (ta, tb): (bool, bool),
        a: &CudaSlice<bf16>,
        b: &CudaSlice<bf16>,
        c: &mut CudaSlice<f32>,
        (m, n, k): (usize, usize, usize),
        accumulate: bool,
    ) -> Result<()> {
        if a.len() < m * k || b.len() < n * k || c.len() < m * n {
            return Err(crate::Error::Msg(format!(
                "gemm_bf16_f32: buffers of {}, {}, {} values for m={m} n={n} k={k}",
                a.len(),
                b.len(),
                c.len()
            )));
        }
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        let op = |t: bool| {
            if t {
                sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        // Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ; a row-major [r, c]
        // buffer is a column-major [c, r] one with leading dimension c.
        let (ldb, lda) = (if tb { k } else { n }, if ta { m } else { k });
        let stream = &self.stream;
        let (ap, _ra) = a.device_ptr(stream);
        let (bp, _rb) = b.device_ptr(stream);
        let (cp, _rc) = c.device_ptr_mut(stream);
        // SAFETY: pointers are live device allocations of the sizes checked above; alpha and
        // beta are host scalars that outlive the call.
        unsafe {
            gemm_ex(
                *self.blas.handle(),
                op(tb),
                op(ta),
                n as i32,
                m as i32,
                k as i32,
                (&alpha) as *const f32 as *const _,
                bp as *const _,
                sys::cudaDataType_t::CUDA_R_16BF,
                ldb as i32,
                ap as *const _,
                sys::cudaDataType_t::CUDA_R_16BF,
                lda as i32,
                (&beta) as *const f32 as *const _,
                cp as *mut _,
                sys::cudaDataType_t::CUDA_R_32F,
                n as i32,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| cuda_err("cuBLAS GEMM (bf16 in, f32 out)", e))
    }
}
