//! `hybrid bench spec`: speculative decoding's decode speed at batch 1, with speculation off,
//! with prompt lookup and with a draft model, on two workloads in the model's chat template:
//! - `copy`: rewrite a paragraph keeping it as it is (the output copies the input: prompt
//!   lookup's case, as in vLLM's ngram benchmarks on summarisation and code editing);
//! - `chat`: open questions (nothing to copy: a draft model's case).
//!
//! Each (model, method) runs in its own engine, one request at a time, greedy, prefix cache
//! off; decode speed is (completion tokens − 1) / (time from the first token to the last),
//! summed over the requests. Every method's tokens are compared with speculation off's
//! (greedy outputs must be identical). Writes DIR/bench-spec.json and DIR/bench-spec.md.
use anyhow::{bail, Context, Result};
use clap::Args;
use engine::speculative::{Method, SpecConfig};
use engine::{Engine, EngineConfig, Event, Request, ServeModel};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct SpecBenchArgs {
    /// Served models (GGUF files or hybrid folders).
    #[arg(long, required = true)]
    pub model: Vec<PathBuf>,
    /// A draft model per served model, in the same order (omit for prompt lookup only).
    #[arg(long)]
    pub draft: Vec<PathBuf>,
    /// Draft tokens per verification to try.
    #[arg(long, value_delimiter = ',', default_values_t = vec![4usize])]
    pub k: Vec<usize>,
    /// Tokens generated per request (at most; a reply may stop earlier).
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Requests per workload (cycling through its prompts).
    #[arg(long, default_value_t = 4)]
    pub requests: usize,
    /// cpu, cuda or cuda:N (default: cuda when a GPU is usable, else cpu).
    #[arg(long)]
    pub device: Option<tensor::Device>,
    #[arg(long, default_value = "out/bench-spec")]
    pub out: PathBuf,
}

pub(crate) const PARAGRAPHS: [&str; 4] = [
    "The old lighthouse stood at the edge of the cliff for more than two hundred years. Every night its keeper climbed the narrow stairs, trimmed the wick and watched the lamp turn slowly over the dark water, so that the fishing boats could find their way home through the fog.",
    "To make a simple bread, mix five hundred grams of flour with a teaspoon of salt and a packet of dry yeast. Add three hundred millilitres of warm water, knead the dough for ten minutes, let it rise for an hour, then bake it at two hundred degrees for thirty minutes.",
    "The committee met on Tuesday to discuss the new budget. After a long debate, the members agreed to spend more on the public library and the swimming pool, and to delay the repairs to the town hall until the next financial year.",
    "Honey bees live in colonies of up to sixty thousand workers, a single queen and a few hundred drones. The workers collect nectar and pollen, build the wax comb, feed the young and defend the hive, while the queen lays up to two thousand eggs a day.",
];

pub(crate) const QUESTIONS: [&str; 4] = [
    "Explain how a bicycle works.",
    "Write a short story about a cat who learns to swim.",
    "What are the benefits of regular exercise?",
    "Describe the water cycle to a ten-year-old.",
];

/// The workload's prompts, rendered with the model's chat template.
pub(crate) fn prompts(m: &ServeModel, workload: &str) -> Result<Vec<Vec<u32>>> {
    let texts: Vec<String> = match workload {
        "copy" => PARAGRAPHS
            .iter()
            .map(|p| format!("Copy the following paragraph exactly, word for word:\n\n{p}"))
            .collect(),
        _ => QUESTIONS.iter().map(|q| q.to_string()).collect(),
    };
    texts
        .iter()
        .map(|t| {
            let msgs = [model::chat::Message {
                role: "user".into(),
                content: t.clone(),
                reasoning_content: None,
            }];
            match &m.template {
                Some(tpl) => m.tokenizer.encode(&tpl.render(&msgs, true)?, false),
                None => m.tokenizer.encode(t, true),
            }
        })
        .collect()
}

/// One request's tokens and timings (time to the first token, then to the last).
pub(crate) struct Run {
    pub(crate) tokens: Vec<u32>,
    ttft_s: f64,
    pub(crate) decode_s: f64,
}

pub(crate) fn run_one(e: &Engine, prompt: &[u32], max_tokens: usize) -> Result<Run> {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Event)>();
    let t0 = Instant::now();
    e.submit(
        Request {
            prompt: prompt.to_vec(),
            max_tokens,
            sampling: Default::default(),
            stop: vec![],
            keep: vec![],
            ignore_eos: false,
        },
        Box::new(move |ev| tx.send((Instant::now(), ev)).is_ok()),
    )?;
    let (mut tokens, mut first, mut last) = (vec![], None, t0);
    for (at, ev) in rx {
        match ev {
            Event::Text { token, .. } => {
                tokens.push(token);
                first.get_or_insert(at);
                last = at;
            }
            Event::Done { .. } => break,
            Event::Error(m) => bail!("the request failed: {m}"),
        }
    }
    let first = first.unwrap_or(last);
    Ok(Run {
        tokens,
        ttft_s: (first - t0).as_secs_f64(),
        decode_s: (last - first).as_secs_f64(),
    })
}

/// Runs a workload on an engine (after one warm-up request): per-request tokens, and the
/// summed decode tokens and seconds.
fn workload(e: &Engine, prompts: &[Vec<u32>], a: &SpecBenchArgs) -> Result<(Vec<Run>, Value)> {
    run_one(e, &prompts[0], 8)?;
    let before = spec_counts(e);
    let mut runs = vec![];
    for i in 0..a.requests {
        runs.push(run_one(e, &prompts[i % prompts.len()], a.gen_tokens)?);
    }
    let after = spec_counts(e);
    let dec_tokens: usize = runs.iter().map(|r| r.tokens.len().saturating_sub(1)).sum();
    let dec_s: f64 = runs.iter().map(|r| r.decode_s).sum();
    let ttft: f64 = runs.iter().map(|r| r.ttft_s).sum::<f64>() / runs.len() as f64;
    let (ver, drafted, accepted) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    let hist: Vec<u64> = after
        .3
        .iter()
        .enumerate()
        .map(|(i, v)| v - before.3.get(i).copied().unwrap_or(0))
        .collect();
    let stats = json!({
        "completion_tokens": runs.iter().map(|r| r.tokens.len()).sum::<usize>(),
        "decode_tokens": dec_tokens,
        "decode_s": dec_s,
        "decode_tok_s": dec_tokens as f64 / dec_s.max(1e-9),
        "mean_ttft_s": ttft,
        "verifications": ver,
        "draft_tokens": drafted,
        "accepted_tokens": accepted,
        "acceptance_rate": if drafted > 0 { accepted as f64 / drafted as f64 } else { 0.0 },
        "tokens_per_verification": if ver > 0 { 1.0 + accepted as f64 / ver as f64 } else { 0.0 },
        "accepted_length_counts": hist,
    });
    Ok((runs, stats))
}

fn spec_counts(e: &Engine) -> (u64, u64, u64, Vec<u64>) {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &e.metrics;
    (
        m.spec_verifications.load(Relaxed),
        m.spec_draft_tokens.load(Relaxed),
        m.spec_accepted_tokens.load(Relaxed),
        m.accepted_lengths(),
    )
}

pub fn run(a: SpecBenchArgs) -> Result<()> {
    if !a.draft.is_empty() && a.draft.len() != a.model.len() {
        bail!(
            "give one --draft per --model ({} models, {} drafts)",
            a.model.len(),
            a.draft.len()
        );
    }
    let device = super::resolve_device(a.device)?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let mut rows = vec![];
    for (i, path) in a.model.iter().enumerate() {
        let name = path
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned());
        let m = Arc::new(ServeModel::load(path, &name)?);
        let mut methods: Vec<(String, Option<SpecConfig>)> = vec![("off".into(), None)];
        for &k in &a.k {
            methods.push((format!("ngram k={k}"), Some(SpecConfig::parse("ngram", k)?)));
            if let Some(d) = a.draft.get(i) {
                let cfg = SpecConfig::parse(&format!("model:{}", d.display()), k)?;
                methods.push((format!("draft k={k}"), Some(cfg)));
            }
        }
        for wl in ["copy", "chat"] {
            let ps = prompts(&m, wl)?;
            let mut reference: Option<Vec<Vec<u32>>> = None;
            let mut base_speed = 0.0;
            for (label, spec) in &methods {
                let draft = match spec.as_ref().map(|s| &s.method) {
                    Some(Method::Model { path, .. }) => Some(path.display().to_string()),
                    _ => None,
                };
                let cfg = EngineConfig {
                    max_num_seqs: 1,
                    max_batched_tokens: 4096,
                    prefix_cache: false,
                    device,
                    speculative: spec.clone(),
                    ..Default::default()
                };
                let e = Engine::start(m.clone(), cfg)?;
                eprintln!("{name}, {wl}, {label} ...");
                let (runs, mut stats) = workload(&e, &ps, &a)?;
                let toks: Vec<Vec<u32>> = runs.into_iter().map(|r| r.tokens).collect();
                let speed = stats["decode_tok_s"].as_f64().unwrap_or(0.0);
                if spec.is_none() {
                    base_speed = speed;
                }
                let want = reference.get_or_insert_with(|| toks.clone());
                let identical = *want == toks;
                // Where a reply first differs from speculation off's (bf16 rounding on the GPU
                // shows as a late divergence; a wrong commit would show at once).
                let common: Vec<usize> = want
                    .iter()
                    .zip(&toks)
                    .map(|(w, g)| w.iter().zip(g).take_while(|(a, b)| a == b).count())
                    .collect();
                let same = want.iter().zip(&toks).filter(|(w, g)| w == g).count();
                stats["identical_requests"] = json!(same);
                stats["common_prefix_tokens"] = json!(common);
                stats["tokens"] = json!(toks);
                stats["model"] = json!(name);
                stats["workload"] = json!(wl);
                stats["method"] = json!(label);
                stats["draft"] = json!(draft);
                stats["speedup"] = json!(speed / base_speed.max(1e-9));
                stats["identical_to_off"] = json!(identical);
                eprintln!(
                    "  {speed:.1} tok/s, speedup {:.2}x, acceptance {:.2}, identical {identical}",
                    speed / base_speed.max(1e-9),
                    stats["acceptance_rate"].as_f64().unwrap_or(0.0)
                );
                rows.push(stats);
            }
        }
    }
    let machine = match device {
        tensor::Device::Cuda(n) => tensor::cuda::Gpu::open(n)?.name.clone(),
        tensor::Device::Cpu => format!("CPU ({} threads)", rayon::current_num_threads()),
    };
    let j = json!({
        "device": machine,
        "gen_tokens": a.gen_tokens,
        "requests": a.requests,
        "rows": rows,
    });
    std::fs::write(
        a.out.join("bench-spec.json"),
        serde_json::to_string_pretty(&j)?,
    )?;
    let md = markdown(&j);
    std::fs::write(a.out.join("bench-spec.md"), &md)?;
    println!("{md}");
    Ok(())
}

fn markdown(j: &Value) -> String {
    let mut s = format!(
        "# Speculative decoding at batch 1 ({}; greedy, up to {} tokens, {} requests per workload)\n\n\
         | model | workload | method | decode tok/s | speedup | acceptance | tokens / verification | replies identical to off |\n\
         |---|---|---|---|---|---|---|---|\n",
        j["device"].as_str().unwrap_or("?"),
        j["gen_tokens"],
        j["requests"]
    );
    for r in j["rows"].as_array().into_iter().flatten() {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        let spec = r["method"] != "off";
        s += &format!(
            "| {} | {} | {} | {:.1} | {:.2}x | {} | {} | {}/{} |\n",
            r["model"].as_str().unwrap_or("?"),
            r["workload"].as_str().unwrap_or("?"),
            r["method"].as_str().unwrap_or("?"),
            f("decode_tok_s"),
            f("speedup"),
            if spec {
                format!("{:.2}", f("acceptance_rate"))
            } else {
                "–".into()
            },
            if spec {
                format!("{:.2}", f("tokens_per_verification"))
            } else {
                "–".into()
            },
            r["identical_requests"],
            j["requests"]
        );
    }
    s
}
