//! `hybrid bench decode`: prefill a prompt of N tokens, then time M single-token decode steps
//! (batch 1), and print JSON. The prompt is a fixed English text cut to N tokens so that runs
//! are comparable with scripts/bench-llamacpp.py, which feeds llama.cpp the same token ids.
use super::ModelArgs;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Decode speed at batch 1.
    Decode(DecodeArgs),
    /// One-token decode time of each mixer at several context lengths.
    Step(super::bench_step::StepArgs),
    /// cuBLAS bf16 GEMM throughput on the GPU.
    Gemm(super::device::GemmArgs),
    /// GDN one-token decode step on the GPU.
    GdnStep(super::device::GdnStepArgs),
    /// Causal flash attention forward (and backward) on the GPU.
    Attention(super::bench_attention::AttentionArgs),
    /// The model on the GPU against the CPU under teacher forcing (argmax agreement, KL).
    Agreement(super::bench_agreement::AgreementArgs),
    /// The OpenAI server under workloads (prefix hit rate x context, multi-turn chat): TTFT,
    /// TPOT, latencies; in-process servers on real ports. Markdown + JSON.
    Serve(super::bench_serve::ServeBenchArgs),
    /// Speculative decoding at batch 1: off, prompt lookup and a draft model on copying and
    /// chat workloads; decode speedup, acceptance, identical outputs. Markdown + JSON.
    Spec(super::bench_spec::SpecBenchArgs),
    /// Tensor parallelism: greedy replies at 1 GPU vs N, decode and prefill speed of a
    /// random-weight 2B/8B hybrid at 1 GPU vs N. Markdown + JSON.
    Tp(super::bench_tp::TpBenchArgs),
    /// Memory and time of reasoning traces against their length: plain vs Delethink, FA vs
    /// hybrid. Markdown + JSON + plots.
    Think(super::bench_think::ThinkBenchArgs),
    /// Chunked GDN / KDA / GLA forward on the GPU (prefill and training shapes).
    ChunkLinear(super::bench_linear::ChunkLinearArgs),
    /// Chunked GDN / KDA / GLA forward + backward on the GPU (training shapes).
    ChunkLinearBwd(super::bench_linear_bwd::ChunkLinearBwdArgs),
    /// Decode speed at long contexts, the teacher and hybrid layouts of it side by side.
    Context(super::bench_context::ContextArgs),
    /// A machine profile for `hybrid cost` from the GPU runs' JSON (kernel rates, decode and
    /// prefill points).
    CostProfile(super::cost::CostProfileArgs),
}

#[derive(Args, Clone, Debug)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Timed repetitions (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Sequences decoded together (GPU only; the CPU path is batch 1).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
}

pub const BENCH_TEXT: &str = "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable metal type, oil-based ink and a wooden press adapted from those used to make wine. Before that, books were copied by hand, an expensive and slow process that kept written knowledge in the hands of monasteries, universities and the wealthy. Within fifty years of the first printed Bible, presses operated in more than two hundred European cities, and millions of volumes had been produced. Pamphlets, calendars, scientific treatises and religious tracts spread faster than any authority could control, and historians still argue about how much the press contributed to the Reformation, the scientific revolution and the rise of vernacular languages. What is certain is that the cost of a book fell sharply and literacy rose in the centuries that followed.";

pub fn prompt_ids(m: &model::LoadedModel, n: usize) -> Result<Vec<u32>> {
    let mut ids = vec![];
    while ids.len() < n {
        ids.extend(m.tokenizer.encode(BENCH_TEXT, false)?);
    }
    ids.truncate(n);
    Ok(ids)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(c: BenchCommand) -> Result<()> {
    let a = match c {
        BenchCommand::Decode(a) => a,
        BenchCommand::Step(s) => return super::bench_step::run(s),
        BenchCommand::Gemm(g) => return super::device::bench_gemm(g),
        BenchCommand::GdnStep(g) => return super::device::bench_gdn_step(g),
        BenchCommand::Tp(t) => return super::bench_tp::run(t),
        BenchCommand::Attention(g) => return super::bench_attention::run(g),
        BenchCommand::ChunkLinear(g) => return super::bench_linear::run(g),
        BenchCommand::ChunkLinearBwd(g) => return super::bench_linear_bwd::run(g),
        BenchCommand::Agreement(g) => return super::bench_agreement::run(g),
        BenchCommand::Context(g) => return super::bench_context::run(g),
        BenchCommand::CostProfile(g) => return super::cost::write_profile(g),
        BenchCommand::Serve(g) => return super::bench_serve::run(g),
        BenchCommand::Spec(g) => return super::bench_spec::run(g),
        BenchCommand::Think(g) => return super::bench_think::run(g),
    };
    if a.reps == 0 || a.gen_tokens == 0 || a.prompt_tokens == 0 {
        bail!("--prompt-tokens, --gen-tokens and --reps must be at least 1");
    }
    let device = a.model.device()?;
    let m = a.model.load()?;
    let prompt = prompt_ids(&m, a.prompt_tokens)?;
    if let tensor::Device::Cuda(n) = device {
        return bench_decode_gpu(&a, &m, &prompt, n);
    }
    if a.batch != [1] {
        bail!("the CPU decode benchmark runs batch 1 only (use --device cuda for larger batches)");
    }
    let (mut pre, mut dec) = (vec![], vec![]);
    for rep in 0..=a.reps {
        let mut cache = m.model.new_cache();
        let t0 = Instant::now();
        let mut logits = m.model.forward(&prompt, &mut cache, false)?;
        let tp = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..a.gen_tokens {
            let next = model::sampling::argmax(&logits);
            logits = m.model.forward(&[next], &mut cache, false)?;
        }
        let td = t1.elapsed().as_secs_f64();
        if rep > 0 {
            pre.push(a.prompt_tokens as f64 / tp);
            dec.push(a.gen_tokens as f64 / td);
        }
    }
    let j = serde_json::json!({
        "bench": "decode",
        "engine": "hybrid",
        "model": a.model.model_path()?.display().to_string(),
        "threads": tensor::num_threads(),
        "batch": 1,
        "prompt_tokens": a.prompt_tokens,
        "gen_tokens": a.gen_tokens,
        "reps": a.reps,
        "prefill_tokens_per_s": median(pre),
        "decode_tokens_per_s": median(dec),
        "prompt_ids": prompt,
    });
    println!("{j}");
    Ok(())
}

/// Median prefill and decode tokens/s of one GPU model at batch `b`: B copies of the prompt
/// prefilled together, then greedy decode steps of all B sequences (argmax on the device).
/// `step(tokens, cache, rows)` runs the tokens and returns the argmax of each of the `rows`
/// logits rows it produced.
fn time_gpu_decode<C>(
    a: &DecodeArgs,
    prompt: &[u32],
    b: usize,
    sync: impl Fn() -> Result<()>,
    new_cache: impl Fn(usize) -> Result<C>,
    step: impl Fn(&[u32], &mut C, usize) -> Result<Vec<u32>>,
) -> Result<(f64, f64)> {
    let (mut pre, mut dec) = (vec![], vec![]);
    for rep in 0..=a.reps {
        let mut cache = new_cache(prompt.len() + a.gen_tokens + 1)?;
        let toks: Vec<u32> = (0..b).flat_map(|_| prompt.iter().copied()).collect();
        sync()?;
        let t0 = Instant::now();
        let all = step(&toks, &mut cache, b * prompt.len())?;
        // the last row of each sequence
        let mut next: Vec<u32> = (0..b).map(|i| all[(i + 1) * prompt.len() - 1]).collect();
        let tp = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..a.gen_tokens {
            next = step(&next, &mut cache, b)?;
        }
        let td = t1.elapsed().as_secs_f64();
        if rep > 0 {
            pre.push((b * prompt.len()) as f64 / tp);
            dec.push((b * a.gen_tokens) as f64 / td);
        }
    }
    Ok((median(pre), median(dec)))
}

/// The same benchmark on a GPU, for each batch size: B copies of the prompt prefilled
/// together, then greedy decode steps of all B sequences (argmax on the device).
fn bench_decode_gpu(
    a: &DecodeArgs,
    m: &model::LoadedModel,
    prompt: &[u32],
    ordinal: usize,
) -> Result<()> {
    let gpu = model::llama_gpu::GpuLlama::new(&m.model, ordinal)?;
    let mut rows = vec![];
    for &b in &a.batch {
        let (pre, dec) = time_gpu_decode(
            a,
            prompt,
            b,
            || gpu.gpu.synchronize().map_err(Into::into),
            |cap| gpu.new_cache(b, cap),
            |toks, cache, rows| gpu.argmax(&gpu.forward(toks, cache)?, rows),
        )?;
        rows.push(serde_json::json!({"batch": b, "gpu_weights": "bf16", "prefill_tokens_per_s": pre, "decode_tokens_per_s": dec}));
    }
    // The GGUF-quantized path (the CPU's arithmetic, 4/8-bit weights) where the model allows it.
    if model::llama_gpu_gguf::GpuLlamaGguf::unsupported(&m.model).is_none() {
        let q = model::llama_gpu_gguf::GpuLlamaGguf::new(&m.model, ordinal)?;
        for &b in &a.batch {
            let (pre, dec) = time_gpu_decode(
                a,
                prompt,
                b,
                || q.gpu.synchronize().map_err(Into::into),
                |cap| q.new_cache(b, cap),
                |toks, cache, rows| q.argmax(&q.forward(toks, cache)?, rows),
            )?;
            rows.push(serde_json::json!({"batch": b, "gpu_weights": "gguf", "prefill_tokens_per_s": pre, "decode_tokens_per_s": dec}));
        }
    }
    let j = serde_json::json!({
        "bench": "decode",
        "engine": "hybrid",
        "device": gpu.gpu.name,
        "model": a.model.model_path()?.display().to_string(),
        "prompt_tokens": a.prompt_tokens,
        "gen_tokens": a.gen_tokens,
        "reps": a.reps,
        "results": rows,
    });
    println!("{j}");
    Ok(())
}
