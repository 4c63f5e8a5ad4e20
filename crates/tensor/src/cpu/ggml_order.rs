//! The summation orders of llama.cpp's CPU attention (non-flash path, f16 KV cache, AVX-512
//! build), written out so that our scores and outputs carry the same bits:
//! - a batch of several tokens runs K·Q and V·P through llamafile's tinyBLAS: one 16-lane
//!   accumulator per output, fused multiply-adds over the inner dimension in chunks of 16,
//!   then a horizontal sum in the order of GCC's `_mm512_reduce_add_ps`;
//! - one token at a time (decode) runs them through `ggml_vec_dot_f16`: four 16-lane
//!   accumulators taking chunks in turn, added as (0 + 2) + (1 + 3), then the same reduction;
//! - softmax exponentiates with ggml's `expf` and sums each 16-lane chunk (aligned to KV cell
//!   0) with that reduction into an f64 total.
//!
//! The inner dimensions here (head dim, KV length padded by zeros) are multiples of 64, where
//! both of ggml's paths are the vector loops written out below.

/// Which of llama.cpp's two matmul paths to reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotOrder {
    /// tinyBLAS (prompt batches of two or more tokens).
    Batch,
    /// `ggml_vec_dot_f16` (single-token decode).
    Decode,
}

impl DotOrder {
    /// Number of 16-lane accumulators the order cycles through.
    pub fn accumulators(self) -> usize {
        match self {
            DotOrder::Batch => 1,
            DotOrder::Decode => 4,
        }
    }
}

/// GCC's `_mm512_reduce_add_ps`: halves added pairwise down to one lane.
#[inline(always)]
pub fn reduce16(v: &[f32; 16]) -> f32 {
    let mut t3 = [0f32; 8];
    for i in 0..8 {
        t3[i] = v[i + 8] + v[i];
    }
    let t6 = [t3[4] + t3[0], t3[5] + t3[1], t3[6] + t3[2], t3[7] + t3[3]];
    let t8 = [t6[0] + t6[2], t6[1] + t6[3]];
    t8[0] + t8[1]
}

/// Adds the accumulators of [`DotOrder`] into one 16-lane vector: (0 + 2) + (1 + 3) for the
/// decode order, the single accumulator for the batch order.
#[inline(always)]
pub fn combine(order: DotOrder, acc: &[[f32; 16]]) -> [f32; 16] {
    match order {
        DotOrder::Batch => acc[0],
        DotOrder::Decode => {
            let mut s = [0f32; 16];
            for l in 0..16 {
                s[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
            }
            s
        }
    }
}

/// Dot product of two equal-length rows in `order` (zeros pad the tail to a multiple of 16).
#[inline(always)]
pub fn dot(order: DotOrder, a: &[f32], b: &[f32]) -> f32 {
    let na = order.accumulators();
    let mut acc = [[0f32; 16]; 4];
    for (c, (ca, cb)) in a.chunks(16).zip(b.chunks(16)).enumerate() {
        let slot = &mut acc[c % na];
        for l in 0..ca.len() {
            slot[l] = ca[l].mul_add(cb[l], slot[l]);
        }
    }
    reduce16(&combine(order, &acc))
}

/// Sum of a row of non-negative softmax numerators as ggml's `ggml_vec_soft_max_f32` forms it:
/// each 16-lane chunk reduced in f32, the chunks added in f64. `offset` is the absolute index
/// of `v[0]` (chunks are aligned to index 0; the lanes before `offset` are zero).
#[inline(always)]
pub fn softmax_sum(v: &[f32], offset: usize) -> f64 {
    let mut sum = 0f64;
    let mut lanes = [0f32; 16];
    let mut i = 0;
    while i < v.len() {
        let abs = offset + i;
        let lane0 = abs % 16;
        let take = (16 - lane0).min(v.len() - i);
        lanes.fill(0.0);
        lanes[lane0..lane0 + take].copy_from_slice(&v[i..i + take]);
        sum += reduce16(&lanes) as f64;
        i += take;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_dots_and_differ_only_in_rounding() {
        let mut r = crate::rng::SplitMix64::new(5);
        let a: Vec<f32> = (0..256).map(|_| r.uniform() as f32 - 0.5).collect();
        let b: Vec<f32> = (0..256).map(|_| r.uniform() as f32 - 0.5).collect();
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        for o in [DotOrder::Batch, DotOrder::Decode] {
            assert!((dot(o, &a, &b) as f64 - exact).abs() < 1e-5, "{o:?}");
        }
        // Hand-checked structure: with one nonzero per chunk, both orders are exact.
        let mut e = vec![0f32; 64];
        e[0] = 1.0;
        e[17] = 2.0;
        e[34] = 4.0;
        e[51] = 8.0;
        assert_eq!(dot(DotOrder::Batch, &e, &vec![1.0; 64]), 15.0);
        assert_eq!(dot(DotOrder::Decode, &e, &vec![1.0; 64]), 15.0);
    }

    #[test]
    fn softmax_sum_aligns_chunks_to_cell_zero() {
        let v = vec![1.0f32; 40];
        assert_eq!(softmax_sum(&v, 0), 40.0);
        assert_eq!(softmax_sum(&v, 7), 40.0);
        // Within a chunk the sum is f32 (1 + eps/4 rounds to 1); across chunks it is f64.
        let tiny = f32::EPSILON / 4.0;
        let w = [1.0, tiny, 1.0, tiny];
        assert_eq!(softmax_sum(&w, 14), 2.0);
        assert_eq!(softmax_sum(&w[1..], 15), tiny as f64 + 1.0);
    }
}
