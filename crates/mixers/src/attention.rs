//! The `attention` (FA) and `swa` mixers as whole layers: q/k/v projections, RoPE
//! (rotate-half, full or partial rotary), grouped-query causal attention with an optional
//! sliding window, an optional per-head sigmoid output gate (Qwen3-Next: the gate is the
//! second half of each head's `q_proj` rows), and the output projection.
//!
//! Parameters (HF names): `q_proj.weight` [H·Dh·(1+gate), D], `k_proj.weight` [Hk·Dh, D],
//! `v_proj.weight` [Hk·Dh, D], `o_proj.weight` [D, H·Dh].
//! Shapes: x, y [B, T, D]. The cache keeps RoPE'd keys: all of them (FA) or the last W−1 (SWA).
use crate::attention_core::{self, Dims};
use crate::ops::sigmoid;
use crate::paged_kv::PagedKv;
use crate::params::{linear, linear_backward, InitRng, Params};
use tensor::cpu::Rope;

#[derive(Clone, Debug, PartialEq)]
pub struct AttentionConfig {
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rot_dims: usize,
    /// `Some(W)`: sliding window of W keys including the current one.
    pub window: Option<usize>,
    pub output_gate: bool,
    /// `q_proj.bias`, `k_proj.bias`, `v_proj.bias` (Qwen2).
    pub qkv_bias: bool,
    /// `Some(eps)`: `q_norm.weight` and `k_norm.weight`, an RMSNorm over each head's q and k
    /// before RoPE (Qwen3). Inference only: training such layers is refused.
    pub qk_norm: Option<f32>,
    /// Multi-head latent attention instead (Kimi-Linear): `head_dim` is then
    /// `qk_nope + qk_rope`, there is no RoPE, and the cache holds one compressed row a token.
    pub mla: Option<crate::mla::MlaDims>,
}

impl AttentionConfig {
    /// (key, value) floats one token caches.
    pub fn kv_rows(&self) -> (usize, usize) {
        match self.mla {
            Some(m) => (m.row(), 0),
            None => (
                self.n_kv_heads * self.head_dim,
                self.n_kv_heads * self.head_dim,
            ),
        }
    }
}

#[derive(Clone)]
pub struct Attention {
    pub cfg: AttentionConfig,
    pub params: Params,
    rope: Rope,
}

/// Keys/values carried between calls, for B sequences at the same position.
#[derive(Clone, Debug)]
pub struct AttnState {
    /// Per sequence: the RoPE'd keys and values in refcounted blocks (see [`PagedKv`]);
    /// they hold at least the last `kept` tokens.
    pub kv: Vec<PagedKv>,
    /// Tokens later queries can still see: all of them (FA) or the last W−1 (SWA).
    pub kept: usize,
    /// Absolute position of the next token (RoPE).
    pub pos: usize,
}

impl AttnState {
    /// Bytes of the key/value blocks held (blocks shared with others counted in full).
    pub fn bytes(&self) -> usize {
        self.kv.iter().map(|c| c.bytes()).sum()
    }

    /// Back to absolute position `pos` (≤ the current one): the keys and values from `pos` on
    /// are forgotten (speculative drafts that were rejected). A window must have kept the
    /// tokens `pos` needs (see [`Attention::forward_lanes`]).
    pub fn rollback(&mut self, pos: usize, window: Option<usize>) {
        if pos >= self.pos {
            return;
        }
        for c in self.kv.iter_mut() {
            c.truncate(pos);
        }
        let start = self.kv.iter().map(|c| c.start()).max().unwrap_or(0);
        self.kept = match window {
            None => self.kept - (self.pos - pos),
            Some(w) => (pos - start.min(pos)).min(w.saturating_sub(1)),
        };
        self.pos = pos;
    }
}

/// What the backward pass needs.
pub struct AttnSaved {
    x: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    lse: Vec<f32>,
    gate: Vec<f32>,
    b: usize,
    t: usize,
    pos0: usize,
}

impl Attention {
    pub fn new(cfg: AttentionConfig, params: Params) -> Self {
        let rope = Rope::new(cfg.head_dim, cfg.rot_dims, cfg.rope_theta);
        Attention { cfg, params, rope }
    }

    /// Random init: normal(0, 0.02) projections (output projection scaled down by depth
    /// by the caller if wanted).
    pub fn init(cfg: AttentionConfig, rng: &mut InitRng) -> Self {
        if let Some(m) = cfg.mla {
            let p = crate::mla::init(m, cfg.n_heads, cfg.hidden, rng);
            return Self::new(cfg, p);
        }
        let c = &cfg;
        let qd = c.n_heads * c.head_dim * if c.output_gate { 2 } else { 1 };
        let kvd = c.n_kv_heads * c.head_dim;
        let mut p = Params::default();
        p.insert(
            "q_proj.weight",
            &[qd, c.hidden],
            rng.normals(qd * c.hidden, 0.02),
        );
        p.insert(
            "k_proj.weight",
            &[kvd, c.hidden],
            rng.normals(kvd * c.hidden, 0.02),
        );
        p.insert(
            "v_proj.weight",
            &[kvd, c.hidden],
            rng.normals(kvd * c.hidden, 0.02),
        );
        p.insert(
            "o_proj.weight",
            &[c.hidden, c.n_heads * c.head_dim],
            rng.normals(c.hidden * c.n_heads * c.head_dim, 0.02),
        );
        if c.qkv_bias {
            for (name, n) in [
                ("q_proj.bias", qd),
                ("k_proj.bias", kvd),
                ("v_proj.bias", kvd),
            ] {
                p.insert(name, &[n], vec![0.0; n]);
            }
        }
        if c.qk_norm.is_some() {
            for name in ["q_norm.weight", "k_norm.weight"] {
                p.insert(name, &[c.head_dim], vec![1.0; c.head_dim]);
            }
        }
        Self::new(cfg, p)
    }

    pub fn new_state(&self, b: usize) -> AttnState {
        let (row, vrow) = self.cfg.kv_rows();
        AttnState {
            kv: vec![PagedKv::with_rows(row, vrow, 0); b],
            kept: 0,
            pos: 0,
        }
    }

    /// A state as if `n` tokens had been run (what a sliding window keeps of them), with
    /// arbitrary finite keys and values: for measuring decode speed at a long context
    /// without the prefill (the time of a step does not depend on the cached values).
    pub fn filled_state(&self, b: usize, n: usize) -> AttnState {
        let kept = self.cfg.window.map_or(n, |w| n.min(w.saturating_sub(1)));
        let (row, vrow) = self.cfg.kv_rows();
        let fill = |s: usize, row: usize| -> Vec<f32> {
            (0..kept * row)
                .map(|i| (((i * 7919 + s * 104_729) % 2003) as f32 / 2003.0 - 0.5) * 0.1)
                .collect()
        };
        let kv = (0..b)
            .map(|s| {
                let mut c = PagedKv::with_rows(row, vrow, n - kept);
                c.push(&fill(s, row), &fill(s + b, vrow));
                c
            })
            .collect();
        AttnState { kv, kept, pos: n }
    }

    /// Cache bytes for one sequence at context `n` with `bytes` per element.
    pub fn cache_bytes(&self, n: usize, bytes: usize) -> usize {
        let toks = self.cfg.window.map_or(n, |w| n.min(w));
        let (k, v) = self.cfg.kv_rows();
        toks * (k + v) * bytes
    }

    /// x [B, T, D] -> y [B, T, D]. With `state`, continues after the cached tokens and
    /// updates the cache; without, the call is a whole sequence (training).
    pub fn forward(
        &self,
        x: &[f32],
        b: usize,
        t: usize,
        state: Option<&mut AttnState>,
    ) -> (Vec<f32>, AttnSaved) {
        self.forward_impl(x, b, t, state, 0)
    }

    /// x [T, D] of one sequence -> y [T, D] over a cache that keeps T−1 tokens more than a
    /// window needs, so that [`AttnState::rollback`] can return to any of the T positions
    /// (speculative verification).
    pub fn forward_lanes(&self, x: &[f32], t: usize, state: &mut AttnState) -> Vec<f32> {
        self.forward_impl(x, 1, t, Some(state), t - 1).0
    }

    fn forward_impl(
        &self,
        x: &[f32],
        b: usize,
        t: usize,
        state: Option<&mut AttnState>,
        hold: usize,
    ) -> (Vec<f32>, AttnSaved) {
        let c = &self.cfg;
        if let Some(m) = c.mla {
            return self.mla_forward(m, x, b, t, state);
        }
        let (dh, h, hk) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let n = b * t;
        let bias = |name: &str| c.qkv_bias.then(|| self.params.get(name));
        let qg = linear(
            x,
            self.params.get("q_proj.weight"),
            bias("q_proj.bias"),
            n,
            h * dh * (1 + c.output_gate as usize),
            c.hidden,
        );
        let (mut q, gate) = split_gate(&qg, n * h, dh, c.output_gate);
        let mut k = linear(
            x,
            self.params.get("k_proj.weight"),
            bias("k_proj.bias"),
            n,
            hk * dh,
            c.hidden,
        );
        let v = linear(
            x,
            self.params.get("v_proj.weight"),
            bias("v_proj.bias"),
            n,
            hk * dh,
            c.hidden,
        );
        if let Some(eps) = c.qk_norm {
            for (t, name) in [(&mut q, "q_norm.weight"), (&mut k, "k_norm.weight")] {
                let mut out = vec![0f32; t.len()];
                tensor::cpu::rms_norm(t, self.params.get(name), eps, &mut out);
                *t = out;
            }
        }
        let pos0 = state.as_ref().map_or(0, |s| s.pos);
        for bi in 0..b {
            self.rope
                .apply(&mut q[bi * t * h * dh..(bi + 1) * t * h * dh], h, pos0);
            self.rope
                .apply(&mut k[bi * t * hk * dh..(bi + 1) * t * hk * dh], hk, pos0);
        }
        let (o, lse, saved_k, saved_v) = match state {
            None => {
                let d = Dims {
                    b,
                    t,
                    s: t,
                    h,
                    hk,
                    d: dh,
                };
                let (o, lse) =
                    attention_core::forward(d, &q, &k, &v, (dh as f32).powf(-0.5), c.window);
                (o, lse, k, v)
            }
            Some(st) => {
                let s = st.kept + t;
                let row = hk * dh;
                // Key j of this call is absolute token base + j: the kept ones, then these.
                let base = st.pos - st.kept;
                for (bi, cache) in st.kv.iter_mut().enumerate() {
                    cache.push(
                        &k[bi * t * row..(bi + 1) * t * row],
                        &v[bi * t * row..(bi + 1) * t * row],
                    );
                }
                let d = Dims {
                    b,
                    t,
                    s,
                    h,
                    hk,
                    d: dh,
                };
                let scale = (dh as f32).powf(-0.5);
                let kv = attention_core::Paged { seqs: &st.kv, base };
                let (o, lse) = attention_core::forward_rows(d, &q, &kv, scale, c.window);
                // Keep what later tokens can still see: everything (FA) or the last W−1 (SWA);
                // whole blocks before that go back.
                let keep = c.window.map_or(s, |w| s.min(w.saturating_sub(1)));
                for cache in st.kv.iter_mut() {
                    cache.drop_before((st.pos + t - keep).saturating_sub(hold));
                }
                st.kept = keep;
                st.pos += t;
                (o, lse, k, v)
            }
        };
        let og = match &gate {
            Some(g) => o.iter().zip(g).map(|(a, z)| a * sigmoid(*z)).collect(),
            None => o.clone(),
        };
        let y = linear(
            &og,
            self.params.get("o_proj.weight"),
            None,
            n,
            c.hidden,
            h * dh,
        );
        let saved = AttnSaved {
            x: x.to_vec(),
            q,
            k: saved_k,
            v: saved_v,
            o,
            lse,
            gate: gate.unwrap_or_default(),
            b,
            t,
            pos0,
        };
        (y, saved)
    }

    /// MLA over the compressed cache (a whole sequence runs over a fresh one).
    fn mla_forward(
        &self,
        m: crate::mla::MlaDims,
        x: &[f32],
        b: usize,
        t: usize,
        state: Option<&mut AttnState>,
    ) -> (Vec<f32>, AttnSaved) {
        let c = &self.cfg;
        let mut fresh = None;
        let st = match state {
            Some(s) => s,
            None => fresh.insert(self.new_state(b)),
        };
        let n = b * t;
        let qd = c.n_heads * (m.qk_nope + m.qk_rope);
        let q = linear(x, self.params.get("q_proj.weight"), None, n, qd, c.hidden);
        let rows = crate::mla::cache_rows(m, &self.params, x, n, c.hidden);
        let base = st.pos - st.kept;
        let mut o = Vec::with_capacity(n * c.n_heads * m.v_head);
        for (bi, cache) in st.kv.iter_mut().enumerate() {
            cache.push(&rows[bi * t * m.row()..(bi + 1) * t * m.row()], &[]);
            o.extend(crate::mla::attend(
                m,
                &self.params,
                &q[bi * t * qd..(bi + 1) * t * qd],
                c.n_heads,
                cache,
                (base, st.pos),
            ));
        }
        st.kept += t;
        st.pos += t;
        let y = linear(
            &o,
            self.params.get("o_proj.weight"),
            None,
            n,
            c.hidden,
            c.n_heads * m.v_head,
        );
        let saved = AttnSaved {
            x: vec![],
            q: vec![],
            k: vec![],
            v: vec![],
            o: vec![],
            lse: vec![],
            gate: vec![],
            b,
            t,
            pos0: base,
        };
        (y, saved)
    }

    /// Backward of a whole-sequence [`forward`] (no cache): accumulates parameter gradients
    /// into `grads` and returns dx.
    pub fn backward(&self, s: &AttnSaved, dy: &[f32], grads: &mut Params) -> Vec<f32> {
        assert!(
            !self.cfg.qkv_bias && self.cfg.qk_norm.is_none() && self.cfg.mla.is_none(),
            "training attention with q/k/v biases, q/k norms or MLA is not supported"
        );
        let c = &self.cfg;
        let (dh, h, hk, b, t) = (c.head_dim, c.n_heads, c.n_kv_heads, s.b, s.t);
        let n = b * t;
        assert_eq!(s.pos0, 0, "backward is for whole-sequence forwards");
        let og: Vec<f32> = if c.output_gate {
            s.o.iter()
                .zip(&s.gate)
                .map(|(a, z)| a * sigmoid(*z))
                .collect()
        } else {
            s.o.clone()
        };
        let dog = linear_backward(
            &og,
            self.params.get("o_proj.weight"),
            dy,
            n,
            c.hidden,
            h * dh,
            grads.get_mut("o_proj.weight"),
            None,
        );
        let (d_o, dgate) = if c.output_gate {
            let d_o = dog
                .iter()
                .zip(&s.gate)
                .map(|(g, z)| g * sigmoid(*z))
                .collect();
            let dgate: Vec<f32> = dog
                .iter()
                .zip(s.o.iter().zip(&s.gate))
                .map(|(g, (o, z))| g * o * sigmoid(*z) * (1.0 - sigmoid(*z)))
                .collect();
            (d_o, Some(dgate))
        } else {
            (dog, None)
        };
        let d = Dims {
            b,
            t,
            s: t,
            h,
            hk,
            d: dh,
        };
        let (mut dq, mut dk, dv) = attention_core::backward(
            d,
            &s.q,
            &s.k,
            &s.v,
            &s.o,
            &s.lse,
            &d_o,
            (dh as f32).powf(-0.5),
            c.window,
        );
        for bi in 0..b {
            self.rope
                .apply_backward(&mut dq[bi * t * h * dh..(bi + 1) * t * h * dh], h, 0);
            self.rope
                .apply_backward(&mut dk[bi * t * hk * dh..(bi + 1) * t * hk * dh], hk, 0);
        }
        let dqg = join_gate(&dq, dgate.as_deref(), n * h, dh);
        let mut dx = linear_backward(
            &s.x,
            self.params.get("q_proj.weight"),
            &dqg,
            n,
            dqg.len() / n,
            c.hidden,
            grads.get_mut("q_proj.weight"),
            None,
        );
        let dxk = linear_backward(
            &s.x,
            self.params.get("k_proj.weight"),
            &dk,
            n,
            hk * dh,
            c.hidden,
            grads.get_mut("k_proj.weight"),
            None,
        );
        let dxv = linear_backward(
            &s.x,
            self.params.get("v_proj.weight"),
            &dv,
            n,
            hk * dh,
            c.hidden,
            grads.get_mut("v_proj.weight"),
            None,
        );
        dx.iter_mut()
            .zip(dxk.iter().zip(&dxv))
            .for_each(|(a, (b, c))| *a += b + c);
        dx
    }
}

/// Splits per-head rows [q (Dh) | gate (Dh)] when gated.
fn split_gate(qg: &[f32], rows: usize, dh: usize, gated: bool) -> (Vec<f32>, Option<Vec<f32>>) {
    if !gated {
        return (qg.to_vec(), None);
    }
    let mut q = Vec::with_capacity(rows * dh);
    let mut g = Vec::with_capacity(rows * dh);
    for r in qg.chunks_exact(2 * dh) {
        q.extend_from_slice(&r[..dh]);
        g.extend_from_slice(&r[dh..]);
    }
    (q, Some(g))
}

fn join_gate(dq: &[f32], dgate: Option<&[f32]>, rows: usize, dh: usize) -> Vec<f32> {
    match dgate {
        None => dq.to_vec(),
        Some(g) => (0..rows)
            .flat_map(|r| {
                dq[r * dh..(r + 1) * dh]
                    .iter()
                    .chain(&g[r * dh..(r + 1) * dh])
                    .copied()
            })
            .collect(),
    }
}
