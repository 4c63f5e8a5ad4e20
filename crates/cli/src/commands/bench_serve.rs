//! `hybrid bench serve`: a client in the same binary (like vLLM's benchmark_serving) against
//! in-process servers on real ports, one per model and prefix-cache setting. Streaming
//! requests give TTFT (first text), TPOT, inter-token latencies and end-to-end latency.
//!
//! Workloads:
//! - `hit-rate`: prompts of about C tokens of which a share h is a prefix shared with earlier
//!   prompts. Two priming prompts with that prefix and different suffixes run first (the
//!   second leaves a checkpoint at their divergence point, where a hybrid can resume), then the
//!   measured one. Shared lengths are not multiples of any block size.
//! - `multi-turn`: a chat whose history grows turn by turn (append-only); TTFT per turn.
//! - `thinking` (`--think-turns N`): interleaved thinking — the chat template's generation
//!   prompt opens `<think>` (MiniMax-M2 style), every reply is thinking, and the client sends
//!   each reply back; with `--think-history keep` the history keeps every `<think>` block (each
//!   turn's prompt extends the last one's tokens), with `strip` the server drops them (Qwen3
//!   style). TTFT per turn for each model, policy and prefix-cache setting.
//!
//! Writes DIR/bench-serve.json, DIR/bench-serve.md and two plots (TTFT against hit rate, TTFT
//! per turn).
use super::serve::OnOff;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct ServeBenchArgs {
    /// Models to serve in turn (GGUF files or hybrid folders), e.g. a teacher and its hybrid.
    #[arg(long, required = true)]
    pub model: Vec<PathBuf>,
    #[arg(long, value_delimiter = ',', default_values_t = vec![512usize, 2048])]
    pub contexts: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.0f64, 0.5, 0.9, 0.99])]
    pub hit_rates: Vec<f64>,
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = vec![OnOff::On, OnOff::Off])]
    pub prefix_cache: Vec<OnOff>,
    #[arg(long, default_value_t = 4)]
    pub turns: usize,
    #[arg(long, default_value_t = 16)]
    pub gen_tokens: usize,
    /// Turns of the interleaved-thinking workload (0: skip it).
    #[arg(long, default_value_t = 0)]
    pub think_turns: usize,
    /// Thinking tokens per reply in that workload.
    #[arg(long, default_value_t = 48)]
    pub think_tokens: usize,
    #[arg(long, default_value_t = 256)]
    pub max_batched_tokens: usize,
    #[arg(long, default_value = "out/bench-serve")]
    pub out: PathBuf,
    /// Also serve hybrids of these layouts built from the first (GGUF) model, untrained (one
    /// character per layer: F = FA, S = SWA, . = GDN, K = KDA): speed does not depend on
    /// training, so a long-context benchmark needs no converted weights.
    #[arg(long)]
    pub layout: Vec<String>,
    /// Sliding window of the layouts' SWA layers.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// cpu, cuda or cuda:N (default: cuda when a GPU is usable, else cpu).
    #[arg(long)]
    pub device: Option<tensor::Device>,
    /// Generate exactly the requested tokens (vLLM's `ignore_eos`) in the hit-rate and
    /// multi-turn workloads, so that models that stop early are timed on equal outputs.
    #[arg(long)]
    pub ignore_eos: bool,
}

/// The server's `hybrid_prefix_cache_bytes` gauge.
fn prefix_cache_bytes(url: &str) -> Result<u64> {
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let text = agent
        .get(&format!("{url}/metrics"))
        .call()?
        .body_mut()
        .read_to_string()?;
    text.lines()
        .find(|l| l.starts_with("hybrid_prefix_cache_bytes"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| anyhow::anyhow!("/metrics has no hybrid_prefix_cache_bytes"))
}

/// One streamed request's timings.
#[derive(serde::Serialize, Clone, Default)]
struct Timing {
    ttft_s: f64,
    tpot_s: f64,
    e2e_s: f64,
    itl_s: Vec<f64>,
    prompt_tokens: u64,
    cached_tokens: u64,
    completion_tokens: u64,
}

fn stream(url: &str, body: &Value) -> Result<Timing> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let t0 = Instant::now();
    let r = agent.post(url).send_json(body)?;
    if r.status().as_u16() != 200 {
        bail!("the server answered {}", r.status());
    }
    let mut t = Timing::default();
    let mut last: Option<Instant> = None;
    for line in std::io::BufReader::new(r.into_body().into_reader()).lines() {
        let line = line?;
        let Some(d) = line.strip_prefix("data: ") else {
            continue;
        };
        if d == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(d)?;
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            t.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
            t.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
            t.cached_tokens = u["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0);
        }
        let c = &v["choices"][0];
        // Reasoning deltas are text too (a split thinking reply streams reasoning_content).
        let delta = &c["delta"];
        let text = c["text"]
            .as_str()
            .or_else(|| delta["content"].as_str().filter(|s| !s.is_empty()))
            .or_else(|| delta["reasoning_content"].as_str())
            .unwrap_or("");
        if text.is_empty() {
            continue;
        }
        let now = Instant::now();
        match last {
            None => t.ttft_s = (now - t0).as_secs_f64(),
            Some(p) => t.itl_s.push((now - p).as_secs_f64()),
        }
        last = Some(now);
    }
    t.e2e_s = t0.elapsed().as_secs_f64();
    if last.is_none() {
        // The first token was a stop token: no text, and the reply ends when it is produced.
        t.ttft_s = t.e2e_s;
    }
    if !t.itl_s.is_empty() {
        t.tpot_s = (t.e2e_s - t.ttft_s) / t.itl_s.len() as f64;
    }
    Ok(t)
}

/// The reply to a streamed chat request `body`, asked again without streaming (greedy: the
/// same tokens, served from the prefix cache), as the history's next assistant message: its
/// content, and its reasoning_content when the server split one off.
fn reply_message(chat_url: &str, body: &Value) -> Result<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let mut nb = body.clone();
    nb["stream"] = json!(false);
    nb.as_object_mut().map(|o| o.remove("stream_options"));
    let v: Value = agent
        .post(chat_url)
        .send_json(&nb)?
        .body_mut()
        .read_json()?;
    let msg = &v["choices"][0]["message"];
    let mut reply = json!({"role": "assistant", "content": msg["content"].as_str().unwrap_or("")});
    if let Some(r) = msg.get("reasoning_content") {
        reply["reasoning_content"] = r.clone();
    }
    Ok(reply)
}

/// Filler text of about `n` tokens (a numbered sentence per ~16 tokens); `tag` makes it
/// differ from other filler of the same length.
fn filler(n: usize, tag: &str) -> String {
    (0..n.div_ceil(16))
        .map(|i| format!("Note {tag}{i}: the river flows past the old mill at dawn. "))
        .collect()
}

struct Running {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server runs on this runtime: kept alive with it.
    _rt: tokio::runtime::Runtime,
}

/// A server for `m` with the benchmark's engine settings (4 sequences, the step budget, the
/// prefix cache on or off) and, if given, a thinking-history policy.
fn start(
    m: Arc<engine::ServeModel>,
    a: &ServeBenchArgs,
    device: tensor::Device,
    prefix_cache: OnOff,
    think: Option<model::ThinkHistory>,
) -> Result<Running> {
    let cfg = engine::EngineConfig {
        max_num_seqs: 4,
        max_batched_tokens: a.max_batched_tokens,
        prefix_cache: prefix_cache == OnOff::On,
        device,
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let mut state = server::AppState::new(engine::Engine::start(m, cfg)?);
    if let Some(t) = think {
        state.think_history = t;
    }
    let state = Arc::new(state);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(server::serve(listener, state, async {
        let _ = rx.await;
    }));
    Ok(Running {
        url,
        stop: Some(tx),
        _rt: rt,
    })
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The models to serve: each --model, then each --layout built from the first model.
fn models(a: &ServeBenchArgs) -> Result<Vec<Arc<engine::ServeModel>>> {
    let mut out = vec![];
    for path in &a.model {
        let name = path
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned());
        out.push(Arc::new(engine::ServeModel::load(path, &name)?));
    }
    for spec in &a.layout {
        let t: &engine::ServeModel = &out[0];
        let model = super::bench_context::layout_model(&t.model, spec, a.window)?;
        let m = engine::ServeModel {
            name: format!("layout {spec}"),
            model,
            tokenizer: t.tokenizer.clone(),
            template: t.template.clone(),
            context: t.context,
        };
        out.push(Arc::new(m));
    }
    Ok(out)
}

/// Where the engines run, in words (the GPU's name, or the CPU and its threads).
fn device_name(device: tensor::Device) -> Result<String> {
    Ok(match device {
        tensor::Device::Cuda(n) => tensor::cuda::Gpu::open(n)?.name.clone(),
        tensor::Device::Cpu => "CPU".to_string(),
    })
}

pub fn run(a: ServeBenchArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let device = super::resolve_device(a.device)?;
    let mut rows = vec![];
    let mut turns = vec![];
    let all = models(&a)?;
    for m in &all {
        let name = m.name.clone();
        let kind = model_kind(m);
        for &pc in &a.prefix_cache {
            let srv = start(m.clone(), &a, device, pc, None)?;
            let comp = format!("{}/v1/completions", srv.url);
            let req = |prompt: String| {
                json!({"prompt": prompt, "max_tokens": a.gen_tokens, "temperature": 0,
                       "ignore_eos": a.ignore_eos,
                       "stream": true, "stream_options": {"include_usage": true}})
            };
            for &ctx in &a.contexts {
                for (hi, &h) in a.hit_rates.iter().enumerate() {
                    let shared_len = (ctx as f64 * h) as usize;
                    // The shared part differs per (context, rate): earlier cells must not hit.
                    let shared = filler(shared_len, &format!("s{ctx}r{hi}-"));
                    let rest = ctx - shared_len.min(ctx);
                    for p in ["a", "b"] {
                        stream(&comp, &req(format!("{shared}{}", filler(rest.max(12), p))))?;
                    }
                    let t = stream(
                        &comp,
                        &req(format!("{shared}{}", filler(rest.max(12), "c"))),
                    )?;
                    eprintln!(
                        "{name} ({kind}), prefix cache {pc:?}, context ~{ctx}, hit rate {h}: TTFT {:.3} s, cached {}/{}",
                        t.ttft_s, t.cached_tokens, t.prompt_tokens
                    );
                    rows.push(
                        json!({"model": name, "kind": kind, "prefix_cache": pc == OnOff::On,
                        "context": ctx, "hit_rate": h, "timing": t}),
                    );
                }
            }
            // Multi-turn chat, append-only history.
            let chat = format!("{}/v1/chat/completions", srv.url);
            let mut msgs = vec![json!({"role": "system", "content": filler(200, "sys")})];
            for turn in 0..a.turns {
                msgs.push(json!({"role": "user", "content": format!("{} Summarise note {turn}.", filler(64, &format!("t{turn}-")))}));
                let body = json!({"messages": msgs, "max_tokens": a.gen_tokens, "temperature": 0,
                    "ignore_eos": a.ignore_eos,
                    "stream": true, "stream_options": {"include_usage": true}});
                let t = stream(&chat, &body)?;
                msgs.push(reply_message(&chat, &body)?);
                // What the prefix cache holds after the turn (blocks shared by the turns'
                // checkpoints count once).
                let cache_bytes = prefix_cache_bytes(&srv.url)?;
                eprintln!(
                    "{name} ({kind}), prefix cache {pc:?}, turn {}: TTFT {:.3} s, cached {}/{}, cache {:.2} MiB",
                    turn + 1,
                    t.ttft_s,
                    t.cached_tokens,
                    t.prompt_tokens,
                    cache_bytes as f64 / (1 << 20) as f64
                );
                turns.push(
                    json!({"model": name, "kind": kind, "prefix_cache": pc == OnOff::On,
                    "turn": turn + 1, "timing": t, "cache_bytes": cache_bytes}),
                );
            }
            drop(srv);
        }
    }
    let thinking = if a.think_turns > 0 {
        thinking_workload(&a, &all, device)?
    } else {
        vec![]
    };
    let j = json!({"bench": "serve", "device": device_name(device)?, "threads": rayon::current_num_threads(),
        "ignore_eos": a.ignore_eos,
        "gen_tokens": a.gen_tokens, "max_batched_tokens": a.max_batched_tokens,
        "think_tokens": a.think_tokens,
        "hit_rate": rows, "multi_turn": turns, "thinking": thinking});
    std::fs::write(
        a.out.join("bench-serve.json"),
        serde_json::to_string_pretty(&j)?,
    )?;
    std::fs::write(a.out.join("bench-serve.md"), markdown(&j))?;
    plot(&a.out, &j)?;
    println!("{}", serde_json::to_string_pretty(&j)?);
    eprintln!("wrote {}/bench-serve.{{json,md}}", a.out.display());
    Ok(())
}

/// A ChatML template whose generation prompt opens a thinking block, as MiniMax-M2's does
/// (`]~b]ai\n<think>\n`): the model writes its reasoning straight away.
const THINKING_CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}";

/// The interleaved-thinking workload: for each model, history policy and prefix-cache setting,
/// `think_turns` turns in which every reply (`think_tokens` tokens, greedy, stop tokens honoured)
/// is sent back as the client received it: content (`<think>`… appended) under `keep`,
/// content + reasoning_content under `strip`.
fn thinking_workload(
    a: &ServeBenchArgs,
    all: &[Arc<engine::ServeModel>],
    device: tensor::Device,
) -> Result<Vec<Value>> {
    let mut out = vec![];
    for base in all {
        let name = base.name.clone();
        let mut m = engine::ServeModel {
            name: name.clone(),
            model: base.model.clone_model(),
            tokenizer: base.tokenizer.clone(),
            template: base.template.clone(),
            context: base.context,
        };
        let (bos, eos) = m
            .template
            .as_ref()
            .map_or((String::new(), String::new()), |t| {
                (t.bos_token.clone(), t.eos_token.clone())
            });
        m.template = Some(model::ChatTemplate::new(THINKING_CHATML, &bos, &eos)?);
        let kind = model_kind(&m);
        let m = Arc::new(m);
        for policy in [model::ThinkHistory::Keep, model::ThinkHistory::Strip] {
            for &pc in &a.prefix_cache {
                let srv = start(m.clone(), a, device, pc, Some(policy))?;
                let chat = format!("{}/v1/chat/completions", srv.url);
                let mut msgs = vec![json!({"role": "system", "content": filler(120, "think-sys")})];
                for turn in 0..a.think_turns {
                    msgs.push(json!({"role": "user", "content": format!("{} What follows from note {turn}?", filler(32, &format!("q{turn}-")))}));
                    let body = json!({"messages": msgs, "max_tokens": a.think_tokens, "temperature": 0,
                        "stream": true, "stream_options": {"include_usage": true}});
                    let t = stream(&chat, &body)?;
                    msgs.push(reply_message(&chat, &body)?);
                    let policy_name = format!("{policy:?}").to_lowercase();
                    eprintln!(
                        "thinking: {name} ({kind}), history {policy_name}, prefix cache {pc:?}, turn {}: TTFT {:.3} s, cached {}/{}",
                        turn + 1, t.ttft_s, t.cached_tokens, t.prompt_tokens
                    );
                    out.push(
                        json!({"model": name, "kind": kind, "think_history": policy_name,
                        "prefix_cache": pc == OnOff::On, "turn": turn + 1, "timing": t}),
                    );
                }
            }
        }
    }
    Ok(out)
}

/// "fa" for an all-full-attention model, else "hybrid".
fn model_kind(m: &engine::ServeModel) -> &'static str {
    if m.model
        .blocks
        .iter()
        .all(|b| matches!(&b.mixer, model::hybrid::Mixer::Attention(x) if x.cfg.window.is_none()))
    {
        "fa"
    } else {
        "hybrid"
    }
}

/// DIR/ttft_vs_hit_rate.png (prefix cache on: a curve per model and context) and
/// DIR/ttft_per_turn.png (a curve per model and cache setting).
fn plot(dir: &std::path::Path, j: &Value) -> Result<()> {
    use std::collections::BTreeMap;
    let mut by: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in j["hit_rate"].as_array().into_iter().flatten() {
        if r["prefix_cache"] != json!(true) {
            continue;
        }
        let k = format!(
            "{} ({}), ~{} tokens",
            r["model"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            r["context"]
        );
        by.entry(k).or_default().push((
            r["hit_rate"].as_f64().unwrap_or(0.0),
            r["timing"]["ttft_s"].as_f64().unwrap_or(0.0),
        ));
    }
    let curves: Vec<(String, Vec<(f64, f64)>)> = by.into_iter().collect();
    super::convert_plots::lines(
        &dir.join("ttft_vs_hit_rate.png"),
        "Time to first token against prefix hit rate (prefix cache on)",
        (
            "share of the prompt shared with earlier prompts",
            "TTFT (s)",
        ),
        &curves,
    )?;
    super::convert_plots::lines(
        &dir.join("ttft_per_turn.png"),
        "Multi-turn chat: time to first token per turn",
        ("turn", "TTFT (s)"),
        &ttft_per_turn(&j["multi_turn"], false),
    )?;
    if j["thinking"].as_array().is_none_or(|r| r.is_empty()) {
        return Ok(());
    }
    super::convert_plots::lines(
        &dir.join("ttft_per_turn_thinking.png"),
        "Interleaved thinking: time to first token per turn",
        ("turn", "TTFT (s)"),
        &ttft_per_turn(&j["thinking"], true),
    )
}

/// (turn, TTFT) curves of per-turn rows, one per model, cache setting (and thinking policy).
fn ttft_per_turn(rows: &Value, thinking: bool) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut by: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for r in rows.as_array().into_iter().flatten() {
        let policy = if thinking {
            format!(", {} thinking", r["think_history"].as_str().unwrap_or(""))
        } else {
            String::new()
        };
        let cache = if r["prefix_cache"] == json!(true) {
            "on"
        } else {
            "off"
        };
        let k = format!(
            "{} ({}){policy}, cache {cache}",
            r["model"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
        );
        by.entry(k).or_default().push((
            r["turn"].as_f64().unwrap_or(0.0),
            r["timing"]["ttft_s"].as_f64().unwrap_or(0.0),
        ));
    }
    by.into_iter().collect()
}

fn markdown(j: &Value) -> String {
    let mut s = format!(
        "# hybrid bench serve\n\n{} (engine host: {} threads); {} generated tokens per request{}; streaming; times in seconds.\n\n## Hit rate x context\n\n| model | kind | prefix cache | context | hit rate | prompt tokens | cached | TTFT | TPOT | e2e |\n|---|---|---|---|---|---|---|---|---|---|\n",
        j["device"].as_str().unwrap_or("?"),
        j["threads"],
        j["gen_tokens"],
        if j["ignore_eos"] == json!(true) {
            " (end-of-sequence ignored)"
        } else {
            ""
        }
    );
    for r in j["hit_rate"].as_array().into_iter().flatten() {
        let t = &r["timing"];
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.4} | {:.3} |\n",
            r["model"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            r["prefix_cache"],
            r["context"],
            r["hit_rate"],
            t["prompt_tokens"],
            t["cached_tokens"],
            t["ttft_s"].as_f64().unwrap_or(0.0),
            t["tpot_s"].as_f64().unwrap_or(0.0),
            t["e2e_s"].as_f64().unwrap_or(0.0),
        ));
    }
    s.push_str(&speedups(j));
    s.push_str("\n## Multi-turn chat (append-only history): TTFT per turn\n\n| model | kind | prefix cache | turn | prompt tokens | cached | TTFT |\n|---|---|---|---|---|---|---|\n");
    for r in j["multi_turn"].as_array().into_iter().flatten() {
        let t = &r["timing"];
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.3} |\n",
            r["model"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            r["prefix_cache"],
            r["turn"],
            t["prompt_tokens"],
            t["cached_tokens"],
            t["ttft_s"].as_f64().unwrap_or(0.0),
        ));
    }
    let rows = j["thinking"].as_array().cloned().unwrap_or_default();
    if !rows.is_empty() {
        s.push_str(&format!("\n## Interleaved thinking: TTFT per turn\n\nThe generation prompt opens `<think>`; each reply ({} tokens) is sent back as received; `keep` renders every earlier `<think>` block, `strip` drops them.\n\n| model | kind | think history | prefix cache | turn | prompt tokens | cached | TTFT |\n|---|---|---|---|---|---|---|---|\n", j["think_tokens"]));
        for r in &rows {
            let t = &r["timing"];
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {:.3} |\n",
                r["model"].as_str().unwrap_or(""),
                r["kind"].as_str().unwrap_or(""),
                r["think_history"].as_str().unwrap_or(""),
                r["prefix_cache"],
                r["turn"],
                t["prompt_tokens"],
                t["cached_tokens"],
                t["ttft_s"].as_f64().unwrap_or(0.0),
            ));
        }
    }
    s
}

/// The headline: each hybrid's speedup over the FA model in the same cell (context, hit rate,
/// cache setting), as FA time / hybrid time for TTFT and for the whole request.
fn speedups(j: &Value) -> String {
    let rows = j["hit_rate"].as_array().cloned().unwrap_or_default();
    let key = |r: &Value| {
        (
            r["prefix_cache"].clone(),
            r["context"].clone(),
            r["hit_rate"].clone(),
        )
    };
    let mut s = String::new();
    for h in rows.iter().filter(|r| r["kind"] == json!("hybrid")) {
        let Some(f) = rows
            .iter()
            .find(|r| r["kind"] == json!("fa") && key(r) == key(h))
        else {
            continue;
        };
        if s.is_empty() {
            s.push_str("\n## Hybrid speedup over the FA model (FA time / hybrid time)\n\n| hybrid | FA model | prefix cache | context | hit rate | TTFT speedup | e2e speedup |\n|---|---|---|---|---|---|---|\n");
        }
        let ratio = |k: &str| {
            f["timing"][k].as_f64().unwrap_or(0.0)
                / h["timing"][k].as_f64().unwrap_or(1.0).max(1e-9)
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.2}x | {:.2}x |\n",
            h["model"].as_str().unwrap_or(""),
            f["model"].as_str().unwrap_or(""),
            h["prefix_cache"],
            h["context"],
            h["hit_rate"],
            ratio("ttft_s"),
            ratio("e2e_s"),
        ));
    }
    s
}
