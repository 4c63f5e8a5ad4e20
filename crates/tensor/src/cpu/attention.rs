//! Causal grouped-query attention over a contiguous KV history (reference-quality CPU path,
//! parallel over heads; no tiling). Used for prefill and decode alike.
use super::ggml_order::{self, DotOrder};
use super::{dot, ggml_exp, softmax_inplace};
use rayon::prelude::*;

/// q: [T, H, Dh] for tokens at positions `past .. past+T`;
/// k, v: [S, Hk, Dh] with S = past + T (the whole history, this chunk included);
/// window: `Some(W)` lets a query see only the W latest keys, itself included.
/// Returns out: [T, H, Dh].
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    s: usize,
    h: usize,
    hk: usize,
    dh: usize,
    window: Option<usize>,
    out: &mut [f32],
) {
    let past = s - t;
    let rep = h / hk;
    let scale = 1.0 / (dh as f32).sqrt();
    // One work item per (token, head) row of the output.
    out.par_chunks_mut(dh).enumerate().for_each(|(row, o)| {
        let (ti, hi) = (row / h, row % h);
        let kvh = hi / rep;
        let qv = &q[(ti * h + hi) * dh..(ti * h + hi + 1) * dh];
        let last = past + ti; // inclusive
        let first = window.map_or(0, |w| (last + 1).saturating_sub(w));
        let mut scores: Vec<f32> = (first..=last)
            .map(|j| dot(qv, &k[(j * hk + kvh) * dh..(j * hk + kvh + 1) * dh]) * scale)
            .collect();
        softmax_inplace(&mut scores);
        o.fill(0.0);
        for (p, j) in scores.iter().zip(first..=last) {
            super::axpy(*p, &v[(j * hk + kvh) * dh..(j * hk + kvh + 1) * dh], o);
        }
    });
}

/// The same attention over an f16 KV cache, rounding as llama.cpp's CPU path does without
/// flash attention (AVX-512 build): q is rounded to f16 for the q·k dots, scores exponentiate
/// with ggml's `expf`, the probabilities are rounded to f16 for the p·v sums, and every sum
/// runs in ggml's order — tinyBLAS's for a batch of tokens, `ggml_vec_dot_f16`'s for one
/// token (see [`super::ggml_order`]). The q·k dots run over the head dims in the order the
/// caller stores them: llama.cpp's GGUF order (rotary pairs adjacent) to match it bit for bit.
/// Halves KV memory, too.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_f16kv(
    q: &[f32],
    k: &[half::f16],
    v: &[half::f16],
    t: usize,
    s: usize,
    h: usize,
    hk: usize,
    dh: usize,
    window: Option<usize>,
    out: &mut [f32],
) {
    let order = if t == 1 {
        DotOrder::Decode
    } else {
        DotOrder::Batch
    };
    let shape = Shape {
        t,
        s,
        h,
        hk,
        dh,
        window,
    };
    out.par_chunks_mut(dh).enumerate().for_each(|(row, o)| {
        #[cfg(target_arch = "x86_64")]
        {
            if super::has_fma() {
                // SAFETY: FMA presence checked at run time just above.
                return unsafe { attention_row_fma(order, &shape, q, k, v, row, o) };
            }
        }
        attention_row(order, &shape, q, k, v, row, o)
    });
}

struct Shape {
    t: usize,
    s: usize,
    h: usize,
    hk: usize,
    dh: usize,
    window: Option<usize>,
}

/// [`attention_row`] compiled with hardware FMA (the fused multiply-adds would otherwise be
/// libm calls).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attention_row_fma(
    order: DotOrder,
    sh: &Shape,
    q: &[f32],
    k: &[half::f16],
    v: &[half::f16],
    row: usize,
    o: &mut [f32],
) {
    attention_row(order, sh, q, k, v, row, o)
}

/// One (token, head) output row of [`causal_attention_f16kv`].
#[inline(always)]
fn attention_row(
    order: DotOrder,
    sh: &Shape,
    q: &[f32],
    k: &[half::f16],
    v: &[half::f16],
    row: usize,
    o: &mut [f32],
) {
    use half::slice::HalfFloatSliceExt;
    let (h, hk, dh) = (sh.h, sh.hk, sh.dh);
    let past = sh.s - sh.t;
    let scale = 1.0 / (dh as f32).sqrt();
    let (ti, hi) = (row / h, row % h);
    let kvh = hi / (h / hk);
    let qv: Vec<f32> = q[(ti * h + hi) * dh..(ti * h + hi + 1) * dh]
        .iter()
        .map(|&x| half::f16::from_f32(x).to_f32())
        .collect();
    let last = past + ti;
    let first = sh.window.map_or(0, |w| (last + 1).saturating_sub(w));
    let mut kv = vec![0f32; dh];
    // Plain loops, no closures: a closure would not inherit the caller's FMA target feature
    // and every fused multiply-add would become a libm call.
    let mut p = Vec::with_capacity(last + 1 - first);
    let mut max = f32::NEG_INFINITY;
    for j in first..=last {
        k[(j * hk + kvh) * dh..(j * hk + kvh + 1) * dh].convert_to_f32_slice(&mut kv);
        let sc = ggml_order::dot(order, &qv, &kv) * scale;
        max = max.max(sc);
        p.push(sc);
    }
    for x in p.iter_mut() {
        *x = ggml_exp::expf(*x - max);
    }
    let inv = (1.0 / ggml_order::softmax_sum(&p, first)) as f32;
    // acc[(slot * 16 + lane) * dh + d]: cell j feeds lane j % 16 of accumulator
    // (j / 16) % slots; contiguous in d so that each cell's update is one vector FMA sweep.
    let slots = order.accumulators();
    let mut acc = vec![0f32; slots * 16 * dh];
    for (pj, j) in p.iter().zip(first..=last) {
        let pj = half::f16::from_f32(pj * inv).to_f32();
        v[(j * hk + kvh) * dh..(j * hk + kvh + 1) * dh].convert_to_f32_slice(&mut kv);
        let at = (((j / 16) % slots) * 16 + j % 16) * dh;
        for (a, &vd) in acc[at..at + dh].iter_mut().zip(&kv) {
            *a = pj.mul_add(vd, *a);
        }
    }
    let mut four = [[0f32; 16]; 4];
    for (d, od) in o.iter_mut().enumerate() {
        for (sl, f) in four.iter_mut().enumerate().take(slots) {
            for (lane, x) in f.iter_mut().enumerate() {
                *x = acc[(sl * 16 + lane) * dh + d];
            }
        }
        *od = ggml_order::reduce16(&ggml_order::combine(order, &four));
    }
}
