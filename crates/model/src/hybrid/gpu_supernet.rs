//! Whole-model training on the GPU: the supernet of `hybrid convert` (every layer holds the
//! teacher's FA mixer and one candidate mixer per type; the teacher's MLPs, norms and
//! embeddings are frozen and shared), run for any layout, with KL to the teacher's logits as
//! the loss. Its specification is `HybridModel::{forward_train, backward}` of the assembled
//! layout; tests/gpu_train.rs compares the two on a small random model.
//!
//! Precision is gpu_train's: f32 residual stream, norms and elementwise ops; GEMM operands in
//! bf16 with f32 accumulation. The frozen weights live on the GPU once, in bf16 (GEMM
//! operands) and f32 (norm gains). Gradients flow through the frozen blocks to the lowest
//! trained layer and stop there.
use super::gpu_train::{to_bf, GpuAdamW, GpuAttentionTrain, GpuLinearTrain, GpuParams};
use super::gpu_train::{GpuAttentionSaved, GpuLinearSaved};
use super::{HybridModel, Mixer};
use anyhow::{bail, Context, Result};
use cudarc::driver::CudaSlice;
use half::bf16;
use std::collections::BTreeMap;
use tensor::cuda::{Collective, Gpu};

/// One layer's candidate mixer in training.
pub enum GpuMixerTrain {
    Attention(GpuAttentionTrain),
    Linear(GpuLinearTrain),
}

enum GpuMixerSaved {
    Attention(Box<GpuAttentionSaved>),
    Linear(Box<GpuLinearSaved>),
}

impl GpuMixerTrain {
    pub fn new(g: &Gpu, m: &Mixer) -> Result<Self> {
        Ok(match m {
            Mixer::Attention(a) => GpuMixerTrain::Attention(GpuAttentionTrain::new(g, a)?),
            Mixer::Linear(l) => GpuMixerTrain::Linear(GpuLinearTrain::new(g, l)?),
        })
    }

    fn forward(
        &self,
        g: &Gpu,
        x: &CudaSlice<f32>,
        b: usize,
        t: usize,
    ) -> Result<(CudaSlice<f32>, GpuMixerSaved)> {
        Ok(match self {
            GpuMixerTrain::Attention(a) => {
                let (y, s) = a.forward(g, x, b, t)?;
                (y, GpuMixerSaved::Attention(Box::new(s)))
            }
            GpuMixerTrain::Linear(l) => {
                let (y, s) = l.forward(g, x, b, t)?;
                (y, GpuMixerSaved::Linear(Box::new(s)))
            }
        })
    }

    fn backward(
        &mut self,
        g: &Gpu,
        s: &GpuMixerSaved,
        dy: &CudaSlice<f32>,
    ) -> Result<CudaSlice<f32>> {
        match (self, s) {
            (GpuMixerTrain::Attention(a), GpuMixerSaved::Attention(s)) => a.backward(g, s, dy),
            (GpuMixerTrain::Linear(l), GpuMixerSaved::Linear(s)) => l.backward(g, s, dy),
            _ => bail!("a mixer's saved activations are of another kind"),
        }
    }

    pub fn weights(&mut self) -> &mut GpuParams {
        match self {
            GpuMixerTrain::Attention(a) => &mut a.w,
            GpuMixerTrain::Linear(l) => &mut l.w,
        }
    }

    fn weights_ref(&self) -> &GpuParams {
        match self {
            GpuMixerTrain::Attention(a) => &a.w,
            GpuMixerTrain::Linear(l) => &l.w,
        }
    }
}

/// A block's frozen weights: norm gains (f32) and the MLP (bf16).
struct FrozenBlock {
    input_norm: CudaSlice<f32>,
    mlp: Option<FrozenMlp>,
}

struct FrozenMlp {
    post_norm: CudaSlice<f32>,
    gate: CudaSlice<bf16>,
    up: CudaSlice<bf16>,
    down: CudaSlice<bf16>,
}

struct BlockSaved {
    x: CudaSlice<f32>,
    mixer: GpuMixerSaved,
    x_mid: CudaSlice<f32>,
    gate: CudaSlice<f32>,
    up: CudaSlice<f32>,
}

/// What the backward needs from a training forward.
pub struct Saved {
    n: usize,
    blocks: Vec<BlockSaved>,
    x_final: CudaSlice<f32>,
}

/// Per-row statistics of a layout on one sequence (rows = positions whose next token is
/// scored): the next token's negative log-likelihood, the argmax, and KL(teacher ‖ layout)
/// with the teacher's argmax.
pub struct RowStats {
    pub nll: Vec<f32>,
    pub argmax: Vec<u32>,
    pub kl: Option<Vec<f32>>,
    pub teacher_argmax: Option<Vec<u32>>,
}

pub struct GpuSupernet {
    pub g: Gpu,
    d: usize,
    f: usize,
    v: usize,
    eps: f32,
    /// The embedding table [V, d], and the LM head when tied.
    emb: CudaSlice<bf16>,
    head: Option<CudaSlice<bf16>>,
    final_norm: CudaSlice<f32>,
    blocks: Vec<FrozenBlock>,
    /// Per layer, per kind ("fa" = the teacher's, "swa", "gdn", ...): the mixer.
    pub mixers: Vec<BTreeMap<String, GpuMixerTrain>>,
    /// One optimizer per trained (kind, layer), each with its own step count (a candidate
    /// trains only in the steps whose layout uses it, as the CPU supernet's AdamState does).
    opts: BTreeMap<(String, usize), GpuAdamW>,
    /// This replica's communicator in data-parallel training: gradients are summed over the
    /// group before every step, so the replicas stay identical.
    dp: Option<Collective>,
}

fn bf_upload(g: &Gpu, x: &[f32]) -> Result<CudaSlice<bf16>> {
    let v: Vec<bf16> = x.iter().map(|&a| bf16::from_f32(a)).collect();
    Ok(g.upload(&v)?)
}

impl GpuSupernet {
    /// The teacher's frozen weights and FA mixers, and every candidate's mixers, on GPU
    /// `ordinal`.
    pub fn new(
        teacher: &HybridModel,
        cands: &[(&str, &HybridModel)],
        ordinal: usize,
    ) -> Result<Self> {
        let g = Gpu::open(ordinal).context("the GPU for supernet training")?;
        let c = &teacher.config;
        let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let emb = bf_upload(&g, teacher.top.get("model.embed_tokens.weight"))?;
        let head = if c.tie_word_embeddings {
            None
        } else {
            Some(bf_upload(&g, teacher.top.get("lm_head.weight"))?)
        };
        let final_norm = g.upload(teacher.top.get("model.norm.weight"))?;
        let mut blocks = vec![];
        let mut mixers = vec![];
        for (i, bl) in teacher.blocks.iter().enumerate() {
            let p = &bl.params;
            let mlp = if f > 0 {
                Some(FrozenMlp {
                    post_norm: g.upload(p.get("post_attention_layernorm.weight"))?,
                    gate: bf_upload(&g, p.get("mlp.gate_proj.weight"))?,
                    up: bf_upload(&g, p.get("mlp.up_proj.weight"))?,
                    down: bf_upload(&g, p.get("mlp.down_proj.weight"))?,
                })
            } else {
                None
            };
            blocks.push(FrozenBlock {
                input_norm: g.upload(p.get("input_layernorm.weight"))?,
                mlp,
            });
            let mut m = BTreeMap::new();
            m.insert(
                "fa".to_string(),
                GpuMixerTrain::new(&g, &bl.mixer).with_context(|| format!("layer {i}, fa"))?,
            );
            for (k, cm) in cands {
                let Some(cb) = cm.blocks.get(i) else {
                    bail!("candidate '{k}' has no layer {i}");
                };
                m.insert(
                    k.to_string(),
                    GpuMixerTrain::new(&g, &cb.mixer).with_context(|| format!("layer {i}, {k}"))?,
                );
            }
            mixers.push(m);
        }
        Ok(GpuSupernet {
            g,
            d,
            f,
            v,
            eps: c.rms_norm_eps,
            emb,
            head,
            final_norm,
            blocks,
            mixers,
            opts: BTreeMap::new(),
            dp: None,
        })
    }

    /// Makes this supernet one replica of a data-parallel group (same weights on every GPU).
    pub fn join(&mut self, collective: Collective) {
        self.dp = Some(collective);
    }

    /// Data parallelism: each replica's gradients of the layout's trained mixers, weighted by
    /// `weight` (its share of the batch's rows, so that the sum is the whole batch's mean),
    /// summed over the group. Without a group, only the weighting.
    pub fn all_reduce_grads(&mut self, layout: &[String], weight: f32) -> Result<()> {
        let g = &self.g;
        for (i, k) in layout.iter().enumerate() {
            if k == "fa" {
                continue;
            }
            let w = self.mixers[i].get_mut(k).expect("checked").weights();
            for gr in w.grads.values_mut() {
                if weight != 1.0 {
                    g.scale_f32(gr, weight)?;
                }
                if let Some(c) = &self.dp {
                    c.all_reduce_sum_f32(gr)?;
                }
            }
        }
        Ok(())
    }

    pub fn vocab(&self) -> usize {
        self.v
    }

    fn check_layout(&self, layout: &[String]) -> Result<()> {
        if layout.len() != self.blocks.len() {
            bail!(
                "a layout of {} layers for a model of {}",
                layout.len(),
                self.blocks.len()
            );
        }
        for (i, k) in layout.iter().enumerate() {
            if !self.mixers[i].contains_key(k) {
                bail!("layout layer {i}: '{k}' is not a candidate");
            }
        }
        Ok(())
    }

    fn rmsnorm(&self, x: &CudaSlice<f32>, w: &CudaSlice<f32>, n: usize) -> Result<CudaSlice<f32>> {
        let mut y = self.g.zeros::<f32>(n * self.d)?;
        self.g.rmsnorm_f32(x, w, &mut y, n, self.d, self.eps)?;
        Ok(y)
    }

    /// The embedded tokens [n, d] (f32).
    fn embed(&self, tokens: &[u32]) -> Result<CudaSlice<f32>> {
        let (g, d, n) = (&self.g, self.d, tokens.len());
        if let Some(&bad) = tokens.iter().find(|&&x| x as usize >= self.v) {
            bail!("token id {bad} is outside the vocabulary of {}", self.v);
        }
        let ids = g.upload(tokens)?;
        let mut eb = g.zeros::<bf16>(n * d)?;
        g.embedding_bf16(&self.emb, &ids, &mut eb, n, d)?;
        let mut x = g.zeros::<f32>(n * d)?;
        g.bf16_to_f32(&eb, &mut x, n * d)?;
        Ok(x)
    }

    /// A block's MLP branch from the mixer's residual x_mid [n, d]: the block's output, and
    /// the gate and up projections the backward needs (empty without an MLP).
    #[allow(clippy::type_complexity)]
    fn mlp_forward(
        &self,
        bl: &FrozenBlock,
        x_mid: &CudaSlice<f32>,
        n: usize,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)> {
        let (g, d, f) = (&self.g, self.d, self.f);
        let mut out = g.stream.clone_dtod(x_mid)?;
        let Some(mlp) = &bl.mlp else {
            return Ok((out, g.zeros::<f32>(0)?, g.zeros::<f32>(0)?));
        };
        let h2b = to_bf(g, &self.rmsnorm(x_mid, &mlp.post_norm, n)?)?;
        let gate = GpuLinearTrain::lin(g, &h2b, &mlp.gate, (n, f, d))?;
        let up = GpuLinearTrain::lin(g, &h2b, &mlp.up, (n, f, d))?;
        let mut act = g.zeros::<f32>(n * f)?;
        g.swiglu_f32(&gate, &up, &mut act, n * f)?;
        let y2 = GpuLinearTrain::lin(g, &to_bf(g, &act)?, &mlp.down, (n, d, f))?;
        g.add_f32(&mut out, &y2, n * d)?;
        Ok((out, gate, up))
    }

    /// The teacher's mixer input (after `input_layernorm`) and output per layer, for tokens
    /// [B, T]: what attention transfer trains the candidates on (`HybridModel::mixer_io`).
    #[allow(clippy::type_complexity)]
    pub fn teacher_mixer_io(
        &self,
        tokens: &[u32],
        (b, t): (usize, usize),
    ) -> Result<Vec<(CudaSlice<f32>, CudaSlice<f32>)>> {
        let (g, d, n) = (&self.g, self.d, b * t);
        if tokens.len() != n {
            bail!("{} tokens do not fill a batch of {b} x {t}", tokens.len());
        }
        let mut x = self.embed(tokens)?;
        let mut io = vec![];
        for (i, bl) in self.blocks.iter().enumerate() {
            let h = self.rmsnorm(&x, &bl.input_norm, n)?;
            let (y, _) = self.mixers[i]["fa"].forward(g, &h, b, t)?;
            let mut x_mid = g.stream.clone_dtod(&x)?;
            g.add_f32(&mut x_mid, &y, n * d)?;
            x = self.mlp_forward(bl, &x_mid, n)?.0;
            io.push((h, y));
        }
        Ok(io)
    }

    /// (‖out − y‖², ‖y‖²) of `kind`'s mixer at `layer` on input h, and with `lr` one
    /// attention-transfer step: MSE gradient 2(out − y)/N, AdamW without decay or clipping
    /// (as train::transfer on the CPU). The errors are measured before the step.
    #[allow(clippy::too_many_arguments)]
    pub fn transfer_step(
        &mut self,
        kind: &str,
        layer: usize,
        h: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        (b, t): (usize, usize),
        lr: Option<f32>,
    ) -> Result<(f64, f64)> {
        let g = &self.g;
        let m = self
            .mixers
            .get_mut(layer)
            .and_then(|m| m.get_mut(kind))
            .with_context(|| format!("no '{kind}' mixer at layer {layer}"))?;
        let (out, saved) = m.forward(g, h, b, t)?;
        // diff = out − y
        let mut diff = g.stream.clone_dtod(y)?;
        g.scale_f32(&mut diff, -1.0)?;
        g.add_f32(&mut diff, &out, out.len())?;
        let mut acc = g.zeros::<f32>(2)?;
        g.sumsq_f32(&diff, &mut acc)?;
        let mut acc_y = g.zeros::<f32>(1)?;
        g.sumsq_f32(y, &mut acc_y)?;
        let (err, norm) = (g.download(&acc)?[0] as f64, g.download(&acc_y)?[0] as f64);
        if let Some(lr) = lr {
            m.weights().zero_grads(g)?;
            g.scale_f32(&mut diff, 2.0 / out.len() as f32)?;
            m.backward(g, &saved, &diff)?;
            let opt = self
                .opts
                .entry((kind.to_string(), layer))
                .or_insert_with(|| GpuAdamW::new(lr, 0.0));
            opt.lr = lr;
            let w = m.weights();
            opt.step(g, &mut w.params, &w.grads)?;
        }
        Ok((err, norm))
    }

    /// Forward of `layout` over tokens [B, T]: logits [B·T, V], and with `keep` what the
    /// backward needs.
    pub fn forward(
        &self,
        layout: &[String],
        tokens: &[u32],
        (b, t): (usize, usize),
        keep: bool,
    ) -> Result<(CudaSlice<f32>, Option<Saved>)> {
        self.check_layout(layout)?;
        let (g, d, n) = (&self.g, self.d, b * t);
        if tokens.len() != n {
            bail!("{} tokens do not fill a batch of {b} x {t}", tokens.len());
        }
        let mut x = self.embed(tokens)?;
        let mut saved = vec![];
        for (i, bl) in self.blocks.iter().enumerate() {
            let h = self.rmsnorm(&x, &bl.input_norm, n)?;
            let (y, ms) = self.mixers[i][&layout[i]].forward(g, &h, b, t)?;
            let mut x_mid = g.stream.clone_dtod(&x)?;
            g.add_f32(&mut x_mid, &y, n * d)?;
            let (out, gate, up) = self.mlp_forward(bl, &x_mid, n)?;
            if keep {
                saved.push(BlockSaved {
                    x,
                    mixer: ms,
                    x_mid,
                    gate,
                    up,
                });
            }
            x = out;
        }
        let xnb = to_bf(g, &self.rmsnorm(&x, &self.final_norm, n)?)?;
        let head = self.head.as_ref().unwrap_or(&self.emb);
        let logits = GpuLinearTrain::lin(g, &xnb, head, (n, self.v, d))?;
        Ok((
            logits,
            keep.then_some(Saved {
                n,
                blocks: saved,
                x_final: x,
            }),
        ))
    }

    /// Backward from dlogits [B·T, V] down to the lowest layer whose mixer is not "fa":
    /// accumulates the gradients of the layout's non-FA mixers.
    fn backward(&mut self, layout: &[String], s: &Saved, dlogits: &CudaSlice<f32>) -> Result<()> {
        let Some(lowest) = layout.iter().position(|k| k != "fa") else {
            return Ok(());
        };
        let (d, f, n, v) = (self.d, self.f, s.n, self.v);
        let g = &self.g;
        let head = self.head.as_ref().unwrap_or(&self.emb);
        let mut dxn = g.zeros::<f32>(n * d)?;
        g.gemm_bf16_f32(
            (false, false),
            &to_bf(g, dlogits)?,
            head,
            &mut dxn,
            (n, d, v),
            false,
        )?;
        // Norm gains are frozen: their gradients go to a scratch buffer.
        let mut dw = g.zeros::<f32>(d)?;
        let mut dx = g.zeros::<f32>(n * d)?;
        g.rmsnorm_bwd_f32(
            &s.x_final,
            &self.final_norm,
            &dxn,
            &mut dx,
            &mut dw,
            n,
            d,
            self.eps,
        )?;
        for i in (lowest..self.blocks.len()).rev() {
            let (bl, bs) = (&self.blocks[i], &s.blocks[i]);
            let mut dmid = g.stream.clone_dtod(&dx)?;
            if let Some(mlp) = &bl.mlp {
                let mut dact = g.zeros::<f32>(n * f)?;
                g.gemm_bf16_f32(
                    (false, false),
                    &to_bf(g, &dx)?,
                    &mlp.down,
                    &mut dact,
                    (n, f, d),
                    false,
                )?;
                let (mut dgate, mut dup) = (g.zeros::<f32>(n * f)?, g.zeros::<f32>(n * f)?);
                g.swiglu_bwd_f32(&bs.gate, &bs.up, &dact, &mut dgate, &mut dup, n * f)?;
                let mut dh2 = g.zeros::<f32>(n * d)?;
                g.gemm_bf16_f32(
                    (false, false),
                    &to_bf(g, &dgate)?,
                    &mlp.gate,
                    &mut dh2,
                    (n, d, f),
                    false,
                )?;
                g.gemm_bf16_f32(
                    (false, false),
                    &to_bf(g, &dup)?,
                    &mlp.up,
                    &mut dh2,
                    (n, d, f),
                    true,
                )?;
                let mut dxm = g.zeros::<f32>(n * d)?;
                g.rmsnorm_bwd_f32(
                    &bs.x_mid,
                    &mlp.post_norm,
                    &dh2,
                    &mut dxm,
                    &mut dw,
                    n,
                    d,
                    self.eps,
                )?;
                g.add_f32(&mut dmid, &dxm, n * d)?;
            }
            let mixer = self.mixers[i]
                .get_mut(&layout[i])
                .expect("checked by the forward");
            let dh = mixer.backward(g, &bs.mixer, &dmid)?;
            if i == lowest {
                break;
            }
            let mut dxn = g.zeros::<f32>(n * d)?;
            g.rmsnorm_bwd_f32(
                &bs.x,
                &bl.input_norm,
                &dh,
                &mut dxn,
                &mut dw,
                n,
                d,
                self.eps,
            )?;
            dx = dmid;
            g.add_f32(&mut dx, &dxn, n * d)?;
        }
        Ok(())
    }

    /// The teacher's logits (the all-FA layout) over tokens [B, T].
    pub fn teacher_logits(&self, tokens: &[u32], bt: (usize, usize)) -> Result<CudaSlice<f32>> {
        let fa = vec!["fa".to_string(); self.blocks.len()];
        Ok(self.forward(&fa, tokens, bt, false)?.0)
    }

    /// KL(teacher ‖ layout) at `temperature` over tokens [B, T] (mean over positions, as
    /// `train::loss::kl_div`), with the gradients of the layout's non-FA mixers set (not
    /// accumulated) by its backward.
    pub fn loss_and_grads(
        &mut self,
        layout: &[String],
        tokens: &[u32],
        bt: (usize, usize),
        teacher: &CudaSlice<f32>,
        temperature: f32,
    ) -> Result<f32> {
        for (i, k) in layout.iter().enumerate() {
            if k != "fa" {
                if let Some(m) = self.mixers[i].get_mut(k) {
                    m.weights().zero_grads(&self.g)?;
                }
            }
        }
        let (logits, saved) = self.forward(layout, tokens, bt, true)?;
        let n = bt.0 * bt.1;
        let mut loss = self.g.zeros::<f32>(n)?;
        let mut dlogits = self.g.zeros::<f32>(n * self.v)?;
        self.g.kl_div_f32(
            &logits,
            teacher,
            &mut loss,
            &mut dlogits,
            n,
            self.v,
            temperature,
        )?;
        drop(logits);
        self.backward(layout, &saved.expect("kept"), &dlogits)?;
        let loss: Vec<f32> = self.g.download(&loss)?;
        Ok(loss.iter().map(|&x| x as f64).sum::<f64>() as f32)
    }

    /// Clips the global norm of the layout's non-FA mixer gradients to `max_norm` (as
    /// `train::optim::clip_grad_norm`), then one AdamW step (no weight decay) on each of those
    /// mixers. Returns the norm before clipping.
    pub fn step(&mut self, layout: &[String], lr: f32, max_norm: f32) -> Result<f32> {
        let g = &self.g;
        let mut acc = g.zeros::<f32>(1)?;
        for (i, k) in layout.iter().enumerate() {
            if k == "fa" {
                continue;
            }
            for gr in self.mixers[i][k].weights_ref().grads.values() {
                g.sumsq_f32(gr, &mut acc)?;
            }
        }
        let norm = (g.download(&acc)?[0] as f64).sqrt() as f32;
        let scale = (norm.is_finite() && norm > max_norm).then(|| max_norm / (norm + 1e-6));
        for (i, k) in layout.iter().enumerate() {
            if k == "fa" {
                continue;
            }
            let w = self.mixers[i].get_mut(k).expect("checked").weights();
            if let Some(s) = scale {
                for gr in w.grads.values_mut() {
                    g.scale_f32(gr, s)?;
                }
            }
            let opt = self
                .opts
                .entry((k.clone(), i))
                .or_insert_with(|| GpuAdamW::new(lr, 0.0));
            opt.lr = lr;
            opt.step(g, &mut w.params, &w.grads)?;
        }
        Ok(norm)
    }

    /// Per-row statistics of `layout` on one sequence: rows `from − 1 .. len − 1` predict
    /// tokens `from .. len`. With `kl`, also KL(teacher ‖ layout) per row (temperature 1).
    pub fn row_stats(
        &self,
        layout: &[String],
        tokens: &[u32],
        from: usize,
        kl: bool,
    ) -> Result<RowStats> {
        let (g, t, v) = (&self.g, tokens.len(), self.v);
        if from == 0 || from >= t {
            bail!("scored rows {from}..{t} of a {t}-token sequence are empty");
        }
        let (logits, _) = self.forward(layout, tokens, (1, t), false)?;
        let targets: Vec<i64> = (0..t)
            .map(|r| {
                if r + 1 >= from && r + 1 < t {
                    tokens[r + 1] as i64
                } else {
                    -1
                }
            })
            .collect();
        let mut nll = g.zeros::<f32>(t)?;
        let mut scratch = g.zeros::<f32>(t * v)?;
        g.cross_entropy_f32(
            &logits,
            &g.upload(&targets)?,
            &mut nll,
            &mut scratch,
            t,
            v,
            1,
        )?;
        let mut am = g.zeros::<u32>(t)?;
        g.argmax_f32(&logits, &mut am, t, v)?;
        let rows = from - 1..t - 1;
        let (kl, teacher_argmax) = if kl {
            let teacher = self.teacher_logits(tokens, (1, t))?;
            let mut loss = g.zeros::<f32>(t)?;
            g.kl_div_f32(&logits, &teacher, &mut loss, &mut scratch, t, v, 1.0)?;
            let mut ta = g.zeros::<u32>(t)?;
            g.argmax_f32(&teacher, &mut ta, t, v)?;
            // kl_div_f32 divides each row's loss by the row count.
            let l: Vec<f32> = g.download(&loss)?;
            let ta: Vec<u32> = g.download(&ta)?;
            (
                Some(l[rows.clone()].iter().map(|x| x * t as f32).collect()),
                Some(ta[rows.clone()].to_vec()),
            )
        } else {
            (None, None)
        };
        let nll: Vec<f32> = g.download(&nll)?;
        let am: Vec<u32> = g.download(&am)?;
        Ok(RowStats {
            nll: nll[rows.clone()].to_vec(),
            argmax: am[rows].to_vec(),
            kl,
            teacher_argmax,
        })
    }

    /// The trained parameters of `kind`'s mixer at `layer`, as host `Params`.
    pub fn mixer_params(&self, kind: &str, layer: usize) -> Result<mixers::params::Params> {
        let m = self
            .mixers
            .get(layer)
            .and_then(|m| m.get(kind))
            .with_context(|| format!("no '{kind}' mixer at layer {layer}"))?;
        m.weights_ref().to_host(&self.g, false)
    }
}
