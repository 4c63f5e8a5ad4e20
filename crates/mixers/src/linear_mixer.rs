//! The linear-attention mixers as whole layers, following flash-linear-attention's layers
//! (`fla/layers/{gated_deltanet, kda, gla}.py`, research/mixers.md §1.2, §2.3):
//!
//! ```text
//! q, k, v = short_conv(x·Wq), short_conv(x·Wk), short_conv(x·Wv)      (depthwise, W=4, SiLU)
//! GDN, KDA: q, k ← L2-normalised per head;  β = sigmoid(x·Wb)
//! decay g (log, ≤ 0) per value head and key channel:
//!   GDN  g = −exp(A_log[h]) · softplus(x·Wa + dt_bias[h])             (one per head)
//!   KDA  g = −exp(A_log[h]) · softplus((x·Wfa)·Wfb + dt_bias[h,c])     (per channel, low rank)
//!   GLA  g = logsigmoid((x·W0)·W1 + b1) / 16                         (per channel, low rank)
//! o = linear_core(q, k, v, g, β)  with scale K^-1/2  (GLA: no delta rule)
//! y = o_proj( rmsnorm_per_head(o) · w ⊙ act(z) ),  z = x·Wg (GDN, GLA: act = SiLU)
//!                                                 z = (x·Wga)·Wgb + bgb (KDA: act = sigmoid)
//! ```
//!
//! Parameter names are FLA's (`q_proj.weight`, `q_conv1d.weight`, `A_log`, `dt_bias`,
//! `o_norm.weight`, ...); conv weights are stored [C, W] (checkpoints: [C, 1, W]).
//! Shapes: x, y [B, T, D]; state: recurrent [B, HV, K, V] f32 plus conv histories.
use crate::conv;
use crate::linear_core::{self, Dims, Inputs};
use crate::ops::{
    self, gated_rmsnorm, gated_rmsnorm_backward, sigmoid, softplus, softplus_grad, GateAct,
};
use crate::params::{linear, linear_backward, InitRng, Params};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearKind {
    Gdn,
    Kda,
    Gla,
}

impl LinearKind {
    pub fn name(self) -> &'static str {
        match self {
            LinearKind::Gdn => "gdn",
            LinearKind::Kda => "kda",
            LinearKind::Gla => "gla",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gdn" => Some(LinearKind::Gdn),
            "kda" => Some(LinearKind::Kda),
            "gla" => Some(LinearKind::Gla),
            _ => None,
        }
    }
    fn delta_rule(self) -> bool {
        self != LinearKind::Gla
    }
    fn act(self) -> GateAct {
        if self == LinearKind::Kda {
            GateAct::Sigmoid
        } else {
            GateAct::Silu
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LinearConfig {
    pub kind: LinearKind,
    pub hidden: usize,
    /// q/k heads H and value heads HV (GVA: HV a multiple of H; GLA needs HV = H).
    pub n_heads: usize,
    pub n_v_heads: usize,
    pub head_k_dim: usize,
    pub head_v_dim: usize,
    /// Short conv kernel width; 0 disables the conv.
    pub conv_size: usize,
    /// Rank of KDA's and GLA's low-rank gate projections.
    pub gate_rank: usize,
    pub norm_eps: f32,
    /// Chunk size of the chunked prefill/training form.
    pub chunk: usize,
}

#[derive(Clone)]
pub struct LinearMixer {
    pub cfg: LinearConfig,
    pub params: Params,
}

#[derive(Clone, Debug)]
pub struct LinearState {
    /// [B, HV, K, V]
    pub rec: Vec<f32>,
    /// [B, W−1, C] for q, k, v
    pub conv_q: Vec<f32>,
    pub conv_k: Vec<f32>,
    pub conv_v: Vec<f32>,
}

/// Activations the backward pass needs.
pub struct LinearSaved {
    b: usize,
    t: usize,
    x: Vec<f32>,
    pre_q: Vec<f32>,
    pre_k: Vec<f32>,
    pre_v: Vec<f32>,
    conv_pre: [Vec<f32>; 3],
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    inv_q: Vec<f32>,
    inv_k: Vec<f32>,
    beta: Vec<f32>,
    /// Pre-activation of the decay (a + dt_bias, f + dt_bias, or GLA's f).
    gpre: Vec<f32>,
    g: Vec<f32>,
    /// Low-rank intermediates: decay (KDA/GLA) and gate (KDA).
    f_mid: Vec<f32>,
    z_mid: Vec<f32>,
    core: linear_core::ChunkedOut,
    z: Vec<f32>,
    rs: Vec<f32>,
    y: Vec<f32>,
}

impl LinearMixer {
    pub fn new(cfg: LinearConfig, params: Params) -> Self {
        LinearMixer { cfg, params }
    }

    fn dims(&self, b: usize, t: usize) -> Dims {
        let c = &self.cfg;
        Dims {
            b,
            t,
            h: c.n_heads,
            hv: c.n_v_heads,
            k: c.head_k_dim,
            v: c.head_v_dim,
        }
    }

    /// FLA-style initialisation: projections normal(0, 0.02); A_log = log U(1, 16);
    /// dt_bias = softplus⁻¹(dt) with dt log-uniform in [1e-3, 0.1]; norm weights 1.
    pub fn init(cfg: LinearConfig, rng: &mut InitRng) -> Self {
        let c = &cfg;
        let (d, hk, hvv, hvk, r) = (
            c.hidden,
            c.n_heads * c.head_k_dim,
            c.n_v_heads * c.head_v_dim,
            c.n_v_heads * c.head_k_dim,
            c.gate_rank,
        );
        let mut p = Params::default();
        let mut lin = |p: &mut Params, name: &str, o: usize, i: usize| {
            p.insert(name, &[o, i], rng.normals(o * i, 0.02))
        };
        lin(&mut p, "q_proj.weight", hk, d);
        lin(&mut p, "k_proj.weight", hk, d);
        lin(&mut p, "v_proj.weight", hvv, d);
        lin(&mut p, "o_proj.weight", d, hvv);
        match c.kind {
            LinearKind::Gdn => {
                lin(&mut p, "a_proj.weight", c.n_v_heads, d);
                lin(&mut p, "b_proj.weight", c.n_v_heads, d);
                lin(&mut p, "g_proj.weight", hvv, d);
            }
            LinearKind::Kda => {
                lin(&mut p, "f_a_proj.weight", r, d);
                lin(&mut p, "f_b_proj.weight", hvk, r);
                lin(&mut p, "b_proj.weight", c.n_v_heads, d);
                lin(&mut p, "g_a_proj.weight", r, d);
                lin(&mut p, "g_b_proj.weight", hvv, r);
                p.insert("g_b_proj.bias", &[hvv], vec![0.0; hvv]);
            }
            LinearKind::Gla => {
                lin(&mut p, "gk_proj.0.weight", r, d);
                lin(&mut p, "gk_proj.1.weight", hvk, r);
                p.insert("gk_proj.1.bias", &[hvk], vec![0.0; hvk]);
                lin(&mut p, "g_proj.weight", hvv, d);
            }
        }
        if c.conv_size > 0 {
            let w = c.conv_size;
            for (name, ch) in [
                ("q_conv1d.weight", hk),
                ("k_conv1d.weight", hk),
                ("v_conv1d.weight", hvv),
            ] {
                p.insert(name, &[ch, w], rng.normals(ch * w, (1.0 / w as f64).sqrt()));
            }
        }
        if c.kind != LinearKind::Gla {
            let a: Vec<f32> = (0..c.n_v_heads)
                .map(|_| (1.0 + 15.0 * rng.uniform()).ln() as f32)
                .collect();
            p.insert("A_log", &[c.n_v_heads], a);
            let n_dt = if c.kind == LinearKind::Gdn {
                c.n_v_heads
            } else {
                hvk
            };
            let dt: Vec<f32> = (0..n_dt)
                .map(|_| {
                    let dt = (1e-3f64.ln() + rng.uniform() * (0.1f64.ln() - 1e-3f64.ln()))
                        .exp()
                        .max(1e-4);
                    (dt + (-(-dt).exp_m1()).ln()) as f32 // softplus⁻¹(dt) = dt + log(1 − e^−dt)
                })
                .collect();
            p.insert("dt_bias", &[n_dt], dt);
        }
        p.insert("o_norm.weight", &[c.head_v_dim], vec![1.0; c.head_v_dim]);
        LinearMixer { cfg, params: p }
    }

    pub fn new_state(&self, b: usize) -> LinearState {
        let c = &self.cfg;
        let hist = c.conv_size.saturating_sub(1);
        LinearState {
            rec: vec![0.0; b * c.n_v_heads * c.head_k_dim * c.head_v_dim],
            conv_q: vec![0.0; b * hist * c.n_heads * c.head_k_dim],
            conv_k: vec![0.0; b * hist * c.n_heads * c.head_k_dim],
            conv_v: vec![0.0; b * hist * c.n_v_heads * c.head_v_dim],
        }
    }

    /// State bytes per sequence (recurrent state f32 + conv histories at `bytes`).
    pub fn state_bytes(&self, bytes: usize) -> usize {
        let c = &self.cfg;
        let conv = c.conv_size.saturating_sub(1)
            * (2 * c.n_heads * c.head_k_dim + c.n_v_heads * c.head_v_dim)
            * bytes;
        c.n_v_heads * c.head_k_dim * c.head_v_dim * 4 + conv
    }

    /// x [B, T, D] -> y [B, T, D], continuing `state` if given.
    pub fn forward(
        &self,
        x: &[f32],
        b: usize,
        t: usize,
        state: Option<&mut LinearState>,
    ) -> (Vec<f32>, LinearSaved) {
        self.forward_impl(x, b, t, state, None)
    }

    /// x [T, D] of one sequence -> y [T, D], continuing `state`, and the state after each of
    /// the T tokens (speculative verification's lanes: a rejected draft is undone by taking the
    /// lane of the last accepted token, since a recurrent state cannot be rolled back). The
    /// recurrence runs token by token, exactly as decode steps do; `state` ends after all T.
    pub fn forward_lanes(
        &self,
        x: &[f32],
        t: usize,
        state: &mut LinearState,
    ) -> (Vec<f32>, Vec<LinearState>) {
        let mut lanes = Vec::with_capacity(t);
        let (y, _) = self.forward_impl(x, 1, t, Some(state), Some(&mut lanes));
        (y, lanes)
    }

    fn forward_impl(
        &self,
        x: &[f32],
        b: usize,
        t: usize,
        mut state: Option<&mut LinearState>,
        lanes: Option<&mut Vec<LinearState>>,
    ) -> (Vec<f32>, LinearSaved) {
        let c = &self.cfg;
        let p = &self.params;
        let (d, n) = (c.hidden, b * t);
        let (hk, hvv, hvk) = (
            c.n_heads * c.head_k_dim,
            c.n_v_heads * c.head_v_dim,
            c.n_v_heads * c.head_k_dim,
        );
        let pre_q = linear(x, p.get("q_proj.weight"), None, n, hk, d);
        let pre_k = linear(x, p.get("k_proj.weight"), None, n, hk, d);
        let pre_v = linear(x, p.get("v_proj.weight"), None, n, hvv, d);
        // Short convs (their SiLU included), or the plain activation without them.
        let mut conv_pre: [Vec<f32>; 3] = Default::default();
        // With lanes, the conv history after every token (token by token, as decode runs).
        let per_token = lanes.is_some();
        let mut hists: [Vec<Vec<f32>>; 3] = Default::default();
        let mut act =
            |i: usize, pre: &[f32], ch: usize, name: &str, st: Option<&mut Vec<f32>>| -> Vec<f32> {
                if c.conv_size > 0 && per_token {
                    let st = st.expect("lanes continue a state");
                    let (mut y, mut pv) = (vec![], vec![]);
                    for row in pre.chunks_exact(ch) {
                        let out = conv::forward(row, p.get(name), 1, 1, ch, c.conv_size, Some(st));
                        y.extend(out.y);
                        pv.extend(out.pre);
                        hists[i].push(st.clone());
                    }
                    conv_pre[i] = pv;
                    y
                } else if c.conv_size > 0 {
                    let out = conv::forward(
                        pre,
                        p.get(name),
                        b,
                        t,
                        ch,
                        c.conv_size,
                        st.map(|s| s.as_mut_slice()),
                    );
                    conv_pre[i] = out.pre;
                    out.y
                } else if c.kind == LinearKind::Gla {
                    pre.to_vec()
                } else {
                    pre.iter().map(|&v| tensor::cpu::silu(v)).collect()
                }
            };
        let mut q = act(
            0,
            &pre_q,
            hk,
            "q_conv1d.weight",
            state.as_deref_mut().map(|s| &mut s.conv_q),
        );
        let mut k = act(
            1,
            &pre_k,
            hk,
            "k_conv1d.weight",
            state.as_deref_mut().map(|s| &mut s.conv_k),
        );
        let v = act(
            2,
            &pre_v,
            hvv,
            "v_conv1d.weight",
            state.as_deref_mut().map(|s| &mut s.conv_v),
        );
        let (inv_q, inv_k) = if c.kind.delta_rule() {
            (
                ops::l2norm_rows(&mut q, c.head_k_dim),
                ops::l2norm_rows(&mut k, c.head_k_dim),
            )
        } else {
            (vec![], vec![])
        };
        let beta: Vec<f32> = if c.kind.delta_rule() {
            linear(x, p.get("b_proj.weight"), None, n, c.n_v_heads, d)
                .iter()
                .map(|&v| sigmoid(v))
                .collect()
        } else {
            vec![]
        };
        // Decay: pre-activation gpre and g [N, HV, K].
        let (gpre, g, f_mid): (Vec<f32>, Vec<f32>, Vec<f32>) = match c.kind {
            LinearKind::Gdn => {
                let a = linear(x, p.get("a_proj.weight"), None, n, c.n_v_heads, d);
                let (al, dt) = (p.get("A_log"), p.get("dt_bias"));
                let gpre: Vec<f32> = a
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v + dt[i % c.n_v_heads])
                    .collect();
                let g = gpre
                    .iter()
                    .enumerate()
                    .flat_map(|(i, &u)| {
                        std::iter::repeat_n(-al[i % c.n_v_heads].exp() * softplus(u), c.head_k_dim)
                    })
                    .collect();
                (gpre, g, vec![])
            }
            LinearKind::Kda => {
                let mid = linear(x, p.get("f_a_proj.weight"), None, n, c.gate_rank, d);
                let f = linear(&mid, p.get("f_b_proj.weight"), None, n, hvk, c.gate_rank);
                let (al, dt) = (p.get("A_log"), p.get("dt_bias"));
                let gpre: Vec<f32> = f.iter().enumerate().map(|(i, v)| v + dt[i % hvk]).collect();
                let g = gpre
                    .iter()
                    .enumerate()
                    .map(|(i, &u)| -al[(i % hvk) / c.head_k_dim].exp() * softplus(u))
                    .collect();
                (gpre, g, mid)
            }
            LinearKind::Gla => {
                let mid = linear(x, p.get("gk_proj.0.weight"), None, n, c.gate_rank, d);
                let f = linear(
                    &mid,
                    p.get("gk_proj.1.weight"),
                    Some(p.get("gk_proj.1.bias")),
                    n,
                    hvk,
                    c.gate_rank,
                );
                let g = f.iter().map(|&u| ops::logsigmoid(u) / 16.0).collect();
                (f, g, mid)
            }
        };
        let dims = self.dims(b, t);
        let inputs = Inputs {
            q: &q,
            k: &k,
            v: &v,
            g: &g,
            beta: c.kind.delta_rule().then_some(&beta[..]),
        };
        let scale = (c.head_k_dim as f32).powf(-0.5);
        let h0 = state.as_deref().map(|s| s.rec.as_slice());
        let core = if let Some(lanes) = lanes {
            let st = state.as_deref_mut().expect("lanes continue a state");
            let (hk_row, hv_row, g_row) = (hk, hvv, hvk);
            let mut o = Vec::with_capacity(t * hvv);
            for j in 0..t {
                let row = Inputs {
                    q: &q[j * hk_row..(j + 1) * hk_row],
                    k: &k[j * hk_row..(j + 1) * hk_row],
                    v: &v[j * hv_row..(j + 1) * hv_row],
                    g: &g[j * g_row..(j + 1) * g_row],
                    beta: c
                        .kind
                        .delta_rule()
                        .then(|| &beta[j * c.n_v_heads..(j + 1) * c.n_v_heads]),
                };
                o.extend(linear_core::step(self.dims(1, 1), row, scale, &mut st.rec));
                let hist = |i: usize, now: &Vec<f32>| hists[i].get(j).unwrap_or(now).clone();
                lanes.push(LinearState {
                    rec: st.rec.clone(),
                    conv_q: hist(0, &st.conv_q),
                    conv_k: hist(1, &st.conv_k),
                    conv_v: hist(2, &st.conv_v),
                });
            }
            linear_core::ChunkedOut {
                o,
                state: vec![],
                chunk_states: vec![],
                chunk: 1,
            }
        } else if t == 1 && state.is_some() {
            let st = state.as_deref_mut().unwrap();
            let o = linear_core::step(dims, inputs, scale, &mut st.rec);
            linear_core::ChunkedOut {
                o,
                state: vec![],
                chunk_states: vec![],
                chunk: 1,
            }
        } else {
            let out = linear_core::chunked(dims, inputs, scale, h0, c.chunk);
            if let Some(st) = state {
                st.rec.copy_from_slice(&out.state);
            }
            out
        };
        let (z, z_mid) = if c.kind == LinearKind::Kda {
            let mid = linear(x, p.get("g_a_proj.weight"), None, n, c.gate_rank, d);
            (
                linear(
                    &mid,
                    p.get("g_b_proj.weight"),
                    Some(p.get("g_b_proj.bias")),
                    n,
                    hvv,
                    c.gate_rank,
                ),
                mid,
            )
        } else {
            (linear(x, p.get("g_proj.weight"), None, n, hvv, d), vec![])
        };
        let (y, rs) = gated_rmsnorm(
            &core.o,
            &z,
            p.get("o_norm.weight"),
            c.norm_eps,
            c.kind.act(),
        );
        let out = linear(&y, p.get("o_proj.weight"), None, n, d, hvv);
        let saved = LinearSaved {
            b,
            t,
            x: x.to_vec(),
            pre_q,
            pre_k,
            pre_v,
            conv_pre,
            q,
            k,
            v,
            inv_q,
            inv_k,
            beta,
            gpre,
            g,
            f_mid,
            z_mid,
            core,
            z,
            rs,
            y,
        };
        (out, saved)
    }

    /// Backward of a whole-sequence [`forward`] (no incoming state).
    pub fn backward(&self, s: &LinearSaved, dy: &[f32], gr: &mut Params) -> Vec<f32> {
        let c = &self.cfg;
        let p = &self.params;
        let (d, n, b, t) = (c.hidden, s.b * s.t, s.b, s.t);
        let (hk, hvv, hvk) = (
            c.n_heads * c.head_k_dim,
            c.n_v_heads * c.head_v_dim,
            c.n_v_heads * c.head_k_dim,
        );
        let dyn_ = linear_backward(
            &s.y,
            p.get("o_proj.weight"),
            dy,
            n,
            d,
            hvv,
            gr.get_mut("o_proj.weight"),
            None,
        );
        let (d_o, dz) = gated_rmsnorm_backward(
            &s.core.o,
            &s.z,
            p.get("o_norm.weight"),
            &s.rs,
            &dyn_,
            c.kind.act(),
            gr.get_mut("o_norm.weight"),
        );
        let mut dx = if c.kind == LinearKind::Kda {
            let (w, bias) = gr_pair(gr, "g_b_proj.weight", "g_b_proj.bias");
            let dmid = linear_backward(
                &s.z_mid,
                p.get("g_b_proj.weight"),
                &dz,
                n,
                hvv,
                c.gate_rank,
                w,
                Some(bias),
            );
            linear_backward(
                &s.x,
                p.get("g_a_proj.weight"),
                &dmid,
                n,
                c.gate_rank,
                d,
                gr.get_mut("g_a_proj.weight"),
                None,
            )
        } else {
            linear_backward(
                &s.x,
                p.get("g_proj.weight"),
                &dz,
                n,
                hvv,
                d,
                gr.get_mut("g_proj.weight"),
                None,
            )
        };
        let add = |dx: &mut Vec<f32>, e: Vec<f32>| dx.iter_mut().zip(e).for_each(|(a, b)| *a += b);
        let dims = self.dims(b, t);
        let inputs = Inputs {
            q: &s.q,
            k: &s.k,
            v: &s.v,
            g: &s.g,
            beta: c.kind.delta_rule().then_some(&s.beta[..]),
        };
        let cg = linear_core::backward(
            dims,
            inputs,
            (c.head_k_dim as f32).powf(-0.5),
            &s.core,
            &d_o,
            None,
        );
        if let Some(db) = &cg.dbeta {
            let dlogit: Vec<f32> = db
                .iter()
                .zip(&s.beta)
                .map(|(g, b)| g * b * (1.0 - b))
                .collect();
            add(
                &mut dx,
                linear_backward(
                    &s.x,
                    p.get("b_proj.weight"),
                    &dlogit,
                    n,
                    c.n_v_heads,
                    d,
                    gr.get_mut("b_proj.weight"),
                    None,
                ),
            );
        }
        match c.kind {
            LinearKind::Gdn => {
                let al = p.get("A_log");
                let mut da = vec![0f32; n * c.n_v_heads];
                let (mut dal, mut ddt) = (vec![0f32; c.n_v_heads], vec![0f32; c.n_v_heads]);
                for (i, u) in s.gpre.iter().enumerate() {
                    let h = i % c.n_v_heads;
                    let dgh: f32 = cg.dg[i * c.head_k_dim..(i + 1) * c.head_k_dim].iter().sum();
                    let e = al[h].exp();
                    dal[h] += dgh * -e * softplus(*u);
                    let dpre = dgh * -e * softplus_grad(*u);
                    ddt[h] += dpre;
                    da[i] = dpre;
                }
                acc(gr.get_mut("A_log"), &dal);
                acc(gr.get_mut("dt_bias"), &ddt);
                add(
                    &mut dx,
                    linear_backward(
                        &s.x,
                        p.get("a_proj.weight"),
                        &da,
                        n,
                        c.n_v_heads,
                        d,
                        gr.get_mut("a_proj.weight"),
                        None,
                    ),
                );
            }
            LinearKind::Kda => {
                let al = p.get("A_log");
                let mut df = vec![0f32; n * hvk];
                let (mut dal, mut ddt) = (vec![0f32; c.n_v_heads], vec![0f32; hvk]);
                for (i, u) in s.gpre.iter().enumerate() {
                    let h = (i % hvk) / c.head_k_dim;
                    let e = al[h].exp();
                    dal[h] += cg.dg[i] * -e * softplus(*u);
                    let dpre = cg.dg[i] * -e * softplus_grad(*u);
                    ddt[i % hvk] += dpre;
                    df[i] = dpre;
                }
                acc(gr.get_mut("A_log"), &dal);
                acc(gr.get_mut("dt_bias"), &ddt);
                let dmid = linear_backward(
                    &s.f_mid,
                    p.get("f_b_proj.weight"),
                    &df,
                    n,
                    hvk,
                    c.gate_rank,
                    gr.get_mut("f_b_proj.weight"),
                    None,
                );
                add(
                    &mut dx,
                    linear_backward(
                        &s.x,
                        p.get("f_a_proj.weight"),
                        &dmid,
                        n,
                        c.gate_rank,
                        d,
                        gr.get_mut("f_a_proj.weight"),
                        None,
                    ),
                );
            }
            LinearKind::Gla => {
                let df: Vec<f32> = cg
                    .dg
                    .iter()
                    .zip(&s.gpre)
                    .map(|(g, u)| g / 16.0 * (1.0 - sigmoid(*u)))
                    .collect();
                let (w, bias) = gr_pair(gr, "gk_proj.1.weight", "gk_proj.1.bias");
                let dmid = linear_backward(
                    &s.f_mid,
                    p.get("gk_proj.1.weight"),
                    &df,
                    n,
                    hvk,
                    c.gate_rank,
                    w,
                    Some(bias),
                );
                add(
                    &mut dx,
                    linear_backward(
                        &s.x,
                        p.get("gk_proj.0.weight"),
                        &dmid,
                        n,
                        c.gate_rank,
                        d,
                        gr.get_mut("gk_proj.0.weight"),
                        None,
                    ),
                );
            }
        }
        let (dq, dk) = if c.kind.delta_rule() {
            (
                ops::l2norm_rows_backward(&s.q, &s.inv_q, &cg.dq, c.head_k_dim),
                ops::l2norm_rows_backward(&s.k, &s.inv_k, &cg.dk, c.head_k_dim),
            )
        } else {
            (cg.dq, cg.dk)
        };
        for (i, (dpost, pre, ch, conv_name, proj)) in [
            (dq, &s.pre_q, hk, "q_conv1d.weight", "q_proj.weight"),
            (dk, &s.pre_k, hk, "k_conv1d.weight", "k_proj.weight"),
            (cg.dv, &s.pre_v, hvv, "v_conv1d.weight", "v_proj.weight"),
        ]
        .into_iter()
        .enumerate()
        {
            let dpre = if c.conv_size > 0 {
                let (dpre, dw) = conv::backward(
                    pre,
                    p.get(conv_name),
                    &s.conv_pre[i],
                    &dpost,
                    b,
                    t,
                    ch,
                    c.conv_size,
                );
                acc(gr.get_mut(conv_name), &dw);
                dpre
            } else if c.kind == LinearKind::Gla {
                dpost
            } else {
                dpost
                    .iter()
                    .zip(pre.iter())
                    .map(|(g, &u)| g * tensor::cpu::silu_grad(u))
                    .collect()
            };
            add(
                &mut dx,
                linear_backward(&s.x, p.get(proj), &dpre, n, ch, d, gr.get_mut(proj), None),
            );
        }
        dx
    }
}

fn acc(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(a, b)| *a += b);
}

/// Two distinct gradient buffers at once (weight and bias of one projection).
fn gr_pair<'a>(gr: &'a mut Params, w: &str, b: &str) -> (&'a mut [f32], &'a mut [f32]) {
    let mut wp = None;
    let mut bp = None;
    for (k, p) in gr.map.iter_mut() {
        if k == w {
            wp = Some(p.data.as_mut_slice());
        } else if k == b {
            bp = Some(p.data.as_mut_slice());
        }
    }
    (wp.expect("weight gradient"), bp.expect("bias gradient"))
}
