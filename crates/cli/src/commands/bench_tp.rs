//! `hybrid bench tp`: tensor parallelism on GPUs.
//! - Identity: each `--model` served by the engine on one GPU and split over `--tp` GPUs, the
//!   same greedy requests (the chat questions and a copy prompt of `hybrid bench spec`, in the
//!   model's chat template) on both; the replies are compared token by token, with cuBLAS
//!   (the default) and with split-invariant arithmetic (identical by construction).
//! - Throughput: random weights of a hybrid large enough for the split to matter (`--random`
//!   presets, Qwen3-1.7B and Qwen3-8B dimensions with every fourth layer full attention and
//!   the rest Gated DeltaNet), a prompt prefilled for B sequences, then decode steps timed on
//!   one GPU and on `--tp`; tokens/s, speedup and scaling efficiency (speedup / GPUs).
//!
//! Writes DIR/bench-tp.json and DIR/bench-tp.md.
use super::bench_spec::{prompts, run_one};
use anyhow::{bail, Context, Result};
use clap::Args;
use engine::{Engine, EngineConfig, ServeModel};
use model::hybrid::gpu_tp::GpuTp;
use model::hybrid::{HybridConfig, HybridModel};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct TpBenchArgs {
    /// Models whose greedy replies are compared at one GPU and at --tp (GGUF or hybrid folder).
    #[arg(long)]
    pub model: Vec<PathBuf>,
    /// Random-weight hybrids to time: 2b, 8b (none: skip).
    #[arg(long, value_delimiter = ',', default_value = "2b")]
    pub random: Vec<String>,
    /// GPUs to split over.
    #[arg(long, default_value_t = 2)]
    pub tp: usize,
    /// The first GPU (the group is it and the next ones).
    #[arg(long, default_value_t = 0)]
    pub first_gpu: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub batch: Vec<usize>,
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Decode steps timed (after 3 warm-up steps).
    #[arg(long, default_value_t = 32)]
    pub steps: usize,
    /// Tokens generated per identity request (at most).
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    #[arg(long, default_value = "out/bench-tp")]
    pub out: PathBuf,
    /// Also time two whole copies of the model decoding at once, one per GPU, each from its
    /// own thread (no NCCL): whether one process's threads slow each other down.
    #[arg(long)]
    pub contention: bool,
    /// Time the random-weight hybrids with split-invariant arithmetic (what identical replies
    /// at every GPU count cost) instead of cuBLAS.
    #[arg(long)]
    pub split_invariant: bool,
}

/// A hybrid with a preset's dimensions: every fourth layer full attention, the rest GDN.
fn preset(name: &str) -> Result<HybridConfig> {
    // (hidden, layers, heads, kv heads, intermediate)
    let (d, l, h, kv, f) = match name {
        "2b" => (2048, 28, 16, 8, 6144),
        "8b" => (4096, 36, 32, 8, 12288),
        other => bail!("unknown --random preset '{other}' (2b, 8b)"),
    };
    let layout: Vec<&str> = (0..l)
        .map(|i| if i % 4 == 3 { "fa" } else { "gdn" })
        .collect();
    Ok(HybridConfig {
        hidden_size: d,
        intermediate_size: f,
        num_attention_heads: h,
        num_key_value_heads: kv,
        head_dim: 128,
        rope_theta: 1e6,
        max_position_embeddings: 32768,
        sliding_window: None,
        linear_num_key_heads: Some(h / 2),
        linear_num_value_heads: Some(h),
        linear_key_head_dim: Some(128),
        linear_value_head_dim: Some(128),
        linear_gate_rank: 16,
        ..HybridConfig::small(&layout.join(","), 151936)?
    })
}

/// Decode tokens/s of `m` for B sequences after a prompt of `p` tokens, prefill tokens/s,
/// and the share of a decode step the host spends queueing it (near 1: launch-bound).
fn decode_speed(m: &GpuTp, b: usize, p: usize, steps: usize) -> Result<(f64, f64, f64)> {
    let warm = 3;
    // Kernels compile on first use: one throw-away prefill chunk and step first.
    {
        let mut st = m.new_state(b, 65)?;
        m.forward(&vec![1; b * 64], &mut st)?;
        m.forward(&vec![2; b], &mut st)?;
        m.synchronize()?;
    }
    let mut st = m.new_state(b, p + warm + steps)?;
    // Prefill in chunks of at most 2048 rows (the logits of every row are made).
    let chunk = (2048 / b).max(1);
    let t0 = Instant::now();
    let mut done = 0;
    while done < p {
        let t = chunk.min(p - done);
        let toks: Vec<u32> = (0..b * t)
            .map(|i| ((i * 7919 + done) % 151936) as u32)
            .collect();
        m.forward(&toks, &mut st)?;
        done += t;
    }
    m.synchronize()?;
    let prefill = (b * p) as f64 / t0.elapsed().as_secs_f64();
    let step = |st: &mut _, s: usize| -> Result<()> {
        let toks: Vec<u32> = (0..b)
            .map(|i| ((i * 31 + s * 17) % 151936) as u32)
            .collect();
        m.forward(&toks, st)?;
        Ok(())
    };
    for s in 0..warm {
        step(&mut st, s)?;
    }
    m.synchronize()?;
    let t0 = Instant::now();
    let mut queued = 0.0;
    for s in 0..steps {
        let q = Instant::now();
        step(&mut st, warm + s)?;
        queued += q.elapsed().as_secs_f64();
    }
    m.synchronize()?;
    let total = t0.elapsed().as_secs_f64();
    Ok(((b * steps) as f64 / total, prefill, queued / total))
}

fn throughput(name: &str, a: &TpBenchArgs) -> Result<Value> {
    let config = preset(name)?;
    eprintln!("{name}: random weights ...");
    let cpu = HybridModel::init(config, 1)?;
    let params = cpu.n_params();
    let groups = [
        vec![a.first_gpu],
        (a.first_gpu..a.first_gpu + a.tp).collect::<Vec<_>>(),
    ];
    let mut speeds: Vec<Vec<(f64, f64, f64)>> = vec![];
    for devices in &groups {
        let m = GpuTp::new(&cpu, devices)?;
        m.set_split_invariant(a.split_invariant)?;
        let mut row = vec![];
        for &b in &a.batch {
            let (dec, pre, host) = decode_speed(&m, b, a.prompt_tokens, a.steps)?;
            eprintln!(
                "  {name} TP={} B={b}: decode {dec:.0} tok/s (host queueing {:.0}% of a step), prefill {pre:.0} tok/s",
                devices.len(),
                100.0 * host
            );
            row.push((dec, pre, host));
        }
        speeds.push(row);
    }
    let mut contention = Value::Null;
    if a.contention {
        let copies: Vec<GpuTp> = (0..a.tp)
            .map(|i| GpuTp::new(&cpu, &[a.first_gpu + i]))
            .collect::<Result<_>>()?;
        let mut rows = vec![];
        for &b in &a.batch {
            let res: Vec<Result<(f64, f64, f64)>> = std::thread::scope(|s| {
                let hs: Vec<_> = copies
                    .iter()
                    .map(|m| s.spawn(move || decode_speed(m, b, a.prompt_tokens, a.steps)))
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("no panic"))
                    .collect()
            });
            let each: Vec<f64> = res
                .into_iter()
                .map(|r| r.map(|x| x.0))
                .collect::<Result<_>>()?;
            eprintln!(
                "  {name} {} whole copies at once, B={b}: {each:?} tok/s",
                a.tp
            );
            rows.push(json!({"batch": b, "decode_tok_s_each": each}));
        }
        contention = json!(rows);
    }
    let rows: Vec<Value> = a
        .batch
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let (one, n) = (speeds[0][i], speeds[1][i]);
            json!({
                "batch": b,
                "decode_tok_s_tp1": one.0,
                "decode_tok_s_tpn": n.0,
                "decode_speedup": n.0 / one.0,
                "decode_efficiency": n.0 / one.0 / a.tp as f64,
                "prefill_tok_s_tp1": one.1,
                "prefill_tok_s_tpn": n.1,
                "prefill_speedup": n.1 / one.1,
                "host_share_tp1": one.2,
                "host_share_tpn": n.2,
            })
        })
        .collect();
    Ok(json!({
        "preset": name,
        "params": params,
        "hidden": cpu.config.hidden_size,
        "layers": cpu.config.num_hidden_layers,
        "layout": "3 GDN : 1 FA",
        "arithmetic": if a.split_invariant { "split-invariant" } else { "cuBLAS" },
        "rows": rows,
        "concurrent_whole_copies": contention,
    }))
}

fn identity(path: &std::path::Path, a: &TpBenchArgs) -> Result<Vec<Value>> {
    let name = path
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy().into_owned());
    let m = Arc::new(ServeModel::load(path, &name)?);
    let mut ps = prompts(&m, "chat")?;
    ps.push(prompts(&m, "copy")?.remove(0));
    let mut rows = vec![];
    // cuBLAS (the default) and split-invariant arithmetic, each at one GPU and at --tp.
    for invariant in [false, true] {
        let mut replies: Vec<Vec<Vec<u32>>> = vec![];
        let mut decode_tok_s = vec![];
        for tp in [1, a.tp] {
            let cfg = EngineConfig {
                max_num_seqs: 1,
                prefix_cache: false,
                device: tensor::Device::Cuda(a.first_gpu),
                tensor_parallel: tp,
                split_invariant: invariant,
                ..Default::default()
            };
            let e = Engine::start(m.clone(), cfg)?;
            let (mut toks, mut n, mut secs) = (vec![], 0, 0.0);
            for p in &ps {
                let r = run_one(&e, p, a.gen_tokens)?;
                n += r.tokens.len().saturating_sub(1);
                secs += r.decode_s;
                toks.push(r.tokens);
            }
            replies.push(toks);
            decode_tok_s.push(n as f64 / secs.max(1e-9));
        }
        let (one, n) = (&replies[0], &replies[1]);
        let same = one.iter().zip(n).filter(|(x, y)| x == y).count();
        let common: Vec<usize> = one
            .iter()
            .zip(n)
            .map(|(x, y)| x.iter().zip(y).take_while(|(p, q)| p == q).count())
            .collect();
        let mode = if invariant {
            "split-invariant"
        } else {
            "cuBLAS"
        };
        eprintln!(
            "{name} ({mode}): {same} of {} replies identical at TP=1 and TP={}",
            ps.len(),
            a.tp
        );
        rows.push(json!({
            "model": name,
            "arithmetic": mode,
            "requests": ps.len(),
            "identical_requests": same,
            "reply_tokens": one.iter().map(Vec::len).collect::<Vec<_>>(),
            "common_prefix_tokens": common,
            "decode_tok_s_tp1": decode_tok_s[0],
            "decode_tok_s_tpn": decode_tok_s[1],
            "tokens_tp1": one,
            "tokens_tpn": n,
        }));
    }
    Ok(rows)
}

pub fn run(a: TpBenchArgs) -> Result<()> {
    if a.tp < 2 {
        bail!("--tp must be at least 2 (it is compared with one GPU)");
    }
    tensor::cuda::libs::ensure_loaded().map_err(anyhow::Error::msg)?;
    let count = cudarc::driver::CudaContext::device_count()
        .map_err(|e| anyhow::anyhow!("cannot count GPUs: {e:?}"))? as usize;
    if a.first_gpu + a.tp > count {
        bail!(
            "--tp {} from GPU {} needs {} GPUs; this machine has {count}",
            a.tp,
            a.first_gpu,
            a.first_gpu + a.tp
        );
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let mut ids = vec![];
    for p in &a.model {
        ids.extend(identity(p, &a)?);
    }
    let mut speeds = vec![];
    for r in a.random.iter().filter(|r| r.as_str() != "none") {
        speeds.push(throughput(r, &a)?);
    }
    let gpu = tensor::cuda::Gpu::open(a.first_gpu)?.name.clone();
    let j = json!({
        "machine": format!("{} x {count}", gpu),
        "tp": a.tp,
        "prompt_tokens": a.prompt_tokens,
        "steps": a.steps,
        "gen_tokens": a.gen_tokens,
        "identity": ids,
        "throughput": speeds,
    });
    std::fs::write(
        a.out.join("bench-tp.json"),
        serde_json::to_string_pretty(&j)?,
    )?;
    let md = markdown(&j);
    std::fs::write(a.out.join("bench-tp.md"), &md)?;
    println!("{md}");
    Ok(())
}

fn markdown(j: &Value) -> String {
    let tp = j["tp"].as_u64().unwrap_or(2);
    let mut s = format!(
        "# Tensor parallelism: 1 GPU vs {tp} ({})\n\n",
        j["machine"].as_str().unwrap_or("?")
    );
    if let Some(ids) = j["identity"].as_array().filter(|v| !v.is_empty()) {
        s += &format!("## Greedy replies, TP=1 vs TP={tp}\n\n| model | arithmetic | identical replies | tokens per reply | common prefix | decode tok/s TP=1 | TP={tp} |\n|---|---|---|---|---|---|---|\n");
        for r in ids {
            s += &format!(
                "| {} | {} | {} of {} | {} | {} | {:.1} | {:.1} |\n",
                r["model"].as_str().unwrap_or("?"),
                r["arithmetic"].as_str().unwrap_or("?"),
                r["identical_requests"],
                r["requests"],
                r["reply_tokens"],
                r["common_prefix_tokens"],
                r["decode_tok_s_tp1"].as_f64().unwrap_or(0.0),
                r["decode_tok_s_tpn"].as_f64().unwrap_or(0.0)
            );
        }
        s += "\n";
    }
    for p in j["throughput"].as_array().into_iter().flatten() {
        s += &format!(
            "## Random-weight hybrid {} ({:.2}B parameters, {} layers, {}, {}), prompt {} tokens\n\n| batch | decode tok/s TP=1 | TP={tp} | speedup | efficiency | prefill tok/s TP=1 | TP={tp} |\n|---|---|---|---|---|---|---|\n",
            p["preset"].as_str().unwrap_or("?"),
            p["params"].as_f64().unwrap_or(0.0) / 1e9,
            p["layers"],
            p["layout"].as_str().unwrap_or("?"),
            p["arithmetic"].as_str().unwrap_or("cuBLAS"),
            j["prompt_tokens"]
        );
        for r in p["rows"].as_array().into_iter().flatten() {
            let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
            s += &format!(
                "| {} | {:.0} | {:.0} | {:.2}x | {:.0}% | {:.0} | {:.0} |\n",
                r["batch"],
                f("decode_tok_s_tp1"),
                f("decode_tok_s_tpn"),
                f("decode_speedup"),
                100.0 * f("decode_efficiency"),
                f("prefill_tok_s_tp1"),
                f("prefill_tok_s_tpn")
            );
        }
        s += "\n";
    }
    s
}
