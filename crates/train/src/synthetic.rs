//! Training small hybrid models from scratch on synthetic recall tasks (MQAR, passkey), so
//! that mixers can be compared on recall (Zoology, arXiv 2312.04927; research/delethink-mqar.md
//! §3): AdamW, warmup + cosine schedule, gradient clipping, fresh data every step, accuracy on
//! a fixed held-out set.
use crate::freeze::Freeze;
use crate::loss::cross_entropy;
use crate::optim::{clip_grad_norm, AdamState, AdamW};
use crate::schedule::lr_at;
use crate::tasks::mqar::{accuracy, mqar, MqarConfig};
use anyhow::Result;
use model::hybrid::config::LinearAttnType;
use model::hybrid::{parse_layout, HybridConfig, HybridModel};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Instant;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    /// Comma-separated layer types, e.g. `fa,fa` or `gdn,fa`.
    pub layout: String,
    pub d_model: usize,
    pub heads: usize,
    pub window: usize,
    pub task: MqarConfig,
    pub steps: usize,
    pub batch: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub warmup: usize,
    pub eval_examples: usize,
    pub seed: u64,
    /// Modules not trained (see [`Freeze`]).
    #[serde(default)]
    pub freeze: Freeze,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub config: RunConfig,
    pub layer_names: Vec<String>,
    pub parameters: usize,
    /// Recurrent state or KV cache bytes per sequence at the task's length (f32).
    pub state_bytes: usize,
    pub final_loss: f32,
    pub accuracy: f64,
    /// (step, held-out accuracy) during training.
    pub curve: Vec<(usize, f64)>,
    pub seconds: f64,
}

/// The model config of a synthetic run: mixer-only blocks (no MLP), as in Zoology's MQAR.
pub fn model_config(r: &RunConfig) -> Result<HybridConfig> {
    let (layer_types, lin) = parse_layout(&r.layout)?;
    let head_dim = r.d_model / r.heads;
    Ok(HybridConfig {
        model_type: "hybrid".into(),
        vocab_size: r.task.vocab_size,
        hidden_size: r.d_model,
        intermediate_size: 0,
        num_hidden_layers: layer_types.len(),
        num_attention_heads: r.heads,
        num_key_value_heads: r.heads,
        head_dim,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        partial_rotary_factor: 1.0,
        sliding_window: Some(r.window),
        attn_output_gate: false,
        attention_bias: false,
        qk_norm: false,
        moe: None,
        mla: None,
        max_position_embeddings: r.task.seq_len,
        tie_word_embeddings: true,
        layer_types,
        linear_attn_type: Some(LinearAttnType::PerLayer(lin)),
        linear_num_key_heads: Some(r.heads),
        linear_num_value_heads: Some(r.heads),
        linear_key_head_dim: Some(head_dim),
        linear_value_head_dim: Some(head_dim),
        linear_conv_kernel_dim: 4,
        linear_gate_rank: 16,
        linear_chunk_size: 16,
        bos_token_id: None,
        eos_token_id: None,
    })
}

/// Parameters that get weight decay: matrices, not norms, biases, conv taps or decay rates.
fn decays(name: &str) -> bool {
    name.ends_with(".weight") && !name.contains("norm") && !name.contains("conv1d")
}

/// Greedy predictions [B·N] of a model on a batch.
fn predict(m: &HybridModel, inputs: &[u32], b: usize, n: usize) -> Result<Vec<u32>> {
    let (logits, _) = m.forward_train(inputs, b, n)?;
    let v = m.config.vocab_size;
    Ok(logits
        .chunks_exact(v)
        .map(model::sampling::argmax)
        .collect())
}

pub fn evaluate(m: &HybridModel, r: &RunConfig) -> Result<f64> {
    let n = r.task.seq_len;
    let mut acc = 0.0;
    let mut count = 0;
    // Held-out data: seeds far from the training stream's.
    for (i, chunk) in (0..r.eval_examples)
        .collect::<Vec<_>>()
        .chunks(r.batch.max(1))
        .enumerate()
    {
        let data = mqar(
            &r.task,
            chunk.len(),
            1_000_000_007 + r.seed * 1000 + i as u64,
        )?;
        let pred = predict(m, &data.inputs, chunk.len(), n)?;
        acc += accuracy(&pred, &data.labels, n) * chunk.len() as f64;
        count += chunk.len();
    }
    Ok(acc / count.max(1) as f64)
}

/// Trains one model; `progress(step, loss, held-out accuracy when measured)` is called after
/// every step.
pub fn run(r: &RunConfig, progress: impl FnMut(usize, f32, Option<f64>)) -> Result<RunResult> {
    Ok(train(r, progress)?.0)
}

/// [`run`], also returning the trained model.
pub fn train(
    r: &RunConfig,
    mut progress: impl FnMut(usize, f32, Option<f64>),
) -> Result<(RunResult, HybridModel)> {
    r.task.validate()?;
    anyhow::ensure!(
        r.heads > 0 && r.d_model.is_multiple_of(r.heads),
        "d_model {} is not a multiple of {} heads",
        r.d_model,
        r.heads
    );
    let cfg = model_config(r)?;
    let mut m = HybridModel::init(cfg, r.seed)?;
    let n = r.task.seq_len;
    let t0 = Instant::now();
    let mut curve = vec![];
    let eval_every = (r.steps / 8).max(1);
    let opt = Fit {
        steps: r.steps,
        warmup: r.warmup,
        lr: r.lr,
        weight_decay: r.weight_decay,
        freeze: r.freeze.clone(),
    };
    let loss = fit(
        &mut m,
        &opt,
        |step| {
            let data = mqar(&r.task, r.batch, r.seed * 1_000_003 + step as u64)?;
            Ok((data.inputs, data.labels, r.batch))
        },
        |m, step, loss| {
            let acc = if (step + 1) % eval_every == 0 || step + 1 == r.steps {
                let a = evaluate(
                    m,
                    &RunConfig {
                        eval_examples: r.eval_examples.min(64),
                        ..r.clone()
                    },
                )?;
                curve.push((step + 1, a));
                Some(a)
            } else {
                None
            };
            progress(step, loss, acc);
            Ok(())
        },
    )?;
    let accuracy = evaluate(&m, r)?;
    let res = RunResult {
        config: r.clone(),
        layer_names: m.config.layer_names()?,
        parameters: m.n_params(),
        state_bytes: m.cache_bytes(n, 4),
        final_loss: loss,
        accuracy,
        curve,
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((res, m))
}

/// Optimiser settings of [`fit`].
#[derive(Clone, Debug)]
pub struct Fit {
    pub steps: usize,
    pub warmup: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub freeze: Freeze,
}

/// Trains `m` for `o.steps` steps of AdamW (warmup + cosine to a tenth, clip 1.0) on the
/// batches `batch(step)` gives — (inputs [B·N], labels [B·N] with -1 where no loss, B) —
/// calling `after(model, step, loss)` after each. Returns the last loss.
pub fn fit(
    m: &mut HybridModel,
    o: &Fit,
    mut batch: impl FnMut(usize) -> Result<(Vec<u32>, Vec<i64>, usize)>,
    mut after: impl FnMut(&HybridModel, usize, f32) -> Result<()>,
) -> Result<f32> {
    let opt = AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: o.weight_decay,
    };
    let mut states: HashMap<String, AdamState> = HashMap::new();
    let mut loss = f32::NAN;
    for step in 0..o.steps {
        let (inputs, labels, b) = batch(step)?;
        let n = inputs.len() / b.max(1);
        let (logits, saved) = m.forward_train(&inputs, b, n)?;
        let (l, dlogits) = cross_entropy(&logits, m.config.vocab_size, &labels);
        loss = l;
        let mut g = m.zero_grads();
        m.backward(&saved, &dlogits, &mut g);
        clip_grad_norm(&mut g.slices_mut(), 1.0);
        let lr = lr_at(step, o.steps, o.warmup, o.lr, o.lr * 0.1);
        m.visit_params(&g, |name, p, gr| {
            if o.freeze.is_frozen(name) {
                return;
            }
            let st = states
                .entry(name.to_string())
                .or_insert_with(|| AdamState::new(p.len()));
            opt.step(p, gr, st, lr, decays(name));
        });
        after(m, step, loss)?;
    }
    Ok(loss)
}

/// Markdown report of a set of runs: the best accuracy over learning rates per model and
/// task (Zoology's protocol), then every run.
pub fn markdown(results: &[RunResult], title: &str, preamble: &str) -> String {
    let mut s = format!("# {title}\n\n{preamble}\n\n## Best over learning rates\n\n");
    s.push_str("| layers | kv pairs | MQAR accuracy | at lr | state bytes/seq | params |\n|---|---|---|---|---|---|\n");
    let mut keys: Vec<(usize, String)> = results
        .iter()
        .map(|r| (r.config.task.num_kv_pairs, r.layer_names.join("+")))
        .collect();
    keys.dedup();
    let mut seen = std::collections::BTreeSet::new();
    for key in keys {
        if !seen.insert(key.clone()) {
            continue;
        }
        let best = results
            .iter()
            .filter(|r| (r.config.task.num_kv_pairs, r.layer_names.join("+")) == key)
            .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy))
            .expect("key comes from results");
        s.push_str(&format!(
            "| {} | {} | {:.1}% | {} | {} | {} |\n",
            key.1,
            key.0,
            100.0 * best.accuracy,
            best.config.lr,
            best.state_bytes,
            best.parameters
        ));
    }
    s.push_str("\n## Every run\n\n| layers | d_model | seq | kv pairs | lr | steps | batch | final loss | MQAR accuracy | accuracy during training (step: acc) | time (s) |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let curve: Vec<String> = r
            .curve
            .iter()
            .map(|(st, a)| format!("{st}: {:.0}%", 100.0 * a))
            .collect();
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.1}% | {} | {:.0} |\n",
            r.layer_names.join("+"),
            r.config.d_model,
            r.config.task.seq_len,
            r.config.task.num_kv_pairs,
            r.config.lr,
            r.config.steps,
            r.config.batch,
            r.final_loss,
            100.0 * r.accuracy,
            curve.join(", "),
            r.seconds
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(layout: &str, freeze: &str) -> RunConfig {
        RunConfig {
            layout: layout.into(),
            d_model: 16,
            heads: 2,
            window: 4,
            task: MqarConfig {
                vocab_size: 64,
                seq_len: 32,
                num_kv_pairs: 4,
                random_non_queries: false,
                ..Default::default()
            },
            steps: 3,
            batch: 4,
            lr: 1e-2,
            weight_decay: 0.1,
            warmup: 1,
            eval_examples: 8,
            seed: 1,
            freeze: Freeze::parse(freeze),
        }
    }

    #[test]
    fn frozen_modules_keep_their_values_and_the_rest_trains() {
        let r = tiny("gdn,fa", "embed_tokens,linear_attn.");
        let before = HybridModel::init(model_config(&r).unwrap(), r.seed)
            .unwrap()
            .named_params();
        let (_, m) = train(&r, |_, _, _| {}).unwrap();
        let after = m.named_params();
        for (name, p) in &before.map {
            let changed = p.data != after.map[name].data;
            assert_eq!(changed, !r.freeze.is_frozen(name), "{name}");
        }
    }

    #[test]
    fn every_mixer_trains_and_reports() {
        for layout in ["fa,swa", "gdn,kda", "gla,fa"] {
            let res = run(&tiny(layout, ""), |_, _, _| {}).unwrap();
            assert!(res.final_loss.is_finite(), "{layout}");
            assert!((0.0..=1.0).contains(&res.accuracy));
            assert_eq!(res.layer_names.len(), 2);
        }
    }
}
