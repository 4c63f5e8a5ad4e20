//! CPU kernels on plain f32 slices. Each function states its shapes; callers (the `ops`
//! dispatch layer, the model) check them. Parallelism is rayon's, over rows.

pub mod attention;
pub mod ggml_exp;
pub mod ggml_order;
pub mod matmul;
pub mod norm;
pub mod rope;

pub use attention::{causal_attention, causal_attention_f16kv};
pub use matmul::{matmul_nn, matmul_nt, matmul_tn};
pub use norm::{rms_norm, rms_norm_backward};
pub use rope::Rope;

/// Whether the CPU has AVX2 and FMA: the llama.cpp-exact kernels (attention, SwiGLU, RoPE)
/// are compiled for it once more so that their fused multiply-adds are instructions.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("fma") && is_x86_feature_detected!("avx2"))
}

/// `sum_i a[i] * b[i]` with 8 independent accumulators so LLVM vectorises it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// `y += a * x`
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// In-place numerically stable softmax of one row (sum in f64, as ggml's soft_max does).
pub fn softmax_inplace(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// log-softmax of one row into a new vector.
pub fn log_softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + x.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
    x.iter().map(|v| v - lse).collect()
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// d silu / dx = σ(x)·(1 + x·(1 − σ(x))).
#[inline]
pub fn silu_grad(x: f32) -> f32 {
    let s = 1.0 / (1.0 + (-x).exp());
    s * (1.0 + x * (1.0 - s))
}

/// SwiGLU: `out[i] = silu(gate[i]) * up[i]`, rounding as llama.cpp's CPU backend does
/// (see [`ggml_exp`]).
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    ggml_exp::swiglu(gate, up, out)
}

/// Gathers rows of `table` ([V, D]) for `ids` into `out` ([ids.len(), D]).
pub fn embedding(table: &[f32], d: usize, ids: &[u32], out: &mut [f32]) {
    for (row, &id) in out.chunks_exact_mut(d).zip(ids) {
        let id = id as usize;
        row.copy_from_slice(&table[id * d..(id + 1) * d]);
    }
}

/// `y += x` elementwise.
pub fn add_inplace(y: &mut [f32], x: &[f32]) {
    for (a, b) in y.iter_mut().zip(x) {
        *a += b;
    }
}
