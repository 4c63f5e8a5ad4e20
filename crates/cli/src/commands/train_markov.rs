//! `hybrid train-markov`: the from-scratch Delethink demonstration. Trains a small model on
//! the Markovian chain-walking task and on its control (`train::tasks::markov`), then answers
//! held-out queries with plain chain of thought and with Delethink at a chunk much shorter than
//! the trace. Markdown + JSON report.
use anyhow::Result;
use clap::Args;
use engine::delethink::{think_tokens, DelethinkSpec, Flow};
use indicatif::{ProgressBar, ProgressStyle};
use model::hybrid::config::LinearAttnType;
use model::hybrid::{parse_layout, HybridConfig, HybridModel};
use serde_json::json;
use std::path::PathBuf;
use train::synthetic::{fit, Fit};
use train::tasks::markov::{Answer, Chunking, MarkovTask};
use train::tasks::rng::SplitMix64;

#[derive(Args, Debug)]
pub struct TrainMarkovArgs {
    /// Values of the permutation the chain walks.
    #[arg(long, default_value_t = 8)]
    pub values: usize,
    /// Steps of the chain (the trace is 2 tokens per step); fewer than `values`.
    #[arg(long, default_value_t = 6)]
    pub steps: usize,
    /// Delethink's chunk C (tokens), carryover m and head H at evaluation (and in training).
    #[arg(long, default_value_t = 6)]
    pub chunk: usize,
    #[arg(long, default_value_t = 2)]
    pub carryover: usize,
    #[arg(long, default_value_t = 2)]
    pub head: usize,
    #[arg(long, default_value = "gdn,fa,gdn,fa")]
    pub layout: String,
    #[arg(long, default_value_t = 64)]
    pub d_model: usize,
    #[arg(long, default_value_t = 8000)]
    pub train_steps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f32,
    /// Held-out queries per task.
    #[arg(long, default_value_t = 200)]
    pub eval: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "out/markov")]
    pub out: PathBuf,
}

fn config(a: &TrainMarkovArgs, t: &MarkovTask) -> Result<HybridConfig> {
    let (layer_types, lin) = parse_layout(&a.layout)?;
    let heads = 4;
    Ok(HybridConfig {
        model_type: "hybrid".into(),
        vocab_size: t.vocab(),
        hidden_size: a.d_model,
        intermediate_size: 2 * a.d_model,
        num_hidden_layers: layer_types.len(),
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim: a.d_model / heads,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        partial_rotary_factor: 1.0,
        sliding_window: Some(16),
        attn_output_gate: false,
        attention_bias: false,
        qk_norm: false,
        moe: None,
        mla: None,
        max_position_embeddings: t.seq_len() + 16,
        tie_word_embeddings: true,
        layer_types,
        linear_attn_type: Some(LinearAttnType::PerLayer(lin)),
        linear_num_key_heads: Some(heads),
        linear_num_value_heads: Some(heads),
        linear_key_head_dim: Some(a.d_model / heads),
        linear_value_head_dim: Some(a.d_model / heads),
        linear_conv_kernel_dim: 4,
        linear_gate_rank: 16,
        linear_chunk_size: 16,
        bos_token_id: None,
        eos_token_id: None,
    })
}

/// The token after the first `ANS` in `out`, if any.
fn answer_of(t: &MarkovTask, out: &[u32]) -> Option<u32> {
    let i = out.iter().position(|&x| x == t.ans())?;
    out.get(i + 1).copied()
}

/// Greedy plain chain of thought from the query.
fn plain(m: &HybridModel, t: &MarkovTask, q: &[u32]) -> Result<Vec<u32>> {
    let mut st = m.new_state(1);
    let mut logits = m.forward(q, 1, &mut st, false)?;
    let mut out = vec![];
    for _ in 0..2 * t.steps + 8 {
        let x = model::sampling::argmax(&logits);
        if x == t.eos() {
            break;
        }
        out.push(x);
        logits = m.forward(&[x], 1, &mut st, false)?;
    }
    Ok(out)
}

pub fn run(a: TrainMarkovArgs) -> Result<()> {
    anyhow::ensure!(
        a.steps >= 2 && a.steps < a.values,
        "--steps must be at least 2 and below --values ({}): the chain is one cycle through the values",
        a.values
    );
    anyhow::ensure!(
        a.carryover < a.chunk && a.head <= a.chunk,
        "--carryover must be below --chunk and --head at most --chunk"
    );
    std::fs::create_dir_all(&a.out)?;
    let chunking = Chunking {
        chunk: a.chunk,
        carryover: a.carryover,
        head: a.head,
    };
    let mut rows = vec![];
    for answer in [Answer::Last, Answer::Middle] {
        let task = MarkovTask {
            values: a.values,
            steps: a.steps,
            answer,
        };
        let mut m = HybridModel::init(config(&a, &task)?, a.seed)?;
        let pb = ProgressBar::new(a.train_steps as u64);
        pb.set_style(
            ProgressStyle::with_template(&format!(
                "train-markov {answer:?}: {{bar:30}} {{pos}}/{{len}} ETA {{eta}} {{msg}}"
            ))
            .unwrap(),
        );
        let t0 = std::time::Instant::now();
        let opt = Fit {
            steps: a.train_steps,
            warmup: a.train_steps / 20,
            lr: a.lr,
            weight_decay: 0.01,
            freeze: Default::default(),
        };
        let loss = fit(
            &mut m,
            &opt,
            |step| {
                let (i, l) = task.batch(a.batch, a.seed * 7_919 + step as u64, Some(chunking));
                Ok((i, l, a.batch))
            },
            |_, _, loss| {
                pb.set_message(format!("loss {loss:.3}"));
                pb.inc(1);
                Ok(())
            },
        )?;
        pb.finish_and_clear();
        let train_s = t0.elapsed().as_secs_f64();
        // Held-out queries (another seed stream).
        let mut rng = SplitMix64::new(0xDE1E_7E1C + a.seed);
        let spec = DelethinkSpec {
            chunk: a.chunk,
            carryover: a.carryover,
            max_chunks: 2 + (2 * a.steps + 3).div_ceil(a.chunk - a.carryover),
            head: a.head,
        };
        let (mut ok_plain, mut ok_dt, mut peak_plain, mut peak_dt) = (0, 0, 0usize, 0usize);
        for _ in 0..a.eval {
            let e = task.example(&mut rng);
            let p = plain(&m, &task, &e.query)?;
            ok_plain += usize::from(answer_of(&task, &p) == Some(e.answer));
            peak_plain = peak_plain.max(e.query.len() + p.len());
            let (chunks, _) = think_tokens(
                &m,
                &e.query,
                &spec,
                model::sampling::argmax,
                |x| x == task.eos(),
                |_| Flow::Go,
                |_, _| true,
            )?;
            let out: Vec<u32> = chunks.iter().flat_map(|c| c.tokens.clone()).collect();
            ok_dt += usize::from(answer_of(&task, &out) == Some(e.answer));
            peak_dt = peak_dt.max(
                chunks
                    .iter()
                    .map(|c| c.peak_cache_tokens)
                    .max()
                    .unwrap_or(0),
            );
        }
        let (acc_plain, acc_dt) = (
            ok_plain as f64 / a.eval as f64,
            ok_dt as f64 / a.eval as f64,
        );
        eprintln!(
            "{answer:?}: loss {loss:.3}, plain {acc_plain:.3}, delethink {acc_dt:.3} ({train_s:.0} s)"
        );
        rows.push(json!({"task": if answer == Answer::Last { "markovian (answer = last step)" } else { "control (answer = middle step)" },
            "final_loss": loss, "plain_accuracy": acc_plain, "delethink_accuracy": acc_dt,
            "plain_peak_context": peak_plain, "delethink_peak_context": peak_dt,
            "train_seconds": train_s, "parameters": m.n_params()}));
    }
    let j = json!({"bench": "train-markov", "values": a.values, "steps": a.steps,
        "trace_tokens": 2 * a.steps + 3, "chunk": a.chunk, "carryover": a.carryover, "head": a.head,
        "layout": a.layout, "d_model": a.d_model, "train_steps": a.train_steps, "batch": a.batch,
        "lr": a.lr, "eval": a.eval, "seed": a.seed, "rows": rows});
    std::fs::write(a.out.join("markov.json"), serde_json::to_string_pretty(&j)?)?;
    let mut md = format!(
        "# Delethink from scratch\n\nA {} model (d = {}, {} training steps of {} sequences, half of them Delethink boundary contexts) walks a chain of {} steps through a random cyclic permutation of {} values listed in the query (trace {} tokens). Delethink: chunk {}, carryover {}, head {}. {} held-out queries per task, greedy.\n\n| task | final loss | plain CoT accuracy | Delethink accuracy | peak context plain | peak context Delethink |\n|---|---|---|---|---|---|\n",
        a.layout, a.d_model, a.train_steps, a.batch, a.steps, a.values, 2 * a.steps + 3, a.chunk, a.carryover, a.head, a.eval
    );
    for r in &rows {
        md += &format!(
            "| {} | {:.3} | {:.3} | {:.3} | {} | {} |\n",
            r["task"].as_str().unwrap_or(""),
            r["final_loss"].as_f64().unwrap_or(0.0),
            r["plain_accuracy"].as_f64().unwrap_or(0.0),
            r["delethink_accuracy"].as_f64().unwrap_or(0.0),
            r["plain_peak_context"],
            r["delethink_peak_context"]
        );
    }
    std::fs::write(a.out.join("markov.md"), &md)?;
    print!("{md}");
    Ok(())
}
