//! Dense f32 matrix products through the `gemm` crate (blocked, SIMD, rayon-parallel).
use gemm::{gemm, Parallelism};

fn par(m: usize, n: usize, k: usize) -> Parallelism {
    // Tiny products are faster on one thread than with rayon's fork/join cost.
    if m * n * k < 32 * 1024 {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// `out[M,N] (+)= a[M,K] @ b[N,K]^T` — the `x @ W^T` of a linear layer with W stored [out, in].
pub fn matmul_nt(a: &[f32], b: &[f32], out: &mut [f32], m: usize, n: usize, k: usize, acc: bool) {
    assert!(a.len() >= m * k && b.len() >= n * k && out.len() >= m * n);
    // SAFETY: the asserts above bound every index gemm touches with these strides.
    unsafe {
        gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            acc,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            par(m, n, k),
        )
    }
}

/// `out[M,N] (+)= a[M,K] @ b[K,N]`.
pub fn matmul_nn(a: &[f32], b: &[f32], out: &mut [f32], m: usize, n: usize, k: usize, acc: bool) {
    assert!(a.len() >= m * k && b.len() >= k * n && out.len() >= m * n);
    // SAFETY: bounds asserted above.
    unsafe {
        gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            acc,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par(m, n, k),
        )
    }
}

/// `out[M,N] (+)= a[K,M]^T @ b[K,N]` — the weight gradient `dy^T @ x` of a linear layer.
pub fn matmul_tn(a: &[f32], b: &[f32], out: &mut [f32], m: usize, n: usize, k: usize, acc: bool) {
    assert!(a.len() >= k * m && b.len() >= k * n && out.len() >= m * n);
    // SAFETY: bounds asserted above.
    unsafe {
        gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            acc,
            a.as_ptr(),
            m as isize,
            1,
            b.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par(m, n, k),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_nt(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut o = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                o[i * n + j] = (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum();
            }
        }
        o
    }

    fn rnd(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::SplitMix64::new(seed);
        (0..n).map(|_| r.uniform() as f32 - 0.5).collect()
    }

    #[test]
    fn nt_nn_tn_agree_with_naive() {
        let (m, n, k) = (7, 13, 33);
        let a = rnd(m * k, 1);
        let b = rnd(n * k, 2);
        let want = naive_nt(&a, &b, m, n, k);
        let mut got = vec![0.0; m * n];
        matmul_nt(&a, &b, &mut got, m, n, k, false);
        for (x, y) in got.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
        // b^T as [K, N] for nn
        let mut bt = vec![0.0; k * n];
        for j in 0..n {
            for p in 0..k {
                bt[p * n + j] = b[j * k + p];
            }
        }
        let mut got = vec![0.0; m * n];
        matmul_nn(&a, &bt, &mut got, m, n, k, false);
        for (x, y) in got.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
        // a^T as [K, M] for tn
        let mut at = vec![0.0; k * m];
        for i in 0..m {
            for p in 0..k {
                at[p * m + i] = a[i * k + p];
            }
        }
        let mut got = vec![1.0; m * n];
        matmul_tn(&at, &bt, &mut got, m, n, k, true);
        for (x, y) in got.iter().zip(&want) {
            assert!((x - 1.0 - y).abs() < 1e-5);
        }
    }
}
