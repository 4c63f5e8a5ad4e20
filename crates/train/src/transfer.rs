//! Stages 2 and 3 of `hybrid convert` (research/placement.md §3.5, §4.1, §8.2):
//!
//! - **Candidates.** For every teacher layer: SWA (the teacher's Q/K/V/O with a window) and
//!   linear mixers initialised from the teacher's attention the way Fast-LLM's DIL/KIL
//!   converters do — Q→q_proj, K→k_proj and V→v_proj tiled over each GQA group, O→o_proj,
//!   scaled-identity short convs (0.5 at the last tap), β = 0.5 (b_proj = 0), a slow decay
//!   (A_log = ln 0.1, dt_bias = 0: about a 10-token half-life), unit output norm. DIL sets the
//!   output gate projection to zero; we use small random values instead so that every
//!   parameter gets a gradient from the first step. Each candidate type is a whole model (every
//!   layer of that type, the teacher's MLPs, norms and embeddings), saved as an ordinary hybrid
//!   model folder.
//! - **Attention transfer.** Every candidate layer is trained to reproduce its teacher layer's
//!   mixer output from the teacher's own mixer input (MSE), all layers from one teacher pass
//!   per sequence; the MLPs never see a candidate here.
use crate::loss::mse;
use crate::optim::{AdamState, AdamW};
use anyhow::{bail, Result};
use mixers::linear_mixer::LinearKind;
use mixers::params::{InitRng, Params};
use model::hybrid::config::LinearAttnType;
use model::hybrid::gpu_supernet::GpuSupernet;
use model::hybrid::{HybridModel, Mixer};

/// A model like `teacher` with every layer's mixer replaced by a `kind` candidate
/// ("swa", "gdn", "kda", "gla"), initialised from the teacher's attention.
pub fn candidate_model(
    teacher: &HybridModel,
    kind: &str,
    window: usize,
    seed: u64,
) -> Result<HybridModel> {
    let mut config = teacher.config.clone();
    let n = config.num_hidden_layers;
    let (h, hk, dh) = (
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
    );
    match kind {
        "swa" => {
            config.layer_types = vec!["sliding_attention".into(); n];
            config.sliding_window = Some(window);
        }
        "gdn" | "kda" | "gla" => {
            config.layer_types = vec!["linear_attention".into(); n];
            config.linear_attn_type = Some(LinearAttnType::Global(kind.into()));
            // One linear head per query head; K and V tiled over each GQA group (DIL).
            config.linear_num_key_heads = Some(h);
            config.linear_num_value_heads = Some(h);
            config.linear_key_head_dim = Some(dh);
            config.linear_value_head_dim = Some(dh);
            config.linear_conv_kernel_dim = 4;
            config.linear_gate_rank = config.linear_gate_rank.clamp(16, 64);
        }
        other => bail!("unknown candidate type '{other}' (swa, gdn, kda, gla)"),
    }
    // A fresh model of the right shapes, then the teacher's weights copied in.
    let mut m = HybridModel::init(config.clone(), seed)?;
    m.top = teacher.top.clone();
    let mut rng = InitRng::new(seed ^ 0x5eed);
    for (i, (mb, tb)) in m.blocks.iter_mut().zip(&teacher.blocks).enumerate() {
        mb.params = tb.params.clone();
        let Mixer::Attention(ta) = &tb.mixer else {
            bail!("teacher layer {i} is not full attention");
        };
        let tp = &ta.params;
        match &mut mb.mixer {
            Mixer::Attention(a) => a.params = tp.clone(),
            Mixer::Linear(l) => {
                let c = l.cfg.clone();
                let p = &mut l.params;
                let d = c.hidden;
                p.get_mut("q_proj.weight")
                    .copy_from_slice(tp.get("q_proj.weight"));
                // Query head j reads kv head j / (H / Hk): tile K and V rows per head.
                for (name, src) in [
                    ("k_proj.weight", "k_proj.weight"),
                    ("v_proj.weight", "v_proj.weight"),
                ] {
                    let s = tp.get(src).to_vec();
                    let dst = p.get_mut(name);
                    for j in 0..h {
                        let kv = j / (h / hk);
                        dst[j * dh * d..(j + 1) * dh * d]
                            .copy_from_slice(&s[kv * dh * d..(kv + 1) * dh * d]);
                    }
                }
                p.get_mut("o_proj.weight")
                    .copy_from_slice(tp.get("o_proj.weight"));
                for name in ["q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight"] {
                    let w = c.conv_size;
                    p.get_mut(name).chunks_exact_mut(w).for_each(|row| {
                        row.fill(0.0);
                        row[w - 1] = 0.5;
                    });
                }
                if c.kind != LinearKind::Gla {
                    p.get_mut("b_proj.weight").fill(0.0);
                    p.get_mut("A_log").fill(0.1f32.ln());
                    p.get_mut("dt_bias").fill(0.0);
                }
                match c.kind {
                    LinearKind::Gdn => {
                        p.get_mut("a_proj.weight").fill(0.0);
                        small(p, "g_proj.weight", &mut rng);
                    }
                    LinearKind::Kda => {}
                    LinearKind::Gla => {
                        // logsigmoid(b)/16 ≈ −0.07 per token: about a 10-token half-life.
                        p.get_mut("gk_proj.1.bias").fill(-0.5);
                        small(p, "g_proj.weight", &mut rng);
                    }
                }
            }
        }
    }
    Ok(m)
}

fn small(p: &mut Params, name: &str, rng: &mut InitRng) {
    let n = p.get(name).len();
    p.get_mut(name).copy_from_slice(&rng.normals(n, 0.02));
}

/// Attention-transfer settings.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TransferSpec {
    /// Passes over the sequences.
    pub epochs: usize,
    pub lr: f32,
    /// Sequences are cut to this many tokens.
    pub max_len: usize,
}

/// Per layer: relative MSE (‖cand − teacher‖² / ‖teacher‖²) on the training sequences before
/// the first and after the last step.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LayerTransfer {
    pub layer: usize,
    pub rel_mse_before: f64,
    pub rel_mse_after: f64,
}

/// Trains every mixer of every candidate model against the teacher's mixers, layer by layer
/// from the teacher's own activations (one teacher pass per sequence serves all candidates).
/// With `gpu` (an ordinal), everything runs on that GPU (`model::hybrid::gpu_supernet`: the
/// teacher's activations, and every candidate layer with the same loss, optimizer and steps).
/// `progress(done, total)` is called after each sequence. Returns one report per candidate.
pub fn attention_transfer(
    teacher: &HybridModel,
    cands: &mut [HybridModel],
    seqs: &[Vec<u32>],
    spec: &TransferSpec,
    gpu: Option<usize>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Vec<LayerTransfer>>> {
    let layers = teacher.blocks.len();
    if seqs.is_empty() {
        bail!("attention transfer needs at least one sequence");
    }
    if let Some(ordinal) = gpu {
        return attention_transfer_gpu(teacher, cands, seqs, spec, ordinal, progress);
    }
    let opt = AdamW {
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut states: Vec<Vec<Vec<(String, AdamState)>>> = cands
        .iter()
        .map(|c| {
            c.blocks
                .iter()
                .map(|b| {
                    b.mixer
                        .params()
                        .map
                        .iter()
                        .map(|(k, p)| (k.clone(), AdamState::new(p.data.len())))
                        .collect()
                })
                .collect()
        })
        .collect();
    // (squared error, squared teacher norm) per candidate and layer.
    let mut before = vec![vec![(0f64, 0f64); layers]; cands.len()];
    let total = spec.epochs * seqs.len();
    let mut done = 0;
    for epoch in 0..spec.epochs {
        for s in seqs {
            let toks = &s[..s.len().min(spec.max_len)];
            let io = teacher.mixer_io(toks, 1, toks.len())?;
            for (ci, cand) in cands.iter_mut().enumerate() {
                for (l, (h, y)) in io.iter().enumerate() {
                    let bl = &mut cand.blocks[l];
                    let (out, grads) = mixer_step(&bl.mixer, h, toks.len(), y);
                    if epoch == 0 {
                        before[ci][l].0 += sq_err(&out, y);
                        before[ci][l].1 += sq_norm(y);
                    }
                    let params = bl.mixer.params_mut();
                    for (name, st) in states[ci][l].iter_mut() {
                        opt.step(params.get_mut(name), grads.get(name), st, spec.lr, false);
                    }
                }
            }
            done += 1;
            progress(done, total);
        }
    }
    // Measured again after the last step (during training the loss mixes early and late steps).
    let mut after = vec![vec![(0f64, 0f64); layers]; cands.len()];
    for s in seqs {
        let toks = &s[..s.len().min(spec.max_len)];
        let io = teacher.mixer_io(toks, 1, toks.len())?;
        for (ci, cand) in cands.iter().enumerate() {
            for (l, (h, y)) in io.iter().enumerate() {
                let out = mixer_forward(&cand.blocks[l].mixer, h, toks.len());
                after[ci][l].0 += sq_err(&out, y);
                after[ci][l].1 += sq_norm(y);
            }
        }
    }
    Ok(layer_reports(&before, &after))
}

/// [`attention_transfer`] on GPU `ordinal`; the trained mixers are copied back into `cands`.
fn attention_transfer_gpu(
    teacher: &HybridModel,
    cands: &mut [HybridModel],
    seqs: &[Vec<u32>],
    spec: &TransferSpec,
    ordinal: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Vec<LayerTransfer>>> {
    let layers = teacher.blocks.len();
    let names: Vec<String> = (0..cands.len()).map(|i| format!("candidate {i}")).collect();
    let named: Vec<(&str, &HybridModel)> =
        names.iter().map(String::as_str).zip(cands.iter()).collect();
    let mut g = GpuSupernet::new(teacher, &named, ordinal)?;
    let mut before = vec![vec![(0f64, 0f64); layers]; cands.len()];
    let mut after = before.clone();
    let total = spec.epochs * seqs.len();
    let mut done = 0;
    // Epochs of training steps, then one pass that only measures.
    for epoch in 0..=spec.epochs {
        let lr = (epoch < spec.epochs).then_some(spec.lr);
        for s in seqs {
            let toks = &s[..s.len().min(spec.max_len)];
            let bt = (1, toks.len());
            let io = g.teacher_mixer_io(toks, bt)?;
            for (ci, name) in names.iter().enumerate() {
                for (l, (h, y)) in io.iter().enumerate() {
                    let (e, n) = g.transfer_step(name, l, h, y, bt, lr)?;
                    let slot = match epoch {
                        0 => &mut before[ci][l],
                        e if e == spec.epochs => &mut after[ci][l],
                        _ => continue,
                    };
                    slot.0 += e;
                    slot.1 += n;
                }
            }
            if lr.is_some() {
                done += 1;
                progress(done, total);
            }
        }
    }
    for (name, cand) in names.iter().zip(cands.iter_mut()) {
        for (l, bl) in cand.blocks.iter_mut().enumerate() {
            let p = g.mixer_params(name, l)?;
            for (k, v) in bl.mixer.params_mut().map.iter_mut() {
                v.data.copy_from_slice(p.get(k));
            }
        }
    }
    Ok(layer_reports(&before, &after))
}

/// Per candidate and layer: relative MSE before and after from (squared error, squared norm)
/// sums.
fn layer_reports(before: &[Vec<(f64, f64)>], after: &[Vec<(f64, f64)>]) -> Vec<Vec<LayerTransfer>> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            b.iter()
                .zip(a)
                .enumerate()
                .map(|(l, (b, a))| LayerTransfer {
                    layer: l,
                    rel_mse_before: b.0 / b.1.max(1e-30),
                    rel_mse_after: a.0 / a.1.max(1e-30),
                })
                .collect()
        })
        .collect()
}

fn sq_err(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum()
}

fn sq_norm(a: &[f32]) -> f64 {
    a.iter().map(|x| (*x as f64).powi(2)).sum()
}

fn mixer_forward(m: &Mixer, h: &[f32], t: usize) -> Vec<f32> {
    match m {
        Mixer::Attention(a) => a.forward(h, 1, t, None).0,
        Mixer::Linear(l) => l.forward(h, 1, t, None).0,
    }
}

/// One candidate forward + backward against the teacher output; returns (output, grads).
fn mixer_step(m: &Mixer, h: &[f32], t: usize, y: &[f32]) -> (Vec<f32>, Params) {
    let mut grads = m.params().zeros_like();
    let out = match m {
        Mixer::Attention(a) => {
            let (out, saved) = a.forward(h, 1, t, None);
            let (_, dy) = mse(&out, y);
            a.backward(&saved, &dy, &mut grads);
            out
        }
        Mixer::Linear(l) => {
            let (out, saved) = l.forward(h, 1, t, None);
            let (_, dy) = mse(&out, y);
            l.backward(&saved, &dy, &mut grads);
            out
        }
    };
    (out, grads)
}
