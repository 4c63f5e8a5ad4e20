//! `hybrid cost`: where FA, hybrids and Delethink win, from configs alone, on a machine
//! profile calibrated by this project's H200 runs (crates/cost). Writes DIR/cost.md,
//! DIR/cost.json and four plots; `hybrid bench cost-profile` writes a profile from new runs.
use anyhow::{bail, Context, Result};
use clap::Args;
use cost::arch::{self, Arch};
use cost::time::{decode_step_s, max_concurrency, Profile};
use cost::workload::{self, Delethink, Turns};
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// The profile calibrated from the committed H200 runs (`hybrid bench cost-profile`).
const H200_PROFILE: &str = include_str!("../../../../bench/cost-profile-h200.json");

#[derive(Args, Debug)]
pub struct CostArgs {
    /// Models: presets (see --list) or config.json files; default: every preset.
    #[arg(long)]
    pub model: Vec<String>,
    /// FA → hybrid pairs to compare, as `FA:HYBRID` (names of --model entries or presets);
    /// default: the presets' pairs.
    #[arg(long)]
    pub pair: Vec<String>,
    /// A machine profile (JSON from `hybrid bench cost-profile`); default: the H200 profile.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Contexts of the speed tables, tokens.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "4096,32768,131072,1048576"
    )]
    pub contexts: Vec<usize>,
    /// Single-shot reasoning: prompt tokens and thinking lengths.
    #[arg(long, default_value_t = 2048)]
    pub prompt: usize,
    #[arg(long, value_delimiter = ',', default_value = "16384,65536,131072")]
    pub think: Vec<usize>,
    /// Delethink chunk C and carryover m.
    #[arg(long, default_value = "8192,4096")]
    pub delethink: String,
    /// Multi-turn interleaved thinking: turns, and tokens per turn of the user, the thinking
    /// (kept in the history) and the answer, after a system prompt.
    #[arg(long, default_value_t = 20)]
    pub turns: usize,
    #[arg(long, default_value_t = 4000)]
    pub system: usize,
    #[arg(long, default_value_t = 500)]
    pub user: usize,
    #[arg(long, default_value_t = 12000)]
    pub think_per_turn: usize,
    #[arg(long, default_value_t = 500)]
    pub answer: usize,
    /// Strip each turn's thinking from the history (Qwen3 style) instead of keeping it
    /// (MiniMax-M2's interleaved thinking).
    #[arg(long)]
    pub strip_think: bool,
    /// Requests of the shared-system-prompt workload.
    #[arg(long, default_value_t = 64)]
    pub shared_requests: usize,
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,0.9,0.99,1")]
    pub hit_rates: Vec<f64>,
    /// Which engine's costs: `ours` (the profile as measured: our kernels' launches, ~0.1 ms a
    /// layer, and our batch-1 decode attention reading keys/values at ~0.26 TB/s) or `tuned`
    /// (a production engine: fixed costs a tenth, keys/values read at the streaming rate, as
    /// CUDA graphs and FlashDecoding-class kernels do).
    #[arg(long, value_enum, default_value_t = EngineCosts::Ours)]
    pub engine: EngineCosts,
    /// List the presets and stop.
    #[arg(long)]
    pub list: bool,
    #[arg(long, default_value = "out/cost")]
    pub out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineCosts {
    Ours,
    Tuned,
}

#[derive(Args, Debug)]
pub struct CostProfileArgs {
    /// `scripts/gpu-check run`'s JSON (kernel benchmarks).
    #[arg(long, default_value = "bench/gpu-check-2026-11-30.json")]
    pub gpu_check: PathBuf,
    /// `hybrid bench context` JSON (SmolLM2 and a hybrid layout at 4K and 32K).
    #[arg(long, default_value = "bench/context-cuda-2026-11-29.json")]
    pub context: PathBuf,
    /// `scripts/gpu-model-check` JSON (SmolLM2's batch-1 prefill).
    #[arg(long, default_value = "bench/gpu-model-2026-11-30.json")]
    pub gpu_model: PathBuf,
    #[arg(long, default_value = "bench/cost-profile-h200.json")]
    pub out: PathBuf,
}

pub fn write_profile(a: CostProfileArgs) -> Result<()> {
    let p = cost::calibrate::calibrate(&a.gpu_check, &a.context, &a.gpu_model)?;
    std::fs::write(&a.out, serde_json::to_string_pretty(&p)? + "\n")
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    println!("{}", serde_json::to_string_pretty(&p)?);
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

/// The presets' FA → hybrid pairs.
const PAIRS: &[(&str, &str)] = &[
    ("minimax-m2", "m2-hybrid"),
    ("kimi-mla-48b", "kimi-linear-48b"),
    ("qwen3-1.7b", "jet-nemotron-2b"),
    ("smollm2-135m", "smollm2-hybrid"),
];

fn load(spec: &str) -> Result<Arch> {
    let p = Path::new(spec);
    if p.extension().is_some_and(|e| e == "json") || p.is_dir() {
        let file = if p.is_dir() {
            p.join("config.json")
        } else {
            p.to_path_buf()
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", file.display()))?;
        return arch::from_config(&v, spec);
    }
    arch::preset(spec)
}

/// GPUs a model needs: its weights in at most 80% of each GPU's memory, a power of two.
fn gpus_for(a: &Arch, p: &Profile) -> usize {
    let need = a.total_params() as f64 * a.dtype_bytes as f64 / (0.8 * p.memory_bytes);
    (need.ceil().max(1.0) as usize).next_power_of_two()
}

fn fmt_ctx(c: usize) -> String {
    if c >= 1 << 20 && c.is_multiple_of(1 << 20) {
        format!("{}M", c >> 20)
    } else {
        format!("{}K", c / 1024)
    }
}

pub fn run(a: CostArgs) -> Result<()> {
    if a.list {
        for (n, what) in arch::PRESETS {
            println!("{n:18} {what}");
        }
        return Ok(());
    }
    let base: Profile = match &a.profile {
        Some(f) => serde_json::from_str(
            &std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
        )
        .with_context(|| format!("{} is not a cost profile", f.display()))?,
        None => serde_json::from_str(H200_PROFILE).context("the built-in profile")?,
    };
    let mut base = base;
    if a.engine == EngineCosts::Tuned {
        for v in base
            .layer_overhead_s
            .values_mut()
            .chain(base.prefill_overhead_s.values_mut())
        {
            *v *= 0.1;
        }
        base.decode_kv_bytes_per_s = base.stream_bytes_per_s;
        base.sources.push(
            "--engine tuned: fixed per-layer costs × 0.1, keys/values read at the streaming rate"
                .into(),
        );
    }
    let (c, m) = a
        .delethink
        .split_once(',')
        .and_then(|(c, m)| {
            Some((
                c.trim().parse::<usize>().ok()?,
                m.trim().parse::<usize>().ok()?,
            ))
        })
        .context("--delethink takes C,m (chunk and carryover tokens), e.g. 8192,4096")?;
    if m >= c || c == 0 {
        bail!("--delethink {c},{m}: the carryover must be shorter than the chunk");
    }
    if a.contexts.is_empty() || a.contexts.contains(&0) || a.turns == 0 {
        bail!("--contexts takes positive token counts and --turns at least 1");
    }
    if a.hit_rates.iter().any(|h| !(0.0..=1.0).contains(h)) {
        bail!("--hit-rates are shares between 0 and 1");
    }
    let dt = Delethink {
        chunk: c,
        carryover: m,
        cached_query: true,
    };
    let names: Vec<String> = if a.model.is_empty() {
        arch::PRESETS.iter().map(|p| p.0.to_string()).collect()
    } else {
        a.model.clone()
    };
    let mut models = vec![];
    for n in &names {
        models.push(load(n).with_context(|| format!("--model {n}"))?);
    }
    let pairs: Vec<(String, String)> = if a.pair.is_empty() {
        PAIRS
            .iter()
            .filter(|(f, h)| names.iter().any(|n| n == f) && names.iter().any(|n| n == h))
            .map(|(f, h)| (f.to_string(), h.to_string()))
            .collect()
    } else {
        a.pair
            .iter()
            .map(|s| {
                s.split_once(':')
                    .map(|(f, h)| (f.to_string(), h.to_string()))
                    .with_context(|| format!("--pair {s}: expected FA:HYBRID"))
            })
            .collect::<Result<_>>()?
    };
    let find = |n: &str| -> Result<Arch> {
        match models.iter().find(|m| m.name == n) {
            Some(m) => Ok(m.clone()),
            None => load(n),
        }
    };
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let mut md = String::new();
    let mut j = json!({"profile": base, "models": [], "pairs": [], "single_shot": [], "multi_turn": [], "shared_prompt": []});
    writeln!(md, "# hybrid cost\n\nMachine profile: {} ({}). Each model runs on the GPUs its bf16 weights need (80% of {:.0} GB each), with ideal tensor parallelism (rates × GPUs, fixed per-layer costs as on one). Times are one request stream (batch 1) unless stated.\n", base.device, base.sources.join("; "), base.memory_bytes / 1e9)?;

    // Models.
    write!(md, "## Models\n\n| model | layers | params (total / active) | GPUs | cache per sequence at 128K |")?;
    for &cx in &a.contexts {
        write!(md, " decode tok/s at {} |", fmt_ctx(cx))?;
    }
    write!(
        md,
        "\n|---|---|---|---|---|{}\n",
        "---|".repeat(a.contexts.len())
    )?;
    for mdl in &models {
        let p = base.with_gpus(gpus_for(mdl, &base));
        let speeds: Vec<f64> = a
            .contexts
            .iter()
            .map(|&cx| 1.0 / decode_step_s(mdl, &p, 1, cx))
            .collect();
        write!(
            md,
            "| {} | {} | {:.2}B / {:.2}B | {} | {:.1} MiB |",
            mdl.name,
            mdl.summary(),
            mdl.total_params() as f64 / 1e9,
            mdl.active_params() as f64 / 1e9,
            p.gpus,
            mdl.cache_bytes(131072) as f64 / (1 << 20) as f64
        )?;
        for s in &speeds {
            write!(md, " {s:.0} |")?;
        }
        md.push('\n');
        j["models"].as_array_mut().expect("array").push(json!({"name": mdl.name, "layers": mdl.summary(),
            "total_params": mdl.total_params(), "active_params": mdl.active_params(), "gpus": p.gpus,
            "cache_bytes_128k": mdl.cache_bytes(131072),
            "decode_tokens_per_s": a.contexts.iter().zip(&speeds).map(|(c, s)| json!({"context": c, "tokens_per_s": s})).collect::<Vec<_>>()}));
    }

    // Pairs: structural ratios.
    writeln!(md, "\n## FA model against its hybrid\n\nKV reduction is the hybrid's cache against the FA model's at the same context. Decode speedup at batch 1 is one stream's step time; at max batch, each side runs as many sequences of that context as fit next to its weights (the memory-bound regime where the cache size decides).\n\n| FA model | hybrid | context | cache (FA → hybrid) | KV reduction | decode speedup, batch 1 | throughput speedup at max batch (batches) |\n|---|---|---|---|---|---|---|")?;
    let mut speed_curves = vec![];
    let mut mem_curves = vec![];
    for (f, h) in &pairs {
        let (fa, hy) = (find(f)?, find(h)?);
        let g = gpus_for(&fa, &base).max(gpus_for(&hy, &base));
        let p = base.with_gpus(g);
        let mut curve = vec![];
        let mut ctxs = a.contexts.clone();
        if !ctxs.contains(&65536) {
            ctxs.push(65536);
            ctxs.sort();
        }
        for &cx in &ctxs {
            let (cf, ch) = (fa.cache_bytes(cx) as f64, hy.cache_bytes(cx) as f64);
            let s1 = decode_step_s(&fa, &p, 1, cx) / decode_step_s(&hy, &p, 1, cx);
            let (bf, bh) = (max_concurrency(&fa, &p, cx), max_concurrency(&hy, &p, cx));
            let tp = |m: &Arch, b: usize| {
                if b == 0 {
                    0.0
                } else {
                    b as f64 / decode_step_s(m, &p, b, cx)
                }
            };
            let smax = if bf == 0 {
                f64::INFINITY
            } else {
                tp(&hy, bh) / tp(&fa, bf)
            };
            writeln!(
                md,
                "| {f} | {h} | {} | {:.1} → {:.1} MiB | {:.1}% | {s1:.2}x | {} ({bf} vs {bh}) |",
                fmt_ctx(cx),
                cf / (1 << 20) as f64,
                ch / (1 << 20) as f64,
                100.0 * (1.0 - ch / cf),
                if smax.is_finite() {
                    format!("{smax:.1}x")
                } else {
                    "FA does not fit".into()
                }
            )?;
            curve.push(((cx as f64 / 1024.0).log2(), s1));
            j["pairs"].as_array_mut().expect("array").push(json!({"fa": f, "hybrid": h, "context": cx, "gpus": g,
                "cache_bytes": [cf, ch], "kv_reduction": 1.0 - ch / cf, "decode_speedup_batch1": s1,
                "max_batch": [bf, bh], "throughput_speedup_max_batch": if smax.is_finite() { json!(smax) } else { Value::Null }}));
        }
        speed_curves.push((format!("{h} vs {f}"), curve));
        let cx = 131072;
        for m in [&fa, &hy] {
            let per = m.cache_bytes(cx) as f64 / 1e9;
            let w = m.total_params() as f64 * m.dtype_bytes as f64 / 1e9;
            mem_curves.push((
                format!("{} ({g} GPUs)", m.name),
                (0..=8)
                    .map(|i| {
                        let n = (1usize << i) as f64;
                        (n, w + n * per)
                    })
                    .collect::<Vec<_>>(),
            ));
        }
    }

    // The published structural ratios, from the presets alone.
    if names.iter().any(|n| n == "kimi-linear-48b") || names.iter().any(|n| n == "jet-nemotron-2b")
    {
        writeln!(md, "\n## Published structural ratios, from configs alone\n")?;
        let kv_only = |m: &Arch, n: usize| -> f64 {
            m.layers
                .iter()
                .filter(|l| l.mixer.kind() != "linear")
                .map(|l| l.mixer.cache_bytes(n, m.dtype_bytes) as f64)
                .sum()
        };
        if let (Ok(k), Ok(mla)) = (find("kimi-linear-48b"), find("kimi-mla-48b")) {
            let n = 1 << 20;
            let p = base.with_gpus(gpus_for(&k, &base));
            writeln!(md, "- **Kimi Linear** (20 KDA + 7 MLA) against all-MLA at 1M context: keys/values {:.1}% smaller (published: up to 75%; 7 of 27 layers keep MLA's cache, so 74.1%); counting the KDA states too, {:.1}%. Decode at batch 1, 1M: {:.1}x (published: 6.3x TPOT, in a setting our sources do not state). The model departs here: at batch 1 every step also reads the active weights (about 6.5 GB for 3B active parameters), which dilutes the gain, as do the fixed per-layer costs with `--engine ours`",
                100.0 * (1.0 - kv_only(&k, n) / kv_only(&mla, n)),
                100.0 * (1.0 - k.cache_bytes(n) as f64 / mla.cache_bytes(n) as f64),
                decode_step_s(&mla, &p, 1, n) / decode_step_s(&k, &p, 1, n))?;
        }
        if let (Ok(jn), Ok(q)) = (find("jet-nemotron-2b"), find("qwen3-1.7b")) {
            let n = 65536;
            let p = base.with_gpus(1);
            let (bq, bj) = (max_concurrency(&q, &p, n), max_concurrency(&jn, &p, n));
            let tp = |m: &Arch, b: usize| b as f64 / decode_step_s(m, &p, b, n);
            writeln!(md, "- **Jet-Nemotron-2B** against Qwen3-1.7B at 64K: keys/values {:.1}x smaller (the paper's bound: ~56x); counting the JetBlock states (f32, 24 layers) the caches differ {:.1}x. Generation throughput at the largest batch that fits one H200 ({bq} vs {bj} sequences): {:.1}x (the paper measured 47x on H100). Departures: the recurrent states the bound leaves out, and our fixed per-layer cost at the hybrid's large batch.",
                kv_only(&q, n) / kv_only(&jn, n), q.cache_bytes(n) as f64 / jn.cache_bytes(n) as f64, tp(&jn, bj) / tp(&q, bq))?;
        }
    }

    // The article's question, on the first pair (default M2).
    if let Some((f, h)) = pairs.first() {
        let (fa, hy) = (find(f)?, find(h)?);
        let p = base.with_gpus(gpus_for(&fa, &base).max(gpus_for(&hy, &base)));
        writeln!(md, "\n## Single-shot reasoning: {f}, {f} + Delethink (C = {c}, m = {m}), {h}\n\nA {}-token prompt, then the thinking; seconds for the whole request on {} GPUs.\n\n| thinking tokens | FA | FA + Delethink | hybrid | hybrid + Delethink | fastest |\n|---|---|---|---|---|---|", a.prompt, p.gpus)?;
        for &n in &a.think {
            let r = [
                workload::single_shot(&fa, &p, a.prompt, n),
                workload::single_shot_delethink(&fa, &p, a.prompt, n, dt),
                workload::single_shot(&hy, &p, a.prompt, n),
                workload::single_shot_delethink(&hy, &p, a.prompt, n, dt),
            ];
            let names = ["FA", "FA + Delethink", "hybrid", "hybrid + Delethink"];
            let best = (0..4).min_by(|&x, &y| r[x].total_cmp(&r[y])).unwrap_or(0);
            writeln!(
                md,
                "| {n} | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {} |",
                r[0], r[1], r[2], r[3], names[best]
            )?;
            j["single_shot"].as_array_mut().expect("array").push(json!({"think": n, "fa": r[0], "fa_delethink": r[1], "hybrid": r[2], "hybrid_delethink": r[3]}));
        }
        writeln!(md, "\n## Multi-turn interleaved thinking: {f} + Delethink against {h}\n\nSystem prompt {}, then per turn: user {}, thinking {} ({}), answer {}. A share h of the history is served from the prefix cache. The crossover is the first turn at which the hybrid's cumulative time is below FA + Delethink's.\n\n| hit rate h | FA total | FA + Delethink total | hybrid total | crossover vs FA + Delethink (turn, context) | crossover vs FA |\n|---|---|---|---|---|---|", a.system, a.user, a.think_per_turn, if a.strip_think { "stripped from the history, Qwen3 style" } else { "kept in the history, M2 style" }, a.answer)?;
        let mut cum_curves = vec![];
        let mut hit_curve = vec![];
        for &hr in &a.hit_rates {
            let w = Turns {
                system: a.system,
                user: a.user,
                think: a.think_per_turn,
                answer: a.answer,
                hit: hr,
                keep_think: !a.strip_think,
            };
            let rf = workload::multi_turn(&fa, &p, a.turns, w, None);
            let rd = workload::multi_turn(&fa, &p, a.turns, w, Some(dt));
            let rh = workload::multi_turn(&hy, &p, a.turns, w, None);
            let total = |r: &[(f64, usize)]| r.iter().map(|x| x.0).sum::<f64>();
            let cross = |x| match workload::crossover(x, &rh) {
                Some((t, cx)) => format!("turn {t} ({} tokens)", cx),
                None => format!("not within {} turns", a.turns),
            };
            writeln!(
                md,
                "| {hr} | {:.0} s | {:.0} s | {:.0} s | {} | {} |",
                total(&rf),
                total(&rd),
                total(&rh),
                cross(&rd),
                cross(&rf)
            )?;
            hit_curve.push((hr, total(&rf) / total(&rh)));
            if hr == 0.0 || hr == 1.0 {
                for (name, r) in [("FA", &rf), ("FA + Delethink", &rd), ("hybrid", &rh)] {
                    let mut acc = 0.0;
                    cum_curves.push((
                        format!("{name}, h = {hr}"),
                        r.iter()
                            .enumerate()
                            .map(|(i, x)| {
                                acc += x.0;
                                ((i + 1) as f64, acc)
                            })
                            .collect::<Vec<_>>(),
                    ));
                }
            }
            j["multi_turn"].as_array_mut().expect("array").push(json!({"hit_rate": hr, "fa": rf, "fa_delethink": rd, "hybrid": rh,
                "crossover_vs_delethink": workload::crossover(&rd, &rh), "crossover_vs_fa": workload::crossover(&rf, &rh)}));
        }
        writeln!(md, "\n## Shared system prompt: {f} against {h}\n\n{} requests share a {}-token system prompt; each adds {} user tokens and decodes {}. Seconds per request after the first (one stream), and for all of them.\n\n| model | prefix cache | per request | all requests |\n|---|---|---|---|", a.shared_requests, a.system, a.user, a.answer)?;
        for (name, mdl) in [(f, &fa), (h, &hy)] {
            for cached in [false, true] {
                // The first request always computes the system prompt.
                let first = workload::shared_prompt(mdl, &p, a.system, a.user, a.answer, false);
                let rest = workload::shared_prompt(mdl, &p, a.system, a.user, a.answer, cached);
                let all = first + rest * a.shared_requests.saturating_sub(1) as f64;
                writeln!(
                    md,
                    "| {name} | {} | {rest:.2} s | {all:.0} s |",
                    if cached { "on" } else { "off" }
                )?;
                if let Some(v) = j["shared_prompt"].as_array_mut() {
                    v.push(json!({"model": name, "prefix_cache": cached, "per_request_s": rest, "all_s": all}));
                }
            }
        }
        super::convert_plots::lines(
            &a.out.join("cumulative_cost_vs_turn.png"),
            &format!("Interleaved thinking: cumulative time, {f} vs {h}"),
            ("turn", "cumulative seconds"),
            &cum_curves,
        )?;
        super::convert_plots::lines(
            &a.out.join("speedup_vs_hit_rate.png"),
            &format!(
                "{} turns: FA time / hybrid time against prefix hit rate",
                a.turns
            ),
            ("share of the history from the prefix cache", "speedup"),
            &[(format!("{h} vs {f}"), hit_curve)],
        )?;
    }
    super::convert_plots::lines(
        &a.out.join("speedup_vs_context.png"),
        "Decode speedup of each hybrid over its FA model (batch 1)",
        ("context, log2(K tokens)", "speedup"),
        &speed_curves,
    )?;
    super::convert_plots::lines(
        &a.out.join("memory_vs_concurrency.png"),
        "Weights + caches at 128K context against concurrent sequences",
        ("sequences", "GB"),
        &mem_curves,
    )?;

    // Validation, where this project's measurements are at hand.
    let bench = Path::new("bench");
    if a.profile.is_none()
        && a.engine == EngineCosts::Ours
        && bench.join("context-cuda-2026-11-29.json").exists()
    {
        let checks = cost::calibrate::validate(
            &base,
            &bench.join("context-cuda-2026-11-29.json"),
            Some(&bench.join("gpu-model-2026-11-30.json")),
            Some(&bench.join("serve-gpu-2026-11-30/bench-serve.json")),
        )?;
        writeln!(md, "\n## The model against the H200 runs\n\nSmolLM2 and its hybrids, measured (bench/) against predicted; `fitted` rows fixed the profile, the rest are held out. Departures say why the model is not expected to match.\n\n| run | measured | predicted | error | |\n|---|---|---|---|---|")?;
        for ch in &checks {
            let note = match (&ch.departure, ch.fitted) {
                (_, true) => "fitted".to_string(),
                (Some(d), _) => format!("departure: {d}"),
                (None, false) => "held out".to_string(),
            };
            writeln!(
                md,
                "| {} | {:.3} {u} | {:.3} {u} | {:+.1}% | {note} |",
                ch.what,
                ch.measured,
                ch.predicted,
                ch.error * 100.0,
                u = ch.unit
            )?;
        }
        j["validation"] = serde_json::to_value(&checks)?;
    }
    std::fs::write(a.out.join("cost.md"), &md)?;
    std::fs::write(a.out.join("cost.json"), serde_json::to_string_pretty(&j)?)?;
    print!("{md}");
    eprintln!("wrote {}/cost.{{md,json}} and 4 plots", a.out.display());
    Ok(())
}
