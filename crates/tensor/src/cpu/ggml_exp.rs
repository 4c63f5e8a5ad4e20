//! The exponential that llama.cpp's CPU backend uses in SiLU/SwiGLU and softmax
//! (`ggml_v_expf`, ARM's optimized-routines polynomial, in its AVX-512 form), written out per
//! lane so that our activations round exactly as llama.cpp's do. It differs from libm's `expf`
//! by up to ~1.5 ulp; on a 4-bit model with 8-bit activation quantization such ulps decide
//! near-tied argmaxes, so matching llama.cpp means matching this function bit for bit.
//! (ggml's AVX2 build scales differently, `fma(j, k, k)` instead of `scalef(1 + j, n)`; the
//! agreement fixtures come from an AVX-512 build.)

const SHIFT: f32 = 12582912.0; // 0x1.8p23: adding it rounds to an integer
const LOG2E: f32 = f32::from_bits(0x3fb8_aa3b); // 0x1.715476p+0
const LN2_HI: f32 = f32::from_bits(0x3f31_7200); // 0x1.62e4p-1
const LN2_LO: f32 = f32::from_bits(0x35bf_be8e); // 0x1.7f7d1cp-20
const C0: f32 = f32::from_bits(0x3f7f_fff6); // 0x1.ffffecp-1
const C1: f32 = f32::from_bits(0x3eff_fedb); // 0x1.fffdb6p-2
const C2: f32 = f32::from_bits(0x3e2a_af33); // 0x1.555e66p-3
const C3: f32 = f32::from_bits(0x3d2b_9f17); // 0x1.573e2ep-5
const C4: f32 = f32::from_bits(0x3c07_2010); // 0x1.0e4020p-7

/// SIMD width of the AVX-512 loops: ggml runs `ggml_v_expf` on whole groups of 16 lanes and
/// libm's `expf` on the tail.
pub const LANES: usize = 16;

/// One lane of ggml's AVX-512 `ggml_v_expf`.
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let z = x.mul_add(LOG2E, SHIFT);
    let n = z - SHIFT;
    let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let u = b * b;
    let j = C4
        .mul_add(b, C3)
        .mul_add(u, C2.mul_add(b, C1))
        .mul_add(u, C0.mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // vscalefps: j * 2^n with one rounding (also into the subnormal range).
    (j as f64 * f64::from_bits(((n as i64 + 1023) as u64) << 52)) as f32
}

/// ggml's vector SiLU lane: `x / (1 + expf(0 - x))`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + expf(0.0 - x))
}

/// SwiGLU exactly as ggml's `ggml_vec_swiglu_f32`: vector lanes for whole groups of
/// [`LANES`], libm for the tail.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::has_fma() {
            // SAFETY: FMA presence checked at run time just above.
            return unsafe { swiglu_fma(gate, up, out) };
        }
    }
    swiglu_lanes(gate, up, out)
}

/// [`swiglu_lanes`] with hardware FMA (the fused multiply-adds would otherwise be libm calls).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_fma(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_lanes(gate, up, out)
}

#[inline(always)]
fn swiglu_lanes(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len().min(up.len()).min(out.len());
    let simd = n / LANES * LANES;
    for i in 0..simd {
        out[i] = silu(gate[i]) * up[i];
    }
    for i in simd..n {
        out[i] = super::silu(gate[i]) * up[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_to_libm_everywhere_and_exact_at_the_ends() {
        let mut x = -110.0f32;
        while x < 90.0 {
            let (a, b) = (expf(x), x.exp());
            // ggml documents a maximum error of 1.45 ulp + 0.5.
            let ulp = (b.to_bits() as i64 - a.to_bits() as i64).abs();
            assert!(ulp <= 2 || b < 1e-37, "{x}: {a} vs {b} ({ulp} ulp)");
            x += 0.0137;
        }
        assert_eq!(expf(0.0), 1.0);
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(-200.0), 0.0);
        assert_eq!(expf(200.0), f32::INFINITY);
    }
}
