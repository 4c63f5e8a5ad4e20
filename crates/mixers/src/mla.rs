//! Multi-head latent attention (DeepSeek-V2's MLA) without positional encoding, as Kimi-Linear
//! uses it, for inference: each token caches one compressed row — its RMS-normalised latent
//! (`kv_lora_rank`) and the rope part of its key shared by all heads (`qk_rope`, entering the
//! score unrotated) — instead of every head's keys and values. Keys and values are never
//! expanded: each head's query is absorbed into the latent space (`q_nope · W_uk`), scores are
//! `(q_lat · latent + q_rope · k_rope) / sqrt(qk_nope + qk_rope)`, and the softmax-weighted
//! latent is expanded once by `W_uv` (`kv_b_proj` holds, per head, W_uk's `qk_nope` rows then
//! W_uv's `v_head` rows).
//!
//! Tensors (Hugging Face names): `q_proj` [H·(nope+rope), D], `kv_a_proj_with_mqa`
//! [lora+rope, D], `kv_a_layernorm` [lora], `kv_b_proj` [H·(nope+v), lora], `o_proj` [D, H·v].
use crate::paged_kv::PagedKv;
use crate::params::{linear, InitRng, Params};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MlaDims {
    pub kv_lora_rank: usize,
    pub qk_nope: usize,
    pub qk_rope: usize,
    pub v_head: usize,
}

impl MlaDims {
    /// Floats one token caches.
    pub fn row(&self) -> usize {
        self.kv_lora_rank + self.qk_rope
    }
}

/// The latent's RMSNorm epsilon (transformers' `KimiLinearRMSNorm` default).
const LATENT_EPS: f32 = 1e-6;

pub fn init(m: MlaDims, heads: usize, hidden: usize, rng: &mut InitRng) -> Params {
    let (qd, kvb) = (
        heads * (m.qk_nope + m.qk_rope),
        heads * (m.qk_nope + m.v_head),
    );
    let mut p = Params::default();
    p.insert(
        "q_proj.weight",
        &[qd, hidden],
        rng.normals(qd * hidden, 0.02),
    );
    p.insert(
        "kv_a_proj_with_mqa.weight",
        &[m.row(), hidden],
        rng.normals(m.row() * hidden, 0.02),
    );
    p.insert(
        "kv_a_layernorm.weight",
        &[m.kv_lora_rank],
        vec![1.0; m.kv_lora_rank],
    );
    p.insert(
        "kv_b_proj.weight",
        &[kvb, m.kv_lora_rank],
        rng.normals(kvb * m.kv_lora_rank, 0.02),
    );
    let o = heads * m.v_head;
    p.insert("o_proj.weight", &[hidden, o], rng.normals(hidden * o, 0.02));
    p
}

/// x [N, D] -> the rows to cache [N, lora + rope].
pub fn cache_rows(m: MlaDims, p: &Params, x: &[f32], n: usize, hidden: usize) -> Vec<f32> {
    let mut c = linear(
        x,
        p.get("kv_a_proj_with_mqa.weight"),
        None,
        n,
        m.row(),
        hidden,
    );
    let w = p.get("kv_a_layernorm.weight");
    for r in c.chunks_exact_mut(m.row()) {
        let lat = &mut r[..m.kv_lora_rank];
        let ms = lat.iter().map(|v| v * v).sum::<f32>() / m.kv_lora_rank as f32;
        let inv = 1.0 / (ms + LATENT_EPS).sqrt();
        lat.iter_mut().zip(w).for_each(|(v, g)| *v = *v * inv * g);
    }
    c
}

/// Queries q [T, H, nope + rope] of one sequence at absolute positions `pos0..pos0 + T`, over
/// the cached rows from absolute `base` (causal); returns [T, H·v].
pub fn attend(
    m: MlaDims,
    p: &Params,
    q: &[f32],
    heads: usize,
    cache: &PagedKv,
    (base, pos0): (usize, usize),
) -> Vec<f32> {
    let (nope, rope, lora, vd) = (m.qk_nope, m.qk_rope, m.kv_lora_rank, m.v_head);
    let qk = nope + rope;
    let t = q.len() / (heads * qk);
    let scale = (qk as f32).powf(-0.5);
    let kvb = p.get("kv_b_proj.weight");
    let mut o = vec![0f32; t * heads * vd];
    for ti in 0..t {
        let last = pos0 + ti;
        for h in 0..heads {
            let qh = &q[(ti * heads + h) * qk..][..qk];
            let w_uk = &kvb[h * (nope + vd) * lora..][..nope * lora];
            let w_uv = &kvb[(h * (nope + vd) + nope) * lora..][..vd * lora];
            let mut q_lat = vec![0f32; lora];
            for (i, &qi) in qh[..nope].iter().enumerate() {
                q_lat
                    .iter_mut()
                    .zip(&w_uk[i * lora..(i + 1) * lora])
                    .for_each(|(a, w)| *a += qi * w);
            }
            let scores: Vec<f32> = (base..=last)
                .map(|j| {
                    let row = cache.row(j).0;
                    let s_lat: f32 = q_lat.iter().zip(&row[..lora]).map(|(a, b)| a * b).sum();
                    let s_rope: f32 = qh[nope..]
                        .iter()
                        .zip(&row[lora..])
                        .map(|(a, b)| a * b)
                        .sum();
                    (s_lat + s_rope) * scale
                })
                .collect();
            let mx = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let e: Vec<f32> = scores.iter().map(|s| (s - mx).exp()).collect();
            let z: f32 = e.iter().sum();
            let mut o_lat = vec![0f32; lora];
            for (j, pj) in (base..=last).zip(&e) {
                let row = cache.row(j).0;
                o_lat
                    .iter_mut()
                    .zip(&row[..lora])
                    .for_each(|(a, b)| *a += pj / z * b);
            }
            let oh = &mut o[(ti * heads + h) * vd..][..vd];
            for (c, out) in oh.iter_mut().enumerate() {
                *out = w_uv[c * lora..(c + 1) * lora]
                    .iter()
                    .zip(&o_lat)
                    .map(|(a, b)| a * b)
                    .sum();
            }
        }
    }
    o
}
