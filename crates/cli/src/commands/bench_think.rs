//! `hybrid bench think`: memory and time of a reasoning trace against its length, plain
//! generation vs Delethink, for each model given (an FA model and its hybrid). Greedy, stop
//! tokens ignored so that every trace has the asked length. Markdown + JSON + two plots.
use anyhow::Result;
use clap::Args;
use engine::delethink::{think_with, DelethinkSpec};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct ThinkBenchArgs {
    /// Models (GGUF files or hybrid folders), e.g. a teacher and its hybrid.
    #[arg(long, required = true)]
    pub model: Vec<PathBuf>,
    /// Trace lengths (generated tokens).
    #[arg(long, value_delimiter = ',', default_values_t = vec![128usize, 256, 512, 1024])]
    pub lengths: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    pub chunk: usize,
    #[arg(long, default_value_t = 64)]
    pub carryover: usize,
    #[arg(long, default_value_t = 16)]
    pub head: usize,
    #[arg(long, default_value = "Think step by step: what is 17 times 23?")]
    pub prompt: String,
    #[arg(long, default_value = "out/bench-think")]
    pub out: PathBuf,
}

pub fn run(a: ThinkBenchArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let mut rows = vec![];
    for path in &a.model {
        let name = path
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned());
        let m = engine::ServeModel::load(path, &name)?;
        let kind = if m.model.blocks.iter().all(
            |b| matches!(&b.mixer, model::hybrid::Mixer::Attention(x) if x.cfg.window.is_none()),
        ) {
            "fa"
        } else {
            "hybrid"
        };
        let q = model::prompt_tokens(&m.tokenizer, m.template.as_ref(), &a.prompt, true)?;
        for &len in &a.lengths {
            // Plain: one context that grows with the trace.
            let t0 = Instant::now();
            let mut st = m.model.new_state(1);
            let mut logits = m.model.forward(&q, 1, &mut st, false)?;
            for _ in 0..len - 1 {
                let next = model::sampling::argmax(&logits);
                logits = m.model.forward(&[next], 1, &mut st, false)?;
            }
            let plain_s = t0.elapsed().as_secs_f64();
            let plain_bytes = engine::prefix::state_bytes(&st);
            eprintln!(
                "{name} ({kind}) plain {len}: {plain_s:.2} s, {} KiB",
                plain_bytes >> 10
            );
            rows.push(
                json!({"model": name, "kind": kind, "method": "plain", "trace_tokens": len,
                "seconds": plain_s, "peak_cache_bytes": plain_bytes,
                "peak_cache_tokens": q.len() + len}),
            );
            // Delethink: enough chunks for the length.
            let step = a.chunk - a.carryover;
            let chunks = 1 + len.saturating_sub(a.chunk).div_ceil(step.max(1));
            let spec = DelethinkSpec {
                chunk: a.chunk,
                carryover: a.carryover,
                max_chunks: chunks,
                head: a.head,
            };
            let t0 = Instant::now();
            let tr = think_with(&m, &q, &spec, &Default::default(), &[], true, |_| true)?;
            let dt = t0.elapsed().as_secs_f64();
            eprintln!(
                "{name} ({kind}) delethink {}: {dt:.2} s, {} KiB",
                tr.tokens.len(),
                tr.peak_cache_bytes() >> 10
            );
            rows.push(json!({"model": name, "kind": kind, "method": "delethink",
                "trace_tokens": tr.tokens.len(), "seconds": dt,
                "peak_cache_bytes": tr.peak_cache_bytes(),
                "peak_cache_tokens": tr.peak_cache_tokens(), "chunks": tr.chunks.len()}));
        }
    }
    let j = json!({"bench": "think", "device": "cpu", "threads": rayon::current_num_threads(),
        "prompt_tokens_note": "chat-templated prompt", "chunk": a.chunk, "carryover": a.carryover,
        "head": a.head, "rows": rows});
    std::fs::write(
        a.out.join("bench-think.json"),
        serde_json::to_string_pretty(&j)?,
    )?;
    let mut md = format!(
        "# hybrid bench think\n\nCPU, {} threads; greedy, stop tokens ignored; Delethink C = {}, m = {}, head = {}.\n\n| model | kind | method | trace tokens | seconds | peak cache | peak cache tokens |\n|---|---|---|---|---|---|---|\n",
        rayon::current_num_threads(),
        a.chunk,
        a.carryover,
        a.head
    );
    for r in &rows {
        md += &format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} MiB | {} |\n",
            r["model"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            r["method"].as_str().unwrap_or(""),
            r["trace_tokens"],
            r["seconds"].as_f64().unwrap_or(0.0),
            r["peak_cache_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
            r["peak_cache_tokens"]
        );
    }
    md += "\n![memory](memory_vs_length.png) ![time](time_vs_length.png)\n";
    std::fs::write(a.out.join("bench-think.md"), &md)?;
    let curves = |field: &str, scale: f64| -> Vec<(String, Vec<(f64, f64)>)> {
        let mut keys: Vec<(String, String)> = vec![];
        for r in &rows {
            let k = (
                r["kind"].as_str().unwrap_or("").to_string(),
                r["method"].as_str().unwrap_or("").to_string(),
            );
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys.iter()
            .map(|(kind, method)| {
                let pts = rows
                    .iter()
                    .filter(|r| r["kind"] == kind.as_str() && r["method"] == method.as_str())
                    .map(|r| {
                        (
                            r["trace_tokens"].as_f64().unwrap_or(0.0),
                            r[field].as_f64().unwrap_or(0.0) / scale,
                        )
                    })
                    .collect();
                (format!("{kind} {method}"), pts)
            })
            .collect()
    };
    super::convert_plots::lines(
        &a.out.join("memory_vs_length.png"),
        "Peak cache memory against trace length",
        ("trace tokens", "MiB"),
        &curves("peak_cache_bytes", (1 << 20) as f64),
    )?;
    super::convert_plots::lines(
        &a.out.join("time_vs_length.png"),
        "Trace time against trace length",
        ("trace tokens", "seconds"),
        &curves("seconds", 1.0),
    )?;
    print!("{md}");
    Ok(())
}
