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
    let gpu = model::llama_gpu::GpuLlama::new(&m.model, ordinal)?;
    let v = m.model.config.vocab_size;
    let (mut agree, mut total, mut kl_sum, mut max_diff) = (0usize, 0usize, 0f64, 0f32);
    let mut per_text = vec![];
    for text in TEXTS {
        let ids = m.tokenizer.encode(text, true)?;
        let cpu = m.model.forward(&ids, &mut m.model.new_cache(), true)?;
        let mut cache = gpu.new_cache(1, ids.len())?;
        let cuda = gpu.logits_to_host(&gpu.forward(&ids, &mut cache)?)?;
        let mut text_agree = 0;
        for (p, q) in cpu.chunks_exact(v).zip(cuda.chunks_exact(v)) {
            let am = |x: &[f32]| {
                x.iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |b, (i, &y)| if y > b.1 { (i, y) } else { b },
                    )
                    .0
            };
            text_agree += (am(p) == am(q)) as usize;
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
    println!(
        "{}",
        serde_json::json!({
            "bench": "agreement", "device": gpu.gpu.name, "positions": total,
            "argmax_agreement": agree as f64 / total as f64,
            "mean_kl_cpu_cuda": kl_sum / total as f64, "max_abs_logit_diff": max_diff,
            "texts": per_text,
        })
    );
    Ok(())
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
