//! Causal softmax attention with grouped-query heads and an optional sliding window — the core
//! of the `attention` (FA) and `swa` mixers, after projections and RoPE.
//!
//! `o_i = Σ_j softmax_j(scale · q_i·k_j) v_j` over keys j with `i − W < j ≤ i` (Hugging Face's
//! sliding-window semantics: W keys including the current one; no window = all j ≤ i).
//! Query head h reads key/value head h / (H / Hk) (HF `repeat_kv`).
//!
//! - [`reference`]: quadratic attention in f64 — the specification.
//! - [`forward`]: the f32 form used for prefill and training (rows in parallel; saves the
//!   log-sum-exp per row so that [`backward`] recomputes probabilities without storing T²).
//! - [`backward`]: dQ, dK, dV (FlashAttention-2's recomputation, row-wise).
//! - decode over a cache is [`forward`] with `past > 0` (keys of earlier tokens first).
//!
//! Layouts: q [B, T, H, D]; k, v [B, S, Hk, D] with S = past + T; o [B, T, H, D].
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub b: usize,
    /// Query tokens in this call.
    pub t: usize,
    /// Key tokens: earlier ones (`s − t` of them) and then this call's.
    pub s: usize,
    pub h: usize,
    pub hk: usize,
    pub d: usize,
}

impl Dims {
    fn rep(&self) -> usize {
        assert!(
            self.hk > 0 && self.h.is_multiple_of(self.hk),
            "query heads must be a multiple of key/value heads"
        );
        self.h / self.hk
    }
    /// The key range [first, last] that query row `i` (0-based within this call) may see.
    fn keys(&self, i: usize, window: Option<usize>) -> (usize, usize) {
        let last = self.s - self.t + i;
        (window.map_or(0, |w| (last + 1).saturating_sub(w)), last)
    }
}

pub fn reference(
    d: Dims,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    scale: f64,
    window: Option<usize>,
) -> Vec<f64> {
    let rep = d.rep();
    let mut o = vec![0.0; d.b * d.t * d.h * d.d];
    for b in 0..d.b {
        for i in 0..d.t {
            for h in 0..d.h {
                let kh = h / rep;
                let qi = &q[((b * d.t + i) * d.h + h) * d.d..][..d.d];
                let (first, last) = d.keys(i, window);
                let sc: Vec<f64> = (first..=last)
                    .map(|j| {
                        scale
                            * qi.iter()
                                .zip(&k[((b * d.s + j) * d.hk + kh) * d.d..][..d.d])
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                let out = &mut o[((b * d.t + i) * d.h + h) * d.d..][..d.d];
                for (x, j) in sc.iter().zip(first..=last) {
                    let p = (x - m).exp() / z;
                    for (oo, vv) in out
                        .iter_mut()
                        .zip(&v[((b * d.s + j) * d.hk + kh) * d.d..][..d.d])
                    {
                        *oo += p * vv;
                    }
                }
            }
        }
    }
    o
}

/// Where attention reads the key/value rows of sequence `b`, key token `j` (0-based over
/// the `s` keys of [`Dims`]): contiguous arrays (training, prefill without a cache) or a
/// paged cache.
pub trait KvRows: Sync {
    fn rows(&self, b: usize, j: usize) -> (&[f32], &[f32]);
}

/// k, v [B, S, Hk, D] in one array each.
pub struct Contiguous<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub s: usize,
    /// Hk·D.
    pub row: usize,
}

impl KvRows for Contiguous<'_> {
    #[inline]
    fn rows(&self, b: usize, j: usize) -> (&[f32], &[f32]) {
        let o = (b * self.s + j) * self.row;
        (&self.k[o..o + self.row], &self.v[o..o + self.row])
    }
}

/// One paged cache per sequence; key j is absolute token `base + j`.
pub struct Paged<'a> {
    pub seqs: &'a [crate::paged_kv::PagedKv],
    pub base: usize,
}

impl KvRows for Paged<'_> {
    #[inline]
    fn rows(&self, b: usize, j: usize) -> (&[f32], &[f32]) {
        self.seqs[b].row(self.base + j)
    }
}

/// Returns (o [B,T,H,D], lse [B,T,H]).
pub fn forward(
    d: Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    window: Option<usize>,
) -> (Vec<f32>, Vec<f32>) {
    let kv = Contiguous {
        k,
        v,
        s: d.s,
        row: d.hk * d.d,
    };
    forward_rows(d, q, &kv, scale, window)
}

/// [`forward`] over any [`KvRows`].
pub fn forward_rows<R: KvRows>(
    d: Dims,
    q: &[f32],
    kv: &R,
    scale: f32,
    window: Option<usize>,
) -> (Vec<f32>, Vec<f32>) {
    let rep = d.rep();
    let mut o = vec![0f32; d.b * d.t * d.h * d.d];
    let mut lse = vec![0f32; d.b * d.t * d.h];
    o.par_chunks_mut(d.d)
        .zip(lse.par_iter_mut())
        .enumerate()
        .for_each(|(row, (out, l))| {
            let (b, i, h) = (row / (d.t * d.h), (row / d.h) % d.t, row % d.h);
            let kh = h / rep;
            let qi = &q[row * d.d..(row + 1) * d.d];
            let (first, last) = d.keys(i, window);
            let mut sc: Vec<f32> = (first..=last)
                .map(|j| scale * tensor::cpu::dot(qi, &kv.rows(b, j).0[kh * d.d..][..d.d]))
                .collect();
            let m = sc.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut z = 0f64;
            for x in sc.iter_mut() {
                *x = (*x - m).exp();
                z += *x as f64;
            }
            let inv = (1.0 / z) as f32;
            out.fill(0.0);
            for (p, j) in sc.iter().zip(first..=last) {
                tensor::cpu::axpy(p * inv, &kv.rows(b, j).1[kh * d.d..][..d.d], out);
            }
            *l = m + (z as f32).ln();
        });
    (o, lse)
}

/// Gradients (dq [B,T,H,D], dk, dv [B,S,Hk,D]) given the forward's o and lse and do.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    d: Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    d_o: &[f32],
    scale: f32,
    window: Option<usize>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rep = d.rep();
    let mut dq = vec![0f32; q.len()];
    // One task per (batch, kv head): it owns dk/dv of that head and the dq rows of its group.
    // Per task: (dk, dv of its kv head, [(row, dq row)]).
    type Part = (Vec<f32>, Vec<f32>, Vec<(usize, Vec<f32>)>);
    let parts: Vec<Part> = (0..d.b * d.hk)
        .into_par_iter()
        .map(|bk| {
            let (b, kh) = (bk / d.hk, bk % d.hk);
            let mut dk = vec![0f32; d.s * d.d];
            let mut dv = vec![0f32; d.s * d.d];
            let mut dqs = vec![];
            for h in kh * rep..(kh + 1) * rep {
                for i in 0..d.t {
                    let row = (b * d.t + i) * d.h + h;
                    let (qi, oi, doi) = (
                        &q[row * d.d..][..d.d],
                        &o[row * d.d..][..d.d],
                        &d_o[row * d.d..][..d.d],
                    );
                    let delta = tensor::cpu::dot(oi, doi);
                    let (first, last) = d.keys(i, window);
                    let mut dqi = vec![0f32; d.d];
                    for j in first..=last {
                        let kj = &k[((b * d.s + j) * d.hk + kh) * d.d..][..d.d];
                        let vj = &v[((b * d.s + j) * d.hk + kh) * d.d..][..d.d];
                        let p = (scale * tensor::cpu::dot(qi, kj) - lse[row]).exp();
                        tensor::cpu::axpy(p, doi, &mut dv[j * d.d..(j + 1) * d.d]);
                        let ds = p * (tensor::cpu::dot(doi, vj) - delta) * scale;
                        tensor::cpu::axpy(ds, kj, &mut dqi);
                        tensor::cpu::axpy(ds, qi, &mut dk[j * d.d..(j + 1) * d.d]);
                    }
                    dqs.push((row, dqi));
                }
            }
            (dk, dv, dqs)
        })
        .collect();
    let mut dk = vec![0f32; k.len()];
    let mut dv = vec![0f32; v.len()];
    for (bk, (pk, pv, dqs)) in parts.into_iter().enumerate() {
        let (b, kh) = (bk / d.hk, bk % d.hk);
        for j in 0..d.s {
            let at = ((b * d.s + j) * d.hk + kh) * d.d;
            dk[at..at + d.d].copy_from_slice(&pk[j * d.d..(j + 1) * d.d]);
            dv[at..at + d.d].copy_from_slice(&pv[j * d.d..(j + 1) * d.d]);
        }
        for (row, g) in dqs {
            dq[row * d.d..(row + 1) * d.d].copy_from_slice(&g);
        }
    }
    (dq, dk, dv)
}
