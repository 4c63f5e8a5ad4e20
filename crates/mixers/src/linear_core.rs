//! The recurrence shared by the linear mixers (Gated DeltaNet, Kimi Delta Attention, gated
//! linear attention), in flash-linear-attention's K-first layout (state S is [K, V]).
//!
//! Per value head, per token t (q already scaled by `scale`; g_t ≤ 0 is a log decay per key
//! channel, scalar decays are broadcast over K):
//!
//! ```text
//! S ← exp(g_t) ⊙ S                 (row k of S decays by exp(g_t[k]))
//! delta rule (GDN, KDA):  u = β_t (v_t − Sᵀ k_t)        plain (GLA):  u = v_t
//! S ← S + k_t uᵀ
//! o_t = Sᵀ q_t                     (read after the write: token t sees itself)
//! ```
//!
//! This is FLA's `naive_recurrent_gated_delta_rule` / `naive_recurrent_kda` /
//! `naive_recurrent_gla` (research/mixers.md §1.1, §2.1; GDN arXiv 2412.06464, Kimi Linear
//! arXiv 2510.26692). Three forms that must agree:
//! - [`reference`]: the naive recurrence in f64 — the executable specification;
//! - [`chunked`]: the chunkwise-parallel algorithm (§3.1: UT/WY transform inside a chunk,
//!   a sequential pass over chunks), f32, for prefill and training; it also returns the
//!   chunk-entry states that [`backward`] replays from;
//! - [`step`]: one token on a carried state, for decode.
//!
//! [`backward`] is reverse-mode through the recurrence, recomputing each chunk's per-token
//! states from its entry state (memory O(T/C · K·V) instead of O(T · K·V)).
//!
//! Layouts: q, k [B, T, H, K]; v [B, T, HV, V]; g [B, T, HV, K]; beta [B, T, HV];
//! state [B, HV, K, V]; o [B, T, HV, V]. GVA: value head hv reads q/k head hv / (HV / H).
//! Recurrent state, decays and β are always f32 (or f64 in the reference).
use rayon::prelude::*;

/// Sizes of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub hv: usize,
    pub k: usize,
    pub v: usize,
}

impl Dims {
    fn group(&self) -> usize {
        assert!(
            self.h > 0 && self.hv.is_multiple_of(self.h),
            "value heads must be a multiple of key heads"
        );
        self.hv / self.h
    }
    pub fn state_len(&self) -> usize {
        self.b * self.hv * self.k * self.v
    }
}

/// Inputs of the core. `beta` is `None` for the plain (GLA) form.
#[derive(Clone, Copy)]
pub struct Inputs<'a, F> {
    pub q: &'a [F],
    pub k: &'a [F],
    pub v: &'a [F],
    pub g: &'a [F],
    pub beta: Option<&'a [F]>,
}

/// Index helpers for the layouts above.
#[inline]
fn qk_at(d: &Dims, b: usize, t: usize, h: usize) -> usize {
    ((b * d.t + t) * d.h + h) * d.k
}
#[inline]
fn v_at(d: &Dims, b: usize, t: usize, hv: usize) -> usize {
    ((b * d.t + t) * d.hv + hv) * d.v
}
#[inline]
fn g_at(d: &Dims, b: usize, t: usize, hv: usize) -> usize {
    ((b * d.t + t) * d.hv + hv) * d.k
}
#[inline]
fn beta_at(d: &Dims, b: usize, t: usize, hv: usize) -> usize {
    (b * d.t + t) * d.hv + hv
}

/// The naive recurrence in f64. Returns (o [B,T,HV,V], final state [B,HV,K,V]).
pub fn reference(d: Dims, x: Inputs<f64>, scale: f64, h0: Option<&[f64]>) -> (Vec<f64>, Vec<f64>) {
    let grp = d.group();
    let mut o = vec![0.0; d.b * d.t * d.hv * d.v];
    let mut st = h0.map_or_else(|| vec![0.0; d.state_len()], |h| h.to_vec());
    for b in 0..d.b {
        for hv in 0..d.hv {
            let h = hv / grp;
            let s = &mut st[(b * d.hv + hv) * d.k * d.v..(b * d.hv + hv + 1) * d.k * d.v];
            for t in 0..d.t {
                let (q, k) = (
                    &x.q[qk_at(&d, b, t, h)..][..d.k],
                    &x.k[qk_at(&d, b, t, h)..][..d.k],
                );
                let v = &x.v[v_at(&d, b, t, hv)..][..d.v];
                let g = &x.g[g_at(&d, b, t, hv)..][..d.k];
                for (i, gi) in g.iter().enumerate() {
                    let a = gi.exp();
                    s[i * d.v..(i + 1) * d.v].iter_mut().for_each(|x| *x *= a);
                }
                let u: Vec<f64> = match x.beta {
                    Some(beta) => {
                        let bt = beta[beta_at(&d, b, t, hv)];
                        (0..d.v)
                            .map(|j| {
                                bt * (v[j] - (0..d.k).map(|i| s[i * d.v + j] * k[i]).sum::<f64>())
                            })
                            .collect()
                    }
                    None => v.to_vec(),
                };
                for i in 0..d.k {
                    for j in 0..d.v {
                        s[i * d.v + j] += k[i] * u[j];
                    }
                }
                let out = &mut o[v_at(&d, b, t, hv)..][..d.v];
                for (j, oj) in out.iter_mut().enumerate() {
                    *oj = (0..d.k).map(|i| s[i * d.v + j] * q[i] * scale).sum();
                }
            }
        }
    }
    (o, st)
}

/// Result of [`chunked`]: outputs, final state, and the state at the start of every chunk
/// ([B, HV, n_chunks, K, V]) for the backward pass.
pub struct ChunkedOut {
    pub o: Vec<f32>,
    pub state: Vec<f32>,
    pub chunk_states: Vec<f32>,
    pub chunk: usize,
}

/// The chunkwise-parallel form (research/mixers.md §3.1), chunk size `chunk` (any ≥ 1; ragged
/// tails are handled by a shorter last chunk). Work is parallel over (batch, value head).
pub fn chunked(
    d: Dims,
    x: Inputs<f32>,
    scale: f32,
    h0: Option<&[f32]>,
    chunk: usize,
) -> ChunkedOut {
    assert!(chunk > 0);
    let grp = d.group();
    let nc = d.t.div_ceil(chunk);
    let kv = d.k * d.v;
    let mut o = vec![0f32; d.b * d.t * d.hv * d.v];
    let mut state = h0.map_or_else(|| vec![0f32; d.state_len()], |h| h.to_vec());
    let mut chunk_states = vec![0f32; d.b * d.hv * nc * kv];
    // Each (b, hv) task owns its state and its chunk_states slab; outputs are written through
    // a per-task buffer and scattered afterwards (o interleaves heads per token).
    let per_task: Vec<Vec<f32>> = state
        .par_chunks_mut(kv)
        .zip(chunk_states.par_chunks_mut(nc * kv))
        .enumerate()
        .map(|(bh, (s, cs))| {
            let (b, hv) = (bh / d.hv, bh % d.hv);
            let h = hv / grp;
            let mut out = vec![0f32; d.t * d.v];
            for c in 0..nc {
                cs[c * kv..(c + 1) * kv].copy_from_slice(s);
                let t0 = c * chunk;
                let n = chunk.min(d.t - t0);
                chunk_forward(
                    &d,
                    &x,
                    scale,
                    b,
                    h,
                    hv,
                    t0,
                    n,
                    s,
                    &mut out[t0 * d.v..(t0 + n) * d.v],
                );
            }
            out
        })
        .collect();
    for (bh, out) in per_task.iter().enumerate() {
        let (b, hv) = (bh / d.hv, bh % d.hv);
        for t in 0..d.t {
            o[v_at(&d, b, t, hv)..][..d.v].copy_from_slice(&out[t * d.v..(t + 1) * d.v]);
        }
    }
    ChunkedOut {
        o,
        state,
        chunk_states,
        chunk,
    }
}

/// One chunk of n tokens starting at t0 for (b, hv): updates `s` [K, V] and writes out [n, V].
#[allow(clippy::too_many_arguments)]
fn chunk_forward(
    d: &Dims,
    x: &Inputs<f32>,
    scale: f32,
    b: usize,
    h: usize,
    hv: usize,
    t0: usize,
    n: usize,
    s: &mut [f32],
    out: &mut [f32],
) {
    let (kd, vd) = (d.k, d.v);
    // Gather the chunk: qs (scaled), ks [n, K]; vs [n, V]; cumulative log decay cum [n, K].
    let mut qs = vec![0f32; n * kd];
    let mut ks = vec![0f32; n * kd];
    let mut vs = vec![0f32; n * vd];
    let mut cum = vec![0f32; n * kd];
    let mut betas = vec![1f32; n];
    for i in 0..n {
        let t = t0 + i;
        let qi = &x.q[qk_at(d, b, t, h)..][..kd];
        qs[i * kd..(i + 1) * kd]
            .iter_mut()
            .zip(qi)
            .for_each(|(a, q)| *a = q * scale);
        ks[i * kd..(i + 1) * kd].copy_from_slice(&x.k[qk_at(d, b, t, h)..][..kd]);
        vs[i * vd..(i + 1) * vd].copy_from_slice(&x.v[v_at(d, b, t, hv)..][..vd]);
        let g = &x.g[g_at(d, b, t, hv)..][..kd];
        for c in 0..kd {
            cum[i * kd + c] = g[c] + if i > 0 { cum[(i - 1) * kd + c] } else { 0.0 };
        }
        if let Some(beta) = x.beta {
            betas[i] = beta[beta_at(d, b, t, hv)];
        }
    }
    // Pairwise decayed products, every exponent ≤ 0 (never factored; §3.3):
    // decayed_dot(a_i, k_j) = Σ_c a_i[c] k_j[c] exp(cum_i[c] − cum_j[c]) for j ≤ i.
    // A scalar decay per token (GDN) needs one exp per pair instead of one per channel.
    let scalar = cum.chunks_exact(kd).all(|r| r.iter().all(|&x| x == r[0]));
    let decayed_dot = |a: &[f32], i: usize, j: usize| -> f32 {
        let (ci, cj) = (&cum[i * kd..(i + 1) * kd], &cum[j * kd..(j + 1) * kd]);
        let (ai, kj) = (&a[i * kd..(i + 1) * kd], &ks[j * kd..(j + 1) * kd]);
        if scalar {
            return tensor::cpu::dot(ai, kj) * (ci[0] - cj[0]).exp();
        }
        let mut acc = 0f32;
        for c in 0..kd {
            acc += ai[c] * kj[c] * (ci[c] - cj[c]).exp();
        }
        acc
    };
    // v' (delta-corrected values) [n, V].
    let vnew = if x.beta.is_some() {
        // M_ij = β_i decayed_dot(k_i, k_j), j < i; T = (I + M)^-1 by forward substitution.
        let mut tm = vec![0f32; n * n];
        let mut m = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..i {
                m[i * n + j] = betas[i] * decayed_dot(&ks, i, j);
            }
        }
        for i in 0..n {
            tm[i * n + i] = 1.0;
            for j in 0..i {
                let mut acc = -m[i * n + j];
                for mm in j + 1..i {
                    acc -= m[i * n + mm] * tm[mm * n + j];
                }
                tm[i * n + j] = acc;
            }
        }
        // U = T (β ⊙ V); W = T (β ⊙ exp(cum) ⊙ K); v' = U − W S.
        let mut bv = vs.clone();
        let mut bk = vec![0f32; n * kd];
        for i in 0..n {
            bv[i * vd..(i + 1) * vd]
                .iter_mut()
                .for_each(|x| *x *= betas[i]);
            for c in 0..kd {
                bk[i * kd + c] = betas[i] * cum[i * kd + c].exp() * ks[i * kd + c];
            }
        }
        let mut u = vec![0f32; n * vd];
        tensor::cpu::matmul_nn(&tm, &bv, &mut u, n, vd, n, false);
        let mut w = vec![0f32; n * kd];
        tensor::cpu::matmul_nn(&tm, &bk, &mut w, n, kd, n, false);
        let mut ws = vec![0f32; n * vd];
        tensor::cpu::matmul_nn(&w, s, &mut ws, n, vd, kd, false);
        u.iter_mut().zip(&ws).for_each(|(a, b)| *a -= b);
        u
    } else {
        vs
    };
    // O = (Q ⊙ exp(cum)) S + A_qk v', with A_qk[i][j] = decayed_dot(q_i, k_j), j ≤ i.
    let mut qg = qs.clone();
    for (qv, cv) in qg.iter_mut().zip(&cum) {
        *qv *= cv.exp();
    }
    tensor::cpu::matmul_nn(&qg, s, out, n, vd, kd, false);
    let mut a = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..=i {
            a[i * n + j] = decayed_dot(&qs, i, j);
        }
    }
    tensor::cpu::matmul_nn(&a, &vnew, out, n, vd, n, true);
    // S ← exp(cum_last) ⊙ S + (K ⊙ exp(cum_last − cum))ᵀ v'.
    let last = &cum[(n - 1) * kd..n * kd];
    for c in 0..kd {
        let e = last[c].exp();
        s[c * vd..(c + 1) * vd].iter_mut().for_each(|x| *x *= e);
    }
    let mut kdec = vec![0f32; n * kd];
    for i in 0..n {
        for c in 0..kd {
            kdec[i * kd + c] = ks[i * kd + c] * (last[c] - cum[i * kd + c]).exp();
        }
    }
    tensor::cpu::matmul_tn(&kdec, &vnew, s, kd, vd, n, true);
}

/// One token for each of B sequences: q, k [B, H, K]; v [B, HV, V]; g [B, HV, K];
/// beta [B, HV]; state [B, HV, K, V] updated in place. Returns o [B, HV, V].
pub fn step(d: Dims, x: Inputs<f32>, scale: f32, state: &mut [f32]) -> Vec<f32> {
    assert_eq!(d.t, 1, "step takes one token");
    let grp = d.group();
    let kv = d.k * d.v;
    let mut o = vec![0f32; d.b * d.hv * d.v];
    o.par_chunks_mut(d.v)
        .zip(state.par_chunks_mut(kv))
        .enumerate()
        .for_each(|(bh, (out, s))| {
            let (b, hv) = (bh / d.hv, bh % d.hv);
            let h = hv / grp;
            token_update(&d, &x, b, h, hv, 0, s);
            let q = &x.q[qk_at(&d, b, 0, h)..][..d.k];
            out.fill(0.0);
            for c in 0..d.k {
                tensor::cpu::axpy(q[c] * scale, &s[c * d.v..(c + 1) * d.v], out);
            }
        });
    o
}

/// One token of the recurrence on a state `s` [K, V] (decay, delta-rule or plain write),
/// without the output read: shared by [`step`] and the backward's chunk replay.
fn token_update(d: &Dims, x: &Inputs<f32>, b: usize, h: usize, hv: usize, t: usize, s: &mut [f32]) {
    let k = &x.k[qk_at(d, b, t, h)..][..d.k];
    let v = &x.v[v_at(d, b, t, hv)..][..d.v];
    let g = &x.g[g_at(d, b, t, hv)..][..d.k];
    for (c, gc) in g.iter().enumerate() {
        let a = gc.exp();
        s[c * d.v..(c + 1) * d.v].iter_mut().for_each(|x| *x *= a);
    }
    let mut u = v.to_vec();
    if let Some(beta) = x.beta {
        let bt = beta[beta_at(d, b, t, hv)];
        let mut pred = vec![0f32; d.v];
        for c in 0..d.k {
            tensor::cpu::axpy(k[c], &s[c * d.v..(c + 1) * d.v], &mut pred);
        }
        u.iter_mut()
            .zip(&pred)
            .for_each(|(x, p)| *x = bt * (*x - p));
    }
    for c in 0..d.k {
        tensor::cpu::axpy(k[c], &u, &mut s[c * d.v..(c + 1) * d.v]);
    }
}

/// Gradients of the core's inputs.
pub struct Grads {
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
    pub dg: Vec<f32>,
    pub dbeta: Option<Vec<f32>>,
    pub dh0: Vec<f32>,
}

/// Reverse-mode gradients of [`chunked`] given do [B,T,HV,V] and (optionally) the gradient
/// of the final state dht [B,HV,K,V]. `fwd` is the forward's result (its chunk-entry states).
pub fn backward(
    d: Dims,
    x: Inputs<f32>,
    scale: f32,
    fwd: &ChunkedOut,
    d_o: &[f32],
    dht: Option<&[f32]>,
) -> Grads {
    let grp = d.group();
    let kv = d.k * d.v;
    let nc = d.t.div_ceil(fwd.chunk);
    let mut dq = vec![0f32; x.q.len()];
    let mut dk = vec![0f32; x.k.len()];
    let mut dv = vec![0f32; x.v.len()];
    let mut dg = vec![0f32; x.g.len()];
    let mut dbeta = x.beta.map(|b| vec![0f32; b.len()]);
    let mut dh0 = vec![0f32; d.state_len()];
    // One task per (b, hv); q/k gradients of a GVA group are summed after the parallel part.
    struct Task {
        dq: Vec<f32>,
        dk: Vec<f32>,
        dv: Vec<f32>,
        dg: Vec<f32>,
        db: Vec<f32>,
        dh0: Vec<f32>,
    }
    let tasks: Vec<Task> = (0..d.b * d.hv)
        .into_par_iter()
        .map(|bh| {
            let (b, hv) = (bh / d.hv, bh % d.hv);
            let h = hv / grp;
            let mut tk = Task {
                dq: vec![0.0; d.t * d.k],
                dk: vec![0.0; d.t * d.k],
                dv: vec![0.0; d.t * d.v],
                dg: vec![0.0; d.t * d.k],
                db: vec![0.0; d.t],
                dh0: vec![],
            };
            let mut ds = dht.map_or_else(|| vec![0f32; kv], |s| s[bh * kv..(bh + 1) * kv].to_vec());
            for c in (0..nc).rev() {
                let t0 = c * fwd.chunk;
                let n = fwd.chunk.min(d.t - t0);
                // Replay the chunk, keeping the state before each token.
                let mut s = fwd.chunk_states[(bh * nc + c) * kv..(bh * nc + c + 1) * kv].to_vec();
                let mut before = Vec::with_capacity(n);
                for i in 0..n {
                    before.push(s.clone());
                    token_update(&d, &x, b, h, hv, t0 + i, &mut s);
                }
                for i in (0..n).rev() {
                    let t = t0 + i;
                    token_backward(
                        &d,
                        &x,
                        scale,
                        b,
                        h,
                        hv,
                        t,
                        &before[i],
                        &d_o[v_at(&d, b, t, hv)..][..d.v],
                        &mut ds,
                        &mut tk,
                    );
                }
            }
            tk.dh0 = ds;
            tk
        })
        .collect();

    /// Backward of one token: `prev` is the state before it, `ds` the gradient of the state
    /// after it (updated to the gradient of `prev`).
    #[allow(clippy::too_many_arguments)]
    fn token_backward(
        d: &Dims,
        x: &Inputs<f32>,
        scale: f32,
        b: usize,
        h: usize,
        hv: usize,
        t: usize,
        prev: &[f32],
        d_o: &[f32],
        ds: &mut [f32],
        tk: &mut Task,
    ) {
        let (kd, vd) = (d.k, d.v);
        let q = &x.q[qk_at(d, b, t, h)..][..kd];
        let k = &x.k[qk_at(d, b, t, h)..][..kd];
        let v = &x.v[v_at(d, b, t, hv)..][..vd];
        let g = &x.g[g_at(d, b, t, hv)..][..kd];
        // Recompute S' = exp(g) ⊙ prev, pred, u, S_new.
        let mut sp = prev.to_vec();
        for c in 0..kd {
            let a = g[c].exp();
            sp[c * vd..(c + 1) * vd].iter_mut().for_each(|x| *x *= a);
        }
        let mut pred = vec![0f32; vd];
        let bt = x.beta.map(|beta| beta[beta_at(d, b, t, hv)]);
        let u: Vec<f32> = match bt {
            Some(bt) => {
                for c in 0..kd {
                    tensor::cpu::axpy(k[c], &sp[c * vd..(c + 1) * vd], &mut pred);
                }
                v.iter().zip(&pred).map(|(v, p)| bt * (v - p)).collect()
            }
            None => v.to_vec(),
        };
        let mut snew = sp.clone();
        for c in 0..kd {
            tensor::cpu::axpy(k[c], &u, &mut snew[c * vd..(c + 1) * vd]);
        }
        // o = S_newᵀ (scale q): dS += (scale q) doᵀ; dq = scale S_new do.
        for c in 0..kd {
            let row = &snew[c * vd..(c + 1) * vd];
            tk.dq[t * kd + c] += scale * tensor::cpu::dot(row, d_o);
            tensor::cpu::axpy(scale * q[c], d_o, &mut ds[c * vd..(c + 1) * vd]);
        }
        // S_new = S' + k uᵀ: dk += dS u; du = dSᵀ k.
        let mut du = vec![0f32; vd];
        for c in 0..kd {
            let row = &ds[c * vd..(c + 1) * vd];
            tk.dk[t * kd + c] += tensor::cpu::dot(row, &u);
            tensor::cpu::axpy(k[c], row, &mut du);
        }
        match bt {
            Some(bt) => {
                // u = β (v − S'ᵀ k)
                tk.db[t] += du
                    .iter()
                    .zip(v.iter().zip(&pred))
                    .map(|(a, (v, p))| a * (v - p))
                    .sum::<f32>();
                tensor::cpu::axpy(bt, &du, &mut tk.dv[t * vd..(t + 1) * vd]);
                let dpred: Vec<f32> = du.iter().map(|x| -bt * x).collect();
                for c in 0..kd {
                    tk.dk[t * kd + c] += tensor::cpu::dot(&sp[c * vd..(c + 1) * vd], &dpred);
                    tensor::cpu::axpy(k[c], &dpred, &mut ds[c * vd..(c + 1) * vd]);
                }
            }
            None => {
                tensor::cpu::axpy(1.0, &du, &mut tk.dv[t * vd..(t + 1) * vd]);
            }
        }
        // S' = exp(g) ⊙ prev: dg = Σ_v dS' ⊙ S'; dprev = exp(g) ⊙ dS'.
        for c in 0..kd {
            let row = &mut ds[c * vd..(c + 1) * vd];
            tk.dg[t * kd + c] += tensor::cpu::dot(row, &sp[c * vd..(c + 1) * vd]);
            let a = g[c].exp();
            row.iter_mut().for_each(|x| *x *= a);
        }
    }

    for (bh, tk) in tasks.into_iter().enumerate() {
        let (b, hv) = (bh / d.hv, bh % d.hv);
        let h = hv / grp;
        for t in 0..d.t {
            let qo = qk_at(&d, b, t, h);
            for c in 0..d.k {
                dq[qo + c] += tk.dq[t * d.k + c];
                dk[qo + c] += tk.dk[t * d.k + c];
            }
            dv[v_at(&d, b, t, hv)..][..d.v].copy_from_slice(&tk.dv[t * d.v..(t + 1) * d.v]);
            dg[g_at(&d, b, t, hv)..][..d.k].copy_from_slice(&tk.dg[t * d.k..(t + 1) * d.k]);
            if let Some(db) = dbeta.as_mut() {
                db[beta_at(&d, b, t, hv)] = tk.db[t];
            }
        }
        dh0[bh * kv..(bh + 1) * kv].copy_from_slice(&tk.dh0);
    }
    Grads {
        dq,
        dk,
        dv,
        dg,
        dbeta,
        dh0,
    }
}
