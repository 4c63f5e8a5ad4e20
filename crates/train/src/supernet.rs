//! Stage 4 of `hybrid convert`: the supernet (PostNAS's once-for-all network, Fast-LLM's
//! stochastic mixer; research/placement.md §2.2, §3.2-3.4, §8.2). Every layer holds all its
//! candidates — the teacher's FA mixer and one mixer per candidate type — and shares the
//! teacher's MLPs, norms and embeddings, which stay frozen. Each step samples a whole layout
//! (Fast-LLM's `full_layout`: type counts first, uniformly over the compositions, then a random
//! permutation; plus a share of all-FA and of uniform-interleave layouts), runs it, and trains
//! the non-FA mixers it used on KL(teacher ‖ student) over the logits.
//!
//! A layout is assembled without copying weights: the chosen candidate mixers are swapped into
//! the teacher's blocks for the step and swapped back after it.
use crate::loss::kl_div;
use crate::optim::{clip_grad_norm, AdamState, AdamW};
use crate::search::{EvalSet, Score};
use crate::tasks::rng::SplitMix64;
use anyhow::{bail, Result};
use model::hybrid::config::LinearAttnType;
use model::hybrid::gpu_supernet::GpuSupernet;
use model::hybrid::HybridModel;
use std::collections::HashMap;

pub struct Supernet {
    /// The teacher: FA mixers, and the frozen MLPs, norms, embeddings every layout shares.
    pub teacher: HybridModel,
    /// Per candidate type ("swa", "gdn", ...): a model whose layer i holds that type's mixer.
    pub cands: Vec<(String, HybridModel)>,
    opt: HashMap<(String, usize, String), AdamState>,
    /// When set, training and scoring run on the GPU; the CPU models are synced after each
    /// training run.
    /// On GPUs: replica 0, and with data parallelism the others (same weights, each fed its
    /// share of every batch; gradients summed over NCCL before each step).
    gpu: Option<GpuSupernet>,
    replicas: Vec<GpuSupernet>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SupernetSpec {
    pub steps: usize,
    pub lr: f32,
    pub seq_len: usize,
    pub temperature: f32,
    /// Shares of steps that run the all-FA layout and a uniform interleave.
    pub p_all_fa: f64,
    pub p_uniform: f64,
    pub seed: u64,
    /// Train this one layout instead of sampling (distillation of the extracted hybrid).
    #[serde(default)]
    pub fixed: Option<Vec<String>>,
    /// Sequences per step on the GPU (packed windows of `seq_len` tokens); the CPU trains one.
    #[serde(default = "one")]
    pub batch: usize,
}

fn one() -> usize {
    1
}

/// One training step's record.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub layout: String,
    pub kl: f32,
}

impl Supernet {
    pub fn new(teacher: HybridModel, cands: Vec<(String, HybridModel)>) -> Result<Self> {
        for (k, c) in &cands {
            if c.blocks.len() != teacher.blocks.len() {
                bail!(
                    "candidate '{k}' has {} layers, the teacher {}",
                    c.blocks.len(),
                    teacher.blocks.len()
                );
            }
        }
        Ok(Supernet {
            teacher,
            cands,
            opt: HashMap::new(),
            gpu: None,
            replicas: vec![],
        })
    }

    /// Moves training and scoring to GPU `ordinal` (the teacher's frozen weights and every
    /// candidate mixer are uploaded once).
    pub fn use_gpu(&mut self, ordinal: usize) -> Result<()> {
        let named: Vec<(&str, &HybridModel)> =
            self.cands.iter().map(|(k, m)| (k.as_str(), m)).collect();
        self.gpu = Some(GpuSupernet::new(&self.teacher, &named, ordinal)?);
        self.replicas.clear();
        Ok(())
    }

    /// Data-parallel training on `ordinals` (one replica each, joined by NCCL); scoring and
    /// evaluation run on the first. One ordinal is [`Supernet::use_gpu`].
    pub fn use_gpus(&mut self, ordinals: &[usize]) -> Result<()> {
        let Some((&first, rest)) = ordinals.split_first() else {
            bail!("no GPU given");
        };
        self.use_gpu(first)?;
        if rest.is_empty() {
            return Ok(());
        }
        let named: Vec<(&str, &HybridModel)> =
            self.cands.iter().map(|(k, m)| (k.as_str(), m)).collect();
        for &o in rest {
            self.replicas
                .push(GpuSupernet::new(&self.teacher, &named, o)?);
        }
        let g0 = self.gpu.as_mut().expect("set above");
        let gpus: Vec<&tensor::cuda::Gpu> = std::iter::once(&g0.g)
            .chain(self.replicas.iter().map(|r| &r.g))
            .collect();
        let mut comms = tensor::cuda::Collective::group(&gpus)?.into_iter();
        g0.join(comms.next().expect("one per GPU"));
        for (r, c) in self.replicas.iter_mut().zip(comms) {
            r.join(c);
        }
        Ok(())
    }

    /// GPUs training runs on (0 on the CPU).
    pub fn gpus(&self) -> usize {
        self.gpu.as_ref().map_or(0, |_| 1 + self.replicas.len())
    }

    pub fn on_gpu(&self) -> bool {
        self.gpu.is_some()
    }

    /// The score of `layout` on `set`: on the GPU when the supernet is there.
    pub fn score(&mut self, set: &EvalSet, layout: &[String]) -> Result<Score> {
        match &self.gpu {
            Some(g) => set.score_gpu(g, layout),
            None => self.with_layout(layout, |m| set.score(m))?,
        }
    }

    /// Copies the GPU's trained candidate mixers into the CPU models.
    fn sync_from_gpu(&mut self) -> Result<()> {
        let Some(g) = &self.gpu else { return Ok(()) };
        for (k, cm) in self.cands.iter_mut() {
            for (i, bl) in cm.blocks.iter_mut().enumerate() {
                let p = g.mixer_params(k, i)?;
                for (name, val) in bl.mixer.params_mut().map.iter_mut() {
                    val.data.copy_from_slice(p.get(name));
                }
            }
        }
        Ok(())
    }

    /// The layer types a layout may use: "fa" and the candidate types.
    pub fn kinds(&self) -> Vec<String> {
        std::iter::once("fa".to_string())
            .chain(self.cands.iter().map(|(k, _)| k.clone()))
            .collect()
    }

    /// Swaps the layout's candidate mixers into the teacher's blocks: the teacher model then
    /// *is* the student. Call [`Supernet::restore`] with the same layout to undo.
    fn assemble(&mut self, layout: &[String]) -> Result<()> {
        let n = self.teacher.blocks.len();
        if layout.len() != n {
            bail!("a layout of {} layers for a model of {n}", layout.len());
        }
        for (i, k) in layout.iter().enumerate() {
            if k == "fa" {
                continue;
            }
            let Some((_, c)) = self.cands.iter_mut().find(|(name, _)| name == k) else {
                bail!(
                    "layout layer {i}: '{k}' is not a candidate ({})",
                    self.kinds().join(", ")
                );
            };
            std::mem::swap(&mut self.teacher.blocks[i].mixer, &mut c.blocks[i].mixer);
        }
        self.teacher.config = layout_config(&self.teacher, &self.cands, layout);
        Ok(())
    }

    fn restore(&mut self, layout: &[String], config: model::hybrid::HybridConfig) {
        for (i, k) in layout.iter().enumerate() {
            if let Some((_, c)) = self.cands.iter_mut().find(|(name, _)| name == k) {
                std::mem::swap(&mut self.teacher.blocks[i].mixer, &mut c.blocks[i].mixer);
            }
        }
        self.teacher.config = config;
    }

    /// Runs `f` on the model of `layout` (the teacher's blocks with the layout's mixers).
    pub fn with_layout<R>(
        &mut self,
        layout: &[String],
        f: impl FnOnce(&mut HybridModel) -> R,
    ) -> Result<R> {
        let config = self.teacher.config.clone();
        self.assemble(layout)?;
        let r = f(&mut self.teacher);
        self.restore(layout, config);
        Ok(r)
    }

    /// A standalone copy of the model of `layout` (for extraction and evaluation).
    pub fn extract(&mut self, layout: &[String]) -> Result<HybridModel> {
        self.with_layout(layout, |m| m.clone_model())
    }

    /// Trains the candidate mixers; `seqs` are token sequences (cut to `seq_len`), used in turn.
    pub fn train(
        &mut self,
        seqs: &[Vec<u32>],
        spec: &SupernetSpec,
        mut progress: impl FnMut(&StepLog),
    ) -> Result<Vec<StepLog>> {
        if seqs.is_empty() {
            bail!("supernet training needs at least one sequence");
        }
        if self.gpu.is_some() {
            return self.train_gpu(seqs, spec, progress);
        }
        let mut rng = SplitMix64::new(spec.seed);
        let opt = AdamW {
            weight_decay: 0.0,
            ..Default::default()
        };
        let v = self.teacher.config.vocab_size;
        let kinds = self.kinds();
        let mut log = vec![];
        for step in 0..spec.steps {
            let s = &seqs[step % seqs.len()];
            let toks = &s[..s.len().min(spec.seq_len)];
            let t = toks.len();
            let target = self
                .teacher
                .forward(toks, 1, &mut self.teacher.new_state(1), true)?;
            let layout = match &spec.fixed {
                Some(l) => l.clone(),
                None => sample_layout(&kinds, self.teacher.blocks.len(), spec, &mut rng),
            };
            let config = self.teacher.config.clone();
            self.assemble(&layout)?;
            let run = (|| -> Result<f32> {
                let m = &mut self.teacher;
                let (logits, saved) = m.forward_train(toks, 1, t)?;
                let (kl, dlogits) = kl_div(&logits, &target, v, spec.temperature);
                let mut g = m.zero_grads();
                m.backward(&saved, &dlogits, &mut g);
                // Only the layout's non-FA mixers train; the rest is the frozen teacher.
                let mut trained: Vec<&mut [f32]> = g
                    .blocks
                    .iter_mut()
                    .zip(&layout)
                    .filter(|(_, k)| k.as_str() != "fa")
                    .flat_map(|((_, mg), _)| mg.map.values_mut().map(|p| p.data.as_mut_slice()))
                    .collect();
                clip_grad_norm(&mut trained, 1.0);
                for (i, k) in layout.iter().enumerate() {
                    if k == "fa" {
                        continue;
                    }
                    let params = m.blocks[i].mixer.params_mut();
                    for (name, gp) in &g.blocks[i].1.map {
                        let st = self
                            .opt
                            .entry((k.clone(), i, name.clone()))
                            .or_insert_with(|| AdamState::new(gp.data.len()));
                        opt.step(params.get_mut(name), &gp.data, st, spec.lr, false);
                    }
                }
                Ok(kl)
            })();
            self.restore(&layout, config);
            let entry = StepLog {
                step,
                layout: layout.join(","),
                kl: run?,
            };
            progress(&entry);
            log.push(entry);
        }
        Ok(log)
    }
}

impl Supernet {
    /// [`Supernet::train`] on the GPU: each step a batch of `spec.batch` windows of
    /// `spec.seq_len` tokens cut from the sequences packed end to end (the usual packing of
    /// pretraining; the teacher sees the same windows), one sampled layout, KL to the teacher's
    /// logits computed in the same step, clipped AdamW on the layout's non-FA mixers.
    fn train_gpu(
        &mut self,
        seqs: &[Vec<u32>],
        spec: &SupernetSpec,
        mut progress: impl FnMut(&StepLog),
    ) -> Result<Vec<StepLog>> {
        let stream: Vec<u32> = seqs.concat();
        let t = spec.seq_len.min(stream.len()).max(1);
        let b = spec.batch.max(1);
        let windows = (stream.len() / t).max(1);
        let mut rng = SplitMix64::new(spec.seed);
        let kinds = self.kinds();
        let n = self.teacher.blocks.len();
        let world = 1 + self.replicas.len();
        if b < world {
            bail!("a batch of {b} sequences cannot be split over {world} GPUs");
        }
        let g = self.gpu.as_mut().expect("train_gpu runs with a GPU");
        let mut ranks: Vec<&mut GpuSupernet> =
            std::iter::once(g).chain(self.replicas.iter_mut()).collect();
        let mut log = vec![];
        for step in 0..spec.steps {
            let toks: Vec<u32> = (0..b)
                .flat_map(|j| {
                    let w = (step * b + j) % windows;
                    stream[w * t..(w + 1) * t].iter().copied()
                })
                .collect();
            let layout = match &spec.fixed {
                Some(l) => l.clone(),
                None => sample_layout(&kinds, n, spec, &mut rng),
            };
            let kl = data_parallel_step(&mut ranks, &layout, &toks, (b, t), spec)?;
            let entry = StepLog {
                step,
                layout: layout.join(","),
                kl,
            };
            progress(&entry);
            log.push(entry);
        }
        self.sync_from_gpu()?;
        Ok(log)
    }
}

/// One training step of `ranks` (one replica per GPU) on tokens [B, T]: replica r takes
/// sequences `split(B, r, world)`, its teacher's logits, its KL and gradients, weighted by its
/// share of the rows; the gradients are summed over the group and every replica takes the same
/// clipped AdamW step. Returns the batch's KL (the weighted sum of the replicas').
fn data_parallel_step(
    ranks: &mut [&mut GpuSupernet],
    layout: &[String],
    toks: &[u32],
    (b, t): (usize, usize),
    spec: &SupernetSpec,
) -> Result<f32> {
    let world = ranks.len();
    let one = |g: &mut GpuSupernet, rows: std::ops::Range<usize>| -> Result<f32> {
        let part = &toks[rows.start * t..rows.end * t];
        let bt = (rows.len(), t);
        let teacher = g.teacher_logits(part, bt)?;
        let kl = g.loss_and_grads(layout, part, bt, &teacher, spec.temperature)?;
        let weight = rows.len() as f32 / b as f32;
        g.all_reduce_grads(layout, weight)?;
        g.step(layout, spec.lr, 1.0)?;
        Ok(kl * weight)
    };
    let split = model::hybrid::tensor_parallel::split;
    let kls = tensor::cuda::each_on_its_gpu(ranks, |g| &g.g.ctx, |r, g| one(g, split(b, r, world)));
    kls.into_iter().sum()
}

/// The config of a layout: the teacher's with per-layer types (and the candidates' SWA window
/// and linear-mixer sizes).
pub fn layout_config(
    teacher: &HybridModel,
    cands: &[(String, HybridModel)],
    layout: &[String],
) -> model::hybrid::HybridConfig {
    let mut c = teacher.config.clone();
    for (_, m) in cands {
        if m.config.sliding_window.is_some() {
            c.sliding_window = m.config.sliding_window;
        }
        if m.config.linear_num_key_heads.is_some() {
            c.linear_num_key_heads = m.config.linear_num_key_heads;
            c.linear_num_value_heads = m.config.linear_num_value_heads;
            c.linear_key_head_dim = m.config.linear_key_head_dim;
            c.linear_value_head_dim = m.config.linear_value_head_dim;
            c.linear_conv_kernel_dim = m.config.linear_conv_kernel_dim;
            c.linear_gate_rank = m.config.linear_gate_rank;
        }
    }
    c.layer_types = layout
        .iter()
        .map(|k| match k.as_str() {
            "fa" => "full_attention".to_string(),
            "swa" => "sliding_attention".to_string(),
            _ => "linear_attention".to_string(),
        })
        .collect();
    let lin: Vec<Option<String>> = layout
        .iter()
        .map(|k| (!["fa", "swa"].contains(&k.as_str())).then(|| k.clone()))
        .collect();
    c.linear_attn_type = lin
        .iter()
        .any(|x| x.is_some())
        .then_some(LinearAttnType::PerLayer(lin));
    c
}

/// Fast-LLM's `full_layout` sampling: with probability `p_all_fa` every layer FA, with
/// `p_uniform` a uniform interleave (one of the kinds every k-th layer), else type counts drawn
/// uniformly over the compositions of `n` into the kinds, then a random permutation.
pub fn sample_layout(
    kinds: &[String],
    n: usize,
    spec: &SupernetSpec,
    rng: &mut SplitMix64,
) -> Vec<String> {
    let u = rng.uniform();
    if u < spec.p_all_fa {
        return vec!["fa".to_string(); n];
    }
    if u < spec.p_all_fa + spec.p_uniform {
        // A softmax layer (FA or SWA) every `period` layers, a linear one elsewhere.
        let period = 2 + rng.below(3) as usize;
        let soft = &kinds[rng.below(kinds.len().min(2) as u64) as usize];
        let lin = kinds.last().expect("at least one kind");
        return (0..n)
            .map(|i| {
                if i % period == period - 1 {
                    soft.clone()
                } else {
                    lin.clone()
                }
            })
            .collect();
    }
    // Uniform over compositions (stars and bars): choose k−1 bar positions among n+k−1.
    let k = kinds.len();
    let mut slots: Vec<usize> = (0..n + k - 1).collect();
    rng.shuffle(&mut slots);
    let mut bars: Vec<usize> = slots[..k - 1].to_vec();
    bars.sort_unstable();
    let mut counts = vec![0usize; k];
    let mut prev = 0usize;
    for (j, &b) in bars.iter().enumerate() {
        counts[j] = b - prev;
        prev = b + 1;
    }
    counts[k - 1] = n + k - 1 - prev;
    let mut layout: Vec<String> = counts
        .iter()
        .enumerate()
        .flat_map(|(j, &c)| std::iter::repeat_n(kinds[j].clone(), c))
        .collect();
    rng.shuffle(&mut layout);
    layout
}
