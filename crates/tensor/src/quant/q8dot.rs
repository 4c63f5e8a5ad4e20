//! Integer dot products of quantized weight rows with activations quantized to 8 bits,
//! the scheme llama.cpp uses on the CPU: each 32-value activation block becomes
//! `d = max|x| / 127`, `q = round(x / d)`, and `s = d * sum(q)` (needed by Q4_1's offset).
//! The AVX2 paths are chosen at run time; the scalar paths are the reference they are tested
//! against.
use super::GgmlType;
use half::f16;

/// One 32-value activation block (llama.cpp's block_q8_1, with f32 scales).
#[derive(Clone, Copy)]
pub struct Q8Block {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

/// Quantizes `x` (a multiple of 32 long) into Q8 blocks, exactly as llama.cpp's AVX2
/// `quantize_row_q8_1` does: scale from the unrounded `d`, round half to even, store `d` and
/// `s` rounded through f16. Matching this rounding matters for near-tie argmaxes.
pub fn quantize_q8(x: &[f32]) -> Vec<Q8Block> {
    x.chunks_exact(32)
        .map(|c| {
            let amax = c.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut qs = [0i8; 32];
            let mut sum = 0i32;
            for (q, v) in qs.iter_mut().zip(c) {
                // Round half to even by the 1.5 * 2^23 trick (exact for |x| < 2^22;
                // here |x| <= 127): `round_ties_even` is a libm call.
                const MAGIC: f32 = 12582912.0;
                *q = (((v * id) + MAGIC) - MAGIC) as i8;
                sum += *q as i32;
            }
            Q8Block {
                d: f16::from_f32(d).to_f32(),
                s: f16::from_f32(d * sum as f32).to_f32(),
                qs,
            }
        })
        .collect()
}

/// Dot of one weight row (raw GGML bytes of type `ty`) with quantized activations.
#[inline]
pub fn dot_row(ty: GgmlType, row: &[u8], x: &[Q8Block]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() {
            // SAFETY: AVX2, FMA and F16C presence checked at run time just above.
            return unsafe { avx2::dot_row(ty, row, x) };
        }
    }
    dot_row_scalar(ty, row, x)
}

/// Four dots of one weight row with four tokens' activations: the weight blocks are unpacked
/// once for all four (prefill). Each result equals [`dot_row`] of that token exactly.
#[inline]
pub fn dot_rows4(ty: GgmlType, row: &[u8], x: [&[Q8Block]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() {
            // SAFETY: AVX2, FMA and F16C presence checked at run time just above.
            return unsafe { avx2::dot_rows4(ty, row, x) };
        }
    }
    x.map(|xi| dot_row_scalar(ty, row, xi))
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Portable reference for [`dot_row`].
pub fn dot_row_scalar(ty: GgmlType, row: &[u8], x: &[Q8Block]) -> f32 {
    let bb = ty.block_bytes();
    let mut acc = 0f32;
    for (b, xb) in row.chunks_exact(bb).zip(x) {
        match ty {
            GgmlType::Q4_0 => {
                let mut s = 0i32;
                for j in 0..16 {
                    let q = b[2 + j];
                    s += ((q & 0xF) as i32 - 8) * xb.qs[j] as i32;
                    s += ((q >> 4) as i32 - 8) * xb.qs[j + 16] as i32;
                }
                acc += f16_at(b, 0) * xb.d * s as f32;
            }
            GgmlType::Q4_1 => {
                let mut s = 0i32;
                for j in 0..16 {
                    let q = b[4 + j];
                    s += (q & 0xF) as i32 * xb.qs[j] as i32;
                    s += (q >> 4) as i32 * xb.qs[j + 16] as i32;
                }
                acc += f16_at(b, 0) * xb.d * s as f32 + f16_at(b, 2) * xb.s;
            }
            GgmlType::Q8_0 => {
                let mut s = 0i32;
                for j in 0..32 {
                    s += b[2 + j] as i8 as i32 * xb.qs[j] as i32;
                }
                acc += f16_at(b, 0) * xb.d * s as f32;
            }
            _ => unreachable!("dot_row is only built for Q4_0, Q4_1 and Q8_0 weights"),
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{GgmlType, Q8Block};
    use std::arch::x86_64::*;

    /// f16 -> f32 with the F16C instruction (half's portable conversion re-checks CPU
    /// features on every call, which cost 17% of decode time).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_at(b: &[u8], i: usize) -> f32 {
        let h = u16::from_le_bytes([*b.get_unchecked(i), *b.get_unchecked(i + 1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// i8 x i8 dot of 32 lanes, summed pairwise into 8 i32 lanes (sign trick for maddubs).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_i8(w: __m256i, x: __m256i) -> __m256i {
        let aw = _mm256_sign_epi8(w, w);
        let sx = _mm256_sign_epi8(x, w);
        _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1))
    }

    /// Unpacks 16 bytes of nibbles into 32 u8 lanes: low nibbles first, then high nibbles.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        let q = _mm_loadu_si128(p as *const __m128i);
        let m = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(q, m);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m);
        _mm256_set_m128i(hi, lo)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_row(ty: GgmlType, row: &[u8], x: &[Q8Block]) -> f32 {
        let bb = ty.block_bytes();
        let nb = row.len() / bb;
        debug_assert!(x.len() >= nb);
        let mut acc = _mm256_setzero_ps();
        let mut offs = 0f32;
        let ones = _mm256_set1_epi16(1);
        for i in 0..nb {
            let b = row.get_unchecked(i * bb..(i + 1) * bb);
            let xb = x.get_unchecked(i);
            let xq = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            let (sumi, scale) = match ty {
                GgmlType::Q4_0 => {
                    let w = _mm256_sub_epi8(nibbles(b.as_ptr().add(2)), _mm256_set1_epi8(8));
                    (dot_i8(w, xq), f16_at(b, 0) * xb.d)
                }
                GgmlType::Q4_1 => {
                    let w = nibbles(b.as_ptr().add(4));
                    offs += f16_at(b, 2) * xb.s;
                    (
                        _mm256_madd_epi16(_mm256_maddubs_epi16(w, xq), ones),
                        f16_at(b, 0) * xb.d,
                    )
                }
                GgmlType::Q8_0 => {
                    let w = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
                    (dot_i8(w, xq), f16_at(b, 0) * xb.d)
                }
                _ => unreachable!("dot_row is only built for Q4_0, Q4_1 and Q8_0 weights"),
            };
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(scale), acc);
        }
        hsum(acc) + offs
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows4(ty: GgmlType, row: &[u8], x: [&[Q8Block]; 4]) -> [f32; 4] {
        let bb = ty.block_bytes();
        let nb = row.len() / bb;
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut offs = [0f32; 4];
        let ones = _mm256_set1_epi16(1);
        for i in 0..nb {
            let b = row.get_unchecked(i * bb..(i + 1) * bb);
            let dw = f16_at(b, 0);
            // Unpack the weight block once; the sign trick's |w| is shared too.
            let (w, aw, q41) = match ty {
                GgmlType::Q4_0 => {
                    let w = _mm256_sub_epi8(nibbles(b.as_ptr().add(2)), _mm256_set1_epi8(8));
                    (w, _mm256_sign_epi8(w, w), false)
                }
                GgmlType::Q4_1 => {
                    let w = nibbles(b.as_ptr().add(4));
                    (w, w, true)
                }
                GgmlType::Q8_0 => {
                    let w = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
                    (w, _mm256_sign_epi8(w, w), false)
                }
                _ => unreachable!("dot_rows4 is only built for Q4_0, Q4_1 and Q8_0 weights"),
            };
            for j in 0..4 {
                let xb = x[j].get_unchecked(i);
                let xq = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
                let sumi = if q41 {
                    offs[j] += f16_at(b, 2) * xb.s;
                    _mm256_madd_epi16(_mm256_maddubs_epi16(w, xq), ones)
                } else {
                    _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xq, w)), ones)
                };
                acc[j] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(dw * xb.d), acc[j]);
            }
        }
        [
            hsum(acc[0]) + offs[0],
            hsum(acc[1]) + offs[1],
            hsum(acc[2]) + offs[2],
            hsum(acc[3]) + offs[3],
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut r = crate::rng::SplitMix64::new(seed);
        (0..n).map(|_| (r.next_u64() >> 56) as u8).collect()
    }

    /// Fills the f16 scale fields of each block with sane values (random bytes can be NaN).
    fn fix_scales(ty: GgmlType, b: &mut [u8]) {
        for (i, blk) in b.chunks_exact_mut(ty.block_bytes()).enumerate() {
            let d = f16::from_f32(0.01 + (i % 7) as f32 * 0.003).to_le_bytes();
            let m = f16::from_f32(-0.05 + (i % 5) as f32 * 0.01).to_le_bytes();
            blk[0..2].copy_from_slice(&d);
            if ty == GgmlType::Q4_1 {
                blk[2..4].copy_from_slice(&m);
            }
        }
    }

    #[test]
    fn four_token_dots_equal_single_dots_exactly() {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let n = 32 * 7;
            let mut w = bytes(ty.bytes_for(n).unwrap(), 3);
            fix_scales(ty, &mut w);
            let xs: Vec<Vec<Q8Block>> = (0..4)
                .map(|k| {
                    quantize_q8(
                        &bytes(n, 10 + k)
                            .iter()
                            .map(|&b| (b as f32 - 128.0) / 40.0)
                            .collect::<Vec<_>>(),
                    )
                })
                .collect();
            let four = dot_rows4(ty, &w, [&xs[0], &xs[1], &xs[2], &xs[3]]);
            for k in 0..4 {
                assert_eq!(
                    four[k].to_bits(),
                    dot_row(ty, &w, &xs[k]).to_bits(),
                    "{ty:?} token {k}"
                );
            }
        }
    }

    #[test]
    fn simd_and_scalar_agree_with_dequantized_dot() {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let n = 32 * 18;
            let mut w = bytes(ty.bytes_for(n).unwrap(), 7);
            fix_scales(ty, &mut w);
            let x: Vec<f32> = bytes(n, 9)
                .iter()
                .map(|&b| (b as f32 - 128.0) / 50.0)
                .collect();
            let mut wf = vec![0.0; n];
            dequantize(ty, &w, &mut wf).unwrap();
            let exact: f32 = wf.iter().zip(&x).map(|(a, b)| a * b).sum();
            let xq = quantize_q8(&x);
            let scalar = dot_row_scalar(ty, &w, &xq);
            let fast = dot_row(ty, &w, &xq);
            assert!(
                (scalar - fast).abs() <= 1e-4 * scalar.abs().max(1.0),
                "{ty:?} {scalar} {fast}"
            );
            // 8-bit activations: about 0.5% relative error on a dot of this size.
            let scale: f32 = wf.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
            assert!(
                (scalar - exact).abs() < 0.01 * scale,
                "{ty:?} {scalar} vs {exact}"
            );
        }
    }
}
