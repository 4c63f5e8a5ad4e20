//! `hybrid bench agreement`: the model on the GPU against the same model on the CPU under
//! teacher forcing — next-token argmax agreement and mean KL(cpu ‖ cuda) over every position
//! of a set of varied built-in texts (the GPU issue's check of the whole model, JSON out).
use super::ModelArgs;
use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct AgreementArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Varied registers: prose, code, numbers, dialogue, a list, non-English text.
const TEXTS: &[&str] = &[
    super::bench::BENCH_TEXT,
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nprint([fibonacci(i) for i in range(10)])\n",
    "The train leaves the station at 14:35 and arrives at 18:05, a journey of 3 hours and 30 minutes. If it travels 245 kilometres, its average speed is 70 km/h. A return ticket costs 48.50 euros, or 41.20 with a rail card.",
    "\"Did you lock the door?\" she asked.\n\"I think so,\" he said, patting his pockets for the keys. \"Actually, I'm not sure. Let me go back and check.\"\nShe sighed and looked at her watch. They were already late for the concert.",
    "Ingredients for the bread: 500 g flour, 10 g salt, 7 g dried yeast, 350 ml warm water. Mix the flour and salt, add the yeast, then the water. Knead for ten minutes until smooth, cover, and leave to rise for an hour.",
    "La photosynthèse est le processus par lequel les plantes transforment la lumière du soleil en énergie chimique. Elle se déroule principalement dans les feuilles, grâce à la chlorophylle.",
];

pub fn run(a: AgreementArgs) -> Result<()> {
    let ordinal = match a.model.device()? {
        tensor::Device::Cuda(n) => n,
        tensor::Device::Cpu => {
            bail!("bench agreement compares the GPU with the CPU: it needs --device cuda")
        }
    };
    let m = model::LoadedModel::load(&a.model.model_path()?)?;
    let v = m.model.config.vocab_size;
    let mut texts = vec![];
    for text in TEXTS {
        let ids = m.tokenizer.encode(text, true)?;
        let cpu = m.model.forward(&ids, &mut m.model.new_cache(), true)?;
        texts.push((ids, cpu));
    }
    // Both GPU paths against the same CPU logits: the bf16 one (a slightly different model)
    // and the GGUF-quantized one (the CPU's arithmetic), unless this model cannot take it.
    let mut paths = serde_json::Map::new();
    let device_name: String;
    {
        let gpu = model::llama_gpu::GpuLlama::new(&m.model, ordinal)?;
        device_name = gpu.gpu.name.clone();
        let mut logits = vec![];
        for (ids, _) in &texts {
            let mut cache = gpu.new_cache(1, ids.len())?;
            logits.push(gpu.logits_to_host(&gpu.forward(ids, &mut cache)?)?);
        }
        paths.insert("bf16".into(), compare(&texts, &logits, v));
    }
    match model::llama_gpu_gguf::GpuLlamaGguf::unsupported(&m.model) {
        Some(why) => {
            paths.insert("gguf".into(), serde_json::json!({ "skipped": why }));
        }
        None => {
            let gpu = model::llama_gpu_gguf::GpuLlamaGguf::new(&m.model, ordinal)?;
            let mut logits = vec![];
            for (ids, _) in &texts {
                let mut cache = gpu.new_cache(1, ids.len())?;
                logits.push(gpu.logits_to_host(&gpu.forward(ids, &mut cache)?)?);
            }
            paths.insert("gguf".into(), compare(&texts, &logits, v));
        }
    }
    // The headline numbers are those of the path `--gpu-weights auto` runs.
    let default = if paths["gguf"].get("skipped").is_some() {
        "bf16"
    } else {
        "gguf"
    };
    let mut out = paths[default].clone();
    out["bench"] = "agreement".into();
    out["device"] = device_name.into();
    out["gpu_weights"] = default.into();
    out["paths"] = serde_json::Value::Object(paths);
    println!("{out}");
    Ok(())
}

/// Argmax agreement, mean KL(cpu ‖ gpu) and the largest logit difference over every position.
fn compare(texts: &[(Vec<u32>, Vec<f32>)], gpu: &[Vec<f32>], v: usize) -> serde_json::Value {
    let (mut agree, mut total, mut kl_sum, mut max_diff) = (0usize, 0usize, 0f64, 0f32);
    let mut per_text = vec![];
    for ((ids, cpu), cuda) in texts.iter().zip(gpu) {
        let mut text_agree = 0;
        for (p, q) in cpu.chunks_exact(v).zip(cuda.chunks_exact(v)) {
            text_agree += (model::sampling::argmax(p) == model::sampling::argmax(q)) as usize;
            kl_sum += kl(p, q);
            max_diff = p
                .iter()
                .zip(q)
                .fold(max_diff, |m, (a, b)| m.max((a - b).abs()));
        }
        agree += text_agree;
        total += ids.len();
        per_text.push(serde_json::json!({"tokens": ids.len(), "argmax_agree": text_agree}));
    }
    serde_json::json!({
        "positions": total,
        "argmax_agreement": agree as f64 / total as f64,
        "mean_kl_cpu_cuda": kl_sum / total as f64, "max_abs_logit_diff": max_diff,
        "texts": per_text,
    })
}

/// KL(softmax(p) ‖ softmax(q)) in nats, sums in f64.
fn kl(p: &[f32], q: &[f32]) -> f64 {
    let lse = |x: &[f32]| {
        let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        m + x.iter().map(|&y| (y as f64 - m).exp()).sum::<f64>().ln()
    };
    let (lp, lq) = (lse(p), lse(q));
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let la = a as f64 - lp;
            la.exp() * (la - (b as f64 - lq))
        })
        .sum()
}
