//! A hybrid decoder-only language model: pre-norm blocks whose token mixer is chosen per layer
//! (full attention, sliding-window attention, GDN, KDA, GLA), each followed by an optional
//! SwiGLU MLP; RMSNorm; tied or untied LM head. Explicit forward and backward for training,
//! and a stateful forward (prefill / decode) over per-layer caches.
//!
//! Tensor names are Hugging Face's: `model.embed_tokens.weight`,
//! `model.layers.{i}.input_layernorm.weight`, `model.layers.{i}.self_attn.*` (attention) or
//! `model.layers.{i}.linear_attn.*` (linear mixers), `model.layers.{i}.post_attention_layernorm.weight`,
//! `model.layers.{i}.mlp.{gate,up,down}_proj.weight`, `model.norm.weight`, `lm_head.weight`.
//!
//! Shapes: tokens [B, T]; hidden x [B·T, D]; logits [B·T, V].
pub mod config;
pub mod from_llama;
pub mod gpu;
pub mod gpu_supernet;
pub mod gpu_tp;
pub mod gpu_train;
pub mod io;
pub mod moe;
pub mod speed;
pub mod tensor_parallel;

pub use config::{parse_layout, HybridConfig, LayerKind};

use anyhow::{bail, Result};
use mixers::attention::{Attention, AttnSaved, AttnState};
use mixers::linear_mixer::{LinearMixer, LinearSaved, LinearState};
use mixers::params::{linear, linear_backward, InitRng, Params};
use tensor::cpu;

#[derive(Clone)]
pub enum Mixer {
    Attention(Attention),
    Linear(LinearMixer),
}

impl Mixer {
    pub fn params(&self) -> &Params {
        match self {
            Mixer::Attention(a) => &a.params,
            Mixer::Linear(l) => &l.params,
        }
    }
    pub fn params_mut(&mut self) -> &mut Params {
        match self {
            Mixer::Attention(a) => &mut a.params,
            Mixer::Linear(l) => &mut l.params,
        }
    }
    /// Checkpoint prefix under `model.layers.{i}.`.
    pub fn prefix(&self) -> &'static str {
        match self {
            Mixer::Attention(_) => "self_attn.",
            Mixer::Linear(_) => "linear_attn.",
        }
    }
}

#[derive(Clone)]
pub enum LayerState {
    Attention(AttnState),
    Linear(LinearState),
}

/// What a speculative verification ([`HybridModel::forward_lanes`]) keeps so that any prefix
/// of its tokens can be committed: per linear layer, the state before the call and after each
/// token (attention layers need nothing: their caches are truncated).
pub struct Lanes {
    t: usize,
    base: Vec<Option<LinearState>>,
    layers: Vec<Option<Vec<LinearState>>>,
}

impl Lanes {
    fn base(states: &[LayerState]) -> Vec<Option<LinearState>> {
        states
            .iter()
            .map(|s| match s {
                LayerState::Linear(l) => Some(l.clone()),
                LayerState::Attention(_) => None,
            })
            .collect()
    }
}

enum MixerSaved {
    Attention(AttnSaved),
    Linear(Box<LinearSaved>),
}

#[derive(Clone)]
pub struct Block {
    pub mixer: Mixer,
    /// `input_layernorm.weight`, and with an MLP `post_attention_layernorm.weight`,
    /// `mlp.gate_proj.weight`, `mlp.up_proj.weight`, `mlp.down_proj.weight`.
    pub params: Params,
}

pub struct HybridModel {
    pub config: HybridConfig,
    /// `model.embed_tokens.weight`, `model.norm.weight`, and `lm_head.weight` when untied.
    pub top: Params,
    pub blocks: Vec<Block>,
}

/// Gradients with the model's structure.
pub struct Grads {
    pub top: Params,
    pub blocks: Vec<(Params, Params)>,
}

struct BlockSaved {
    x: Vec<f32>,
    mixer: MixerSaved,
    x_mid: Vec<f32>,
    h2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

/// Activations of a training forward, consumed by [`HybridModel::backward`].
pub struct Saved {
    b: usize,
    t: usize,
    tokens: Vec<u32>,
    blocks: Vec<BlockSaved>,
    x_final: Vec<f32>,
    xn: Vec<f32>,
}

impl HybridModel {
    /// A freshly initialised model (normal(0, 0.02) weights, unit norms).
    pub fn init(config: HybridConfig, seed: u64) -> Result<Self> {
        let kinds = config.layers()?;
        let mut rng = InitRng::new(seed);
        let (v, d, f) = (
            config.vocab_size,
            config.hidden_size,
            config.intermediate_size,
        );
        let mut top = Params::default();
        top.insert(
            "model.embed_tokens.weight",
            &[v, d],
            rng.normals(v * d, 0.02),
        );
        top.insert("model.norm.weight", &[d], vec![1.0; d]);
        if !config.tie_word_embeddings {
            top.insert("lm_head.weight", &[v, d], rng.normals(v * d, 0.02));
        }
        if let Some(m) = &config.moe {
            if m.sparse_layers.len() != config.num_hidden_layers
                || m.top_k == 0
                || m.top_k > m.num_experts
            {
                bail!(
                    "moe: {} layer flags for {} layers, top {} of {} experts",
                    m.sparse_layers.len(),
                    config.num_hidden_layers,
                    m.top_k,
                    m.num_experts
                );
            }
        }
        let blocks = kinds
            .into_iter()
            .enumerate()
            .map(|(i, k)| {
                let mixer = match k {
                    LayerKind::Attention(c) => Mixer::Attention(Attention::init(c, &mut rng)),
                    LayerKind::Linear(c) => Mixer::Linear(LinearMixer::init(c, &mut rng)),
                };
                let mut p = Params::default();
                p.insert("input_layernorm.weight", &[d], vec![1.0; d]);
                if let Some(moe) = config.moe.as_ref().filter(|m| m.sparse_layers[i]) {
                    p.insert("post_attention_layernorm.weight", &[d], vec![1.0; d]);
                    moe::init(moe, d, &mut rng, &mut p);
                } else if f > 0 {
                    p.insert("post_attention_layernorm.weight", &[d], vec![1.0; d]);
                    p.insert("mlp.gate_proj.weight", &[f, d], rng.normals(f * d, 0.02));
                    p.insert("mlp.up_proj.weight", &[f, d], rng.normals(f * d, 0.02));
                    p.insert("mlp.down_proj.weight", &[d, f], rng.normals(d * f, 0.02));
                }
                Block { mixer, params: p }
            })
            .collect();
        Ok(HybridModel {
            config,
            top,
            blocks,
        })
    }

    /// A deep copy (weights included).
    pub fn clone_model(&self) -> Self {
        HybridModel {
            config: self.config.clone(),
            top: self.top.clone(),
            blocks: self.blocks.clone(),
        }
    }

    pub fn n_params(&self) -> usize {
        self.top.n_params()
            + self
                .blocks
                .iter()
                .map(|b| b.params.n_params() + b.mixer.params().n_params())
                .sum::<usize>()
    }

    pub fn zero_grads(&self) -> Grads {
        Grads {
            top: self.top.zeros_like(),
            blocks: self
                .blocks
                .iter()
                .map(|b| (b.params.zeros_like(), b.mixer.params().zeros_like()))
                .collect(),
        }
    }

    pub fn new_state(&self, b: usize) -> Vec<LayerState> {
        self.blocks
            .iter()
            .map(|bl| match &bl.mixer {
                Mixer::Attention(a) => LayerState::Attention(a.new_state(b)),
                Mixer::Linear(l) => LayerState::Linear(l.new_state(b)),
            })
            .collect()
    }

    /// States as if `n` tokens had been run (arbitrary cached values, zero recurrent
    /// states): decode-speed measurement at long contexts without the prefill.
    pub fn filled_state(&self, b: usize, n: usize) -> Vec<LayerState> {
        self.blocks
            .iter()
            .map(|bl| match &bl.mixer {
                Mixer::Attention(a) => LayerState::Attention(a.filled_state(b, n)),
                Mixer::Linear(l) => LayerState::Linear(l.new_state(b)),
            })
            .collect()
    }

    /// Cache bytes of one sequence at context `n` (attention K/V at `kv_bytes` per element;
    /// recurrent states in f32): the figure `inspect` reports.
    pub fn cache_bytes(&self, n: usize, kv_bytes: usize) -> usize {
        self.blocks
            .iter()
            .map(|b| match &b.mixer {
                Mixer::Attention(a) => a.cache_bytes(n, kv_bytes),
                Mixer::Linear(l) => l.state_bytes(kv_bytes),
            })
            .sum()
    }

    fn lm_head(&self) -> &[f32] {
        if self.config.tie_word_embeddings {
            self.top.get("model.embed_tokens.weight")
        } else {
            self.top.get("lm_head.weight")
        }
    }

    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let (v, d) = (self.config.vocab_size, self.config.hidden_size);
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= v) {
            bail!("token id {bad} is outside the vocabulary of {v}");
        }
        let mut x = vec![0f32; tokens.len() * d];
        cpu::embedding(self.top.get("model.embed_tokens.weight"), d, tokens, &mut x);
        Ok(x)
    }

    /// One block; `state` given = inference (no saving of what backward needs beyond this call).
    fn block_forward(
        &self,
        bl: &Block,
        x: Vec<f32>,
        b: usize,
        t: usize,
        state: Option<&mut LayerState>,
    ) -> (Vec<f32>, BlockSaved) {
        let h = self.norm(&x, bl, "input_layernorm.weight");
        let (y, mixer) = match (&bl.mixer, state) {
            (Mixer::Attention(a), s) => {
                let st = s.map(|s| match s {
                    LayerState::Attention(st) => st,
                    _ => unreachable!("state kinds follow layer kinds"),
                });
                let (y, sv) = a.forward(&h, b, t, st);
                (y, MixerSaved::Attention(sv))
            }
            (Mixer::Linear(l), s) => {
                let st = s.map(|s| match s {
                    LayerState::Linear(st) => st,
                    _ => unreachable!("state kinds follow layer kinds"),
                });
                let (y, sv) = l.forward(&h, b, t, st);
                (y, MixerSaved::Linear(Box::new(sv)))
            }
        };
        let (out, x_mid, h2, gate, up, act) = self.residual_mlp(bl, &x, &y);
        (
            out,
            BlockSaved {
                x,
                mixer,
                x_mid,
                h2,
                gate,
                up,
                act,
            },
        )
    }

    /// One block of one sequence in speculative verification: the mixer keeps what lets the
    /// state return to any of the T positions (attention: its window's slack; linear mixers:
    /// the state after each token, returned).
    fn block_lanes(
        &self,
        bl: &Block,
        x: Vec<f32>,
        t: usize,
        state: &mut LayerState,
    ) -> (Vec<f32>, Option<Vec<LinearState>>) {
        let h = self.norm(&x, bl, "input_layernorm.weight");
        let (y, lanes) = match (&bl.mixer, state) {
            (Mixer::Attention(a), LayerState::Attention(st)) => (a.forward_lanes(&h, t, st), None),
            (Mixer::Linear(l), LayerState::Linear(st)) => {
                let (y, lanes) = l.forward_lanes(&h, t, st);
                (y, Some(lanes))
            }
            _ => unreachable!("state kinds follow layer kinds"),
        };
        (self.residual_mlp(bl, &x, &y).0, lanes)
    }

    /// RMSNorm of x with the block's weight `name`.
    fn norm(&self, x: &[f32], bl: &Block, name: &str) -> Vec<f32> {
        let mut h = vec![0f32; x.len()];
        cpu::rms_norm(x, bl.params.get(name), self.config.rms_norm_eps, &mut h);
        h
    }

    /// x + y, then the MLP's residual branch: (out, x_mid, h2, gate, up, act).
    #[allow(clippy::type_complexity)]
    fn residual_mlp(
        &self,
        bl: &Block,
        x: &[f32],
        y: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let c = &self.config;
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let n = x.len() / d;
        let mut x_mid = x.to_vec();
        cpu::add_inplace(&mut x_mid, y);
        let mut out = x_mid.clone();
        let (mut h2, mut gate, mut up, mut act) = (vec![], vec![], vec![], vec![]);
        let sparse = bl.params.map.contains_key("mlp.gate.weight");
        if let Some(moe) = c.moe.as_ref().filter(|_| sparse) {
            h2 = self.norm(&x_mid, bl, "post_attention_layernorm.weight");
            cpu::add_inplace(&mut out, &moe::forward(moe, &bl.params, &h2, d));
        } else if f > 0 {
            h2 = self.norm(&x_mid, bl, "post_attention_layernorm.weight");
            gate = linear(&h2, bl.params.get("mlp.gate_proj.weight"), None, n, f, d);
            up = linear(&h2, bl.params.get("mlp.up_proj.weight"), None, n, f, d);
            act = vec![0f32; n * f];
            cpu::swiglu(&gate, &up, &mut act);
            cpu::add_inplace(
                &mut out,
                &linear(&act, bl.params.get("mlp.down_proj.weight"), None, n, d, f),
            );
        }
        (out, x_mid, h2, gate, up, act)
    }

    /// Per layer, the mixer's input (after `input_layernorm`) and its output, for tokens
    /// [B, T]: the teacher's activations that attention transfer trains candidates on.
    pub fn mixer_io(
        &self,
        tokens: &[u32],
        b: usize,
        t: usize,
    ) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        if tokens.len() != b * t {
            bail!("{} tokens do not fill a batch of {b} x {t}", tokens.len());
        }
        let mut x = self.embed(tokens)?;
        let mut out = Vec::with_capacity(self.blocks.len());
        for bl in &self.blocks {
            let mut h = vec![0f32; x.len()];
            cpu::rms_norm(
                &x,
                bl.params.get("input_layernorm.weight"),
                self.config.rms_norm_eps,
                &mut h,
            );
            let (y, s) = self.block_forward(bl, x, b, t, None);
            let mix: Vec<f32> = s.x_mid.iter().zip(&s.x).map(|(a, b)| a - b).collect();
            out.push((h, mix));
            x = y;
        }
        Ok(out)
    }

    /// Training forward over whole sequences: tokens [B, T] -> logits [B·T, V].
    pub fn forward_train(&self, tokens: &[u32], b: usize, t: usize) -> Result<(Vec<f32>, Saved)> {
        if self.config.moe.is_some() {
            bail!("training models with mixture-of-experts MLPs is not supported");
        }
        if tokens.len() != b * t {
            bail!("{} tokens do not fill a batch of {b} x {t}", tokens.len());
        }
        let mut x = self.embed(tokens)?;
        let mut saved = Vec::with_capacity(self.blocks.len());
        for bl in &self.blocks {
            let (y, s) = self.block_forward(bl, x, b, t, None);
            saved.push(s);
            x = y;
        }
        let (logits, xn) = self.head(&x, b * t);
        Ok((
            logits,
            Saved {
                b,
                t,
                tokens: tokens.to_vec(),
                blocks: saved,
                x_final: x,
                xn,
            },
        ))
    }

    fn head(&self, x: &[f32], rows: usize) -> (Vec<f32>, Vec<f32>) {
        let c = &self.config;
        let mut xn = vec![0f32; x.len()];
        cpu::rms_norm(
            x,
            self.top.get("model.norm.weight"),
            c.rms_norm_eps,
            &mut xn,
        );
        (
            linear(&xn, self.lm_head(), None, rows, c.vocab_size, c.hidden_size),
            xn,
        )
    }

    /// Backward from dlogits [B·T, V]; gradients accumulate into `g`.
    pub fn backward(&self, s: &Saved, dlogits: &[f32], g: &mut Grads) {
        let c = &self.config;
        let (d, f, n) = (c.hidden_size, c.intermediate_size, s.b * s.t);
        let head_name = if c.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let dxn = linear_backward(
            &s.xn,
            self.lm_head(),
            dlogits,
            n,
            c.vocab_size,
            d,
            g.top.get_mut(head_name),
            None,
        );
        let mut dx = vec![0f32; n * d];
        cpu::rms_norm_backward(
            &s.x_final,
            self.top.get("model.norm.weight"),
            c.rms_norm_eps,
            &dxn,
            &mut dx,
            g.top.get_mut("model.norm.weight"),
        );
        for (i, (bl, bs)) in self.blocks.iter().zip(&s.blocks).enumerate().rev() {
            let (gp, gm) = &mut g.blocks[i];
            // MLP branch: out = x_mid + down(swiglu(gate(h2), up(h2)))
            let mut dmid = dx.clone();
            if f > 0 {
                let dact = linear_backward(
                    &bs.act,
                    bl.params.get("mlp.down_proj.weight"),
                    &dx,
                    n,
                    d,
                    f,
                    gp.get_mut("mlp.down_proj.weight"),
                    None,
                );
                let mut dgate = vec![0f32; n * f];
                let mut dup = vec![0f32; n * f];
                for i in 0..n * f {
                    let (gv, u) = (bs.gate[i], bs.up[i]);
                    dup[i] = dact[i] * cpu::silu(gv);
                    dgate[i] = dact[i] * u * cpu::silu_grad(gv);
                }
                let mut dh2 = linear_backward(
                    &bs.h2,
                    bl.params.get("mlp.gate_proj.weight"),
                    &dgate,
                    n,
                    f,
                    d,
                    gp.get_mut("mlp.gate_proj.weight"),
                    None,
                );
                cpu::add_inplace(
                    &mut dh2,
                    &linear_backward(
                        &bs.h2,
                        bl.params.get("mlp.up_proj.weight"),
                        &dup,
                        n,
                        f,
                        d,
                        gp.get_mut("mlp.up_proj.weight"),
                        None,
                    ),
                );
                let mut dxm = vec![0f32; n * d];
                cpu::rms_norm_backward(
                    &bs.x_mid,
                    bl.params.get("post_attention_layernorm.weight"),
                    c.rms_norm_eps,
                    &dh2,
                    &mut dxm,
                    gp.get_mut("post_attention_layernorm.weight"),
                );
                cpu::add_inplace(&mut dmid, &dxm);
            }
            // Mixer branch: x_mid = x + mixer(rmsnorm(x))
            let dh = match (&bl.mixer, &bs.mixer) {
                (Mixer::Attention(a), MixerSaved::Attention(sv)) => a.backward(sv, &dmid, gm),
                (Mixer::Linear(l), MixerSaved::Linear(sv)) => l.backward(sv, &dmid, gm),
                _ => unreachable!("saved kinds follow layer kinds"),
            };
            let mut dxn = vec![0f32; n * d];
            cpu::rms_norm_backward(
                &bs.x,
                bl.params.get("input_layernorm.weight"),
                c.rms_norm_eps,
                &dh,
                &mut dxn,
                gp.get_mut("input_layernorm.weight"),
            );
            dx = dmid;
            cpu::add_inplace(&mut dx, &dxn);
        }
        // Embedding rows receive their tokens' gradients.
        let emb = g.top.get_mut("model.embed_tokens.weight");
        for (row, &tok) in dx.chunks_exact(d).zip(&s.tokens) {
            emb[tok as usize * d..(tok as usize + 1) * d]
                .iter_mut()
                .zip(row)
                .for_each(|(a, b)| *a += b);
        }
    }

    /// Inference: runs tokens [B, T] after what `states` hold; returns logits of every token
    /// ([B·T, V]) or of each sequence's last token ([B, V]).
    pub fn forward(
        &self,
        tokens: &[u32],
        b: usize,
        states: &mut [LayerState],
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        let t = tokens.len() / b.max(1);
        if t == 0 || tokens.len() != b * t {
            bail!(
                "{} tokens do not fill a batch of {b} sequences",
                tokens.len()
            );
        }
        let mut x = self.embed(tokens)?;
        for (bl, st) in self.blocks.iter().zip(states.iter_mut()) {
            x = self.block_forward(bl, x, b, t, Some(st)).0;
        }
        let d = self.config.hidden_size;
        let x = if all_logits {
            x
        } else {
            (0..b)
                .flat_map(|bi| x[((bi + 1) * t - 1) * d..(bi + 1) * t * d].to_vec())
                .collect()
        };
        let rows = x.len() / d;
        Ok(self.head(&x, rows).0)
    }

    /// Speculative verification of one sequence: runs `tokens` (T of them) after `states`
    /// and returns the logits of every token ([T, V]) and the lanes that let
    /// [`HybridModel::commit`] keep any prefix of them without running anything again.
    pub fn forward_lanes(
        &self,
        tokens: &[u32],
        states: &mut [LayerState],
    ) -> Result<(Vec<f32>, Lanes)> {
        let t = tokens.len();
        if t == 0 {
            bail!("speculative verification needs at least one token");
        }
        let base = Lanes::base(states);
        let mut x = self.embed(tokens)?;
        let mut layers = Vec::with_capacity(self.blocks.len());
        for (bl, st) in self.blocks.iter().zip(states.iter_mut()) {
            let (y, lanes) = self.block_lanes(bl, x, t, st);
            x = y;
            layers.push(lanes);
        }
        let logits = self.head(&x, t).0;
        Ok((logits, Lanes { t, base, layers }))
    }

    /// Keeps the first `keep` (0..=T) tokens of a [`HybridModel::forward_lanes`] call: linear
    /// layers take the state after token `keep` (their lane; the state before the call when
    /// `keep` is 0), attention layers forget the keys and values after it.
    pub fn commit(&self, states: &mut [LayerState], lanes: Lanes, keep: usize) -> Result<()> {
        if keep > lanes.t {
            bail!("cannot keep {keep} of {} verified tokens", lanes.t);
        }
        for ((bl, st), (lane, base)) in self
            .blocks
            .iter()
            .zip(states.iter_mut())
            .zip(lanes.layers.into_iter().zip(lanes.base))
        {
            match (st, &bl.mixer) {
                (LayerState::Attention(a), Mixer::Attention(m)) => {
                    let pos = a.pos - lanes.t + keep;
                    a.rollback(pos, m.cfg.window);
                }
                (LayerState::Linear(l), Mixer::Linear(_)) => {
                    if keep == 0 {
                        *l = base.expect("linear layers keep their base state");
                    } else if keep < lanes.t {
                        let mut lane = lane.expect("linear layers have lanes");
                        *l = lane.swap_remove(keep - 1);
                    }
                }
                _ => unreachable!("state kinds follow layer kinds"),
            }
        }
        Ok(())
    }

    /// Calls `f(name, param, grad)` for every parameter, with checkpoint names.
    pub fn visit_params(&mut self, g: &Grads, mut f: impl FnMut(&str, &mut [f32], &[f32])) {
        for (k, p) in self.top.map.iter_mut() {
            f(k, &mut p.data, g.top.get(k));
        }
        for (i, (bl, (gp, gm))) in self.blocks.iter_mut().zip(&g.blocks).enumerate() {
            for (k, p) in bl.params.map.iter_mut() {
                f(&format!("model.layers.{i}.{k}"), &mut p.data, gp.get(k));
            }
            let pre = bl.mixer.prefix();
            for (k, p) in bl.mixer.params_mut().map.iter_mut() {
                f(
                    &format!("model.layers.{i}.{pre}{k}"),
                    &mut p.data,
                    gm.get(k),
                );
            }
        }
    }
}

impl Grads {
    /// Every gradient buffer, for global-norm clipping.
    pub fn slices_mut(&mut self) -> Vec<&mut [f32]> {
        let mut v: Vec<&mut [f32]> = self
            .top
            .map
            .values_mut()
            .map(|p| p.data.as_mut_slice())
            .collect();
        for (a, b) in self.blocks.iter_mut() {
            v.extend(a.map.values_mut().map(|p| p.data.as_mut_slice()));
            v.extend(b.map.values_mut().map(|p| p.data.as_mut_slice()));
        }
        v
    }
}
