//! `hybrid train-synthetic`: trains small models from scratch on MQAR and writes a report
//! (Markdown + JSON) comparing mixers on recall.
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use train::synthetic::{markdown, run, RunConfig, RunResult};
use train::tasks::mqar::MqarConfig;

#[derive(Args, Clone, Debug)]
pub struct TrainSyntheticArgs {
    /// Task (only `mqar` so far).
    #[arg(long, default_value = "mqar")]
    pub task: String,
    /// Layer layout, e.g. `fa,fa` or `gdn,fa` (repeat the flag to compare several models).
    #[arg(long = "layer-types", required = true)]
    pub layouts: Vec<String>,
    /// Key-value pairs per sequence (repeatable).
    #[arg(long = "kv-pairs", default_values_t = [16usize])]
    pub kv_pairs: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    pub d_model: usize,
    #[arg(long, default_value_t = 2)]
    pub heads: usize,
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 512)]
    pub vocab: usize,
    /// Sliding window of `swa` layers (keys including the current one).
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f32,
    #[arg(long, default_value_t = 256)]
    pub eval_examples: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Comma-separated name patterns of modules not to train (e.g. `embed_tokens,mlp.`).
    #[arg(long, default_value = "")]
    pub freeze: String,
    /// Folder for report.md and report.json (written after every finished run, so an
    /// interrupted sweep keeps what it finished and a rerun skips it).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run_cmd(a: TrainSyntheticArgs) -> Result<()> {
    if a.task != "mqar" {
        bail!("unknown task '{}' (mqar)", a.task);
    }
    let mut results: Vec<RunResult> = vec![];
    let json_path = a.out.as_ref().map(|d| d.join("report.json"));
    if let Some(p) = json_path.as_ref().filter(|p| p.exists()) {
        results = serde_json::from_str(&std::fs::read_to_string(p)?)
            .with_context(|| format!("{} is not a report", p.display()))?;
    }
    for &kv in &a.kv_pairs {
        for layout in &a.layouts {
            let r = RunConfig {
                layout: layout.clone(),
                d_model: a.d_model,
                heads: a.heads,
                window: a.window,
                task: MqarConfig {
                    vocab_size: a.vocab,
                    seq_len: a.seq_len,
                    num_kv_pairs: kv,
                    random_non_queries: false,
                    ..Default::default()
                },
                steps: a.steps,
                batch: a.batch,
                lr: a.lr,
                weight_decay: 0.1,
                warmup: (a.steps / 10).max(1),
                eval_examples: a.eval_examples,
                seed: a.seed,
                freeze: train::freeze::Freeze::parse(&a.freeze),
            };
            let same = |x: &RunResult| {
                serde_json::to_string(&x.config).ok() == serde_json::to_string(&r).ok()
            };
            if results.iter().any(same) {
                eprintln!("{layout} with {kv} pairs: already in the report, skipped");
                continue;
            }
            let pb = ProgressBar::new(a.steps as u64);
            pb.set_style(
                ProgressStyle::with_template("{prefix:>18} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                    .unwrap()
                    .progress_chars("=> "),
            );
            pb.set_prefix(format!("{layout} kv={kv}"));
            let mut last_acc = None;
            let res = run(&r, |step, loss, acc| {
                last_acc = acc.or(last_acc);
                pb.set_position(step as u64 + 1);
                pb.set_message(format!(
                    "loss {loss:.3} acc {}",
                    last_acc.map_or("-".into(), |a| format!("{:.1}%", 100.0 * a))
                ));
            })?;
            pb.finish_and_clear();
            eprintln!(
                "{layout} kv={kv}: accuracy {:.1}% in {:.0} s",
                100.0 * res.accuracy,
                res.seconds
            );
            results.push(res);
            if let Some(dir) = &a.out {
                write_report(dir, &results)?;
            }
        }
    }
    if a.out.is_none() {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}

fn write_report(dir: &PathBuf, results: &[RunResult]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    let pre = "MQAR (Zoology's generator: keys in [1, V/2), values in [V/2, V), queries placed with power law a = 0.01, no random fillers), \
               2-layer mixer-only models trained from scratch on the CPU with AdamW (wd 0.1), warmup + cosine, clipping at 1, fresh data every step; \
               accuracy on held-out sequences (Zoology's metric). State bytes: KV cache at the sequence length (FA), window (SWA), or recurrent state + conv history (linear), f32.";
    std::fs::write(
        dir.join("report.md"),
        markdown(results, "Mixers on MQAR", pre),
    )?;
    Ok(())
}
