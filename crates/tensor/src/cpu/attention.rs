//! Causal grouped-query attention over a contiguous KV history (reference-quality CPU path,
//! parallel over heads; no tiling). Used for prefill and decode alike.
use super::{dot, softmax_inplace};
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
/// flash attention: q is rounded to f16 for the q·k dots, and the softmax probabilities are
/// rounded to f16 for the p·v sum (dots accumulate in f32). Halves KV memory, too.
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
    use half::slice::HalfFloatSliceExt;
    let past = s - t;
    let rep = h / hk;
    let scale = 1.0 / (dh as f32).sqrt();
    out.par_chunks_mut(dh).enumerate().for_each(|(row, o)| {
        let (ti, hi) = (row / h, row % h);
        let kvh = hi / rep;
        let qv: Vec<f32> = q[(ti * h + hi) * dh..(ti * h + hi + 1) * dh]
            .iter()
            .map(|&x| half::f16::from_f32(x).to_f32())
            .collect();
        let last = past + ti;
        let first = window.map_or(0, |w| (last + 1).saturating_sub(w));
        let mut kv = vec![0f32; dh];
        let mut scores: Vec<f32> = (first..=last)
            .map(|j| {
                k[(j * hk + kvh) * dh..(j * hk + kvh + 1) * dh].convert_to_f32_slice(&mut kv);
                dot(&qv, &kv) * scale
            })
            .collect();
        softmax_inplace(&mut scores);
        o.fill(0.0);
        for (p, j) in scores.iter().zip(first..=last) {
            v[(j * hk + kvh) * dh..(j * hk + kvh + 1) * dh].convert_to_f32_slice(&mut kv);
            super::axpy(half::f16::from_f32(*p).to_f32(), &kv, o);
        }
    });
}
