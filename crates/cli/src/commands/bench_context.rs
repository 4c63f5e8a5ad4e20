//! `hybrid bench context`: one-sequence decode speed at long contexts, for the teacher and
//! for hybrid layouts of it side by side in one run, without running the prefill (caches are
//! filled to the context, then single-token steps are timed; `model::hybrid::speed`).
//! A layout (`F` FA, `S` SWA, `.` GDN, `K` KDA, one character per layer) is built from the
//! GGUF teacher the way `hybrid convert` builds its candidates; its speed does not depend on
//! training. A hybrid folder is measured as it is.
use super::ModelArgs;
use anyhow::{bail, Result};
use clap::Args;
use model::hybrid::HybridModel;

#[derive(Args, Clone, Debug)]
pub struct ContextArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Layouts to measure (repeatable): `teacher` (all FA) or one character per layer
    /// (F = FA, S = SWA, . = GDN, K = KDA). Only for GGUF teachers.
    #[arg(long, default_value = "teacher")]
    pub layout: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "4096,32768")]
    pub contexts: Vec<usize>,
    /// Timed decode steps per context (after one warm-up step).
    #[arg(long, default_value_t = 16)]
    pub steps: usize,
    /// Sliding window of the SWA layers.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
}

fn kinds_of(spec: &str, n: usize) -> Result<Vec<String>> {
    let kinds: Vec<String> = spec
        .chars()
        .map(|c| match c {
            'F' => Ok("fa"),
            'S' => Ok("swa"),
            '.' => Ok("gdn"),
            'K' => Ok("kda"),
            other => bail!("--layout {spec}: '{other}' is not a layer type (F, S, . or K)"),
        })
        .map(|r| r.map(String::from))
        .collect::<Result<_>>()?;
    if kinds.len() != n {
        bail!(
            "--layout {spec} has {} layers; the model has {n}",
            kinds.len()
        );
    }
    Ok(kinds)
}

/// A hybrid of layout `spec` (one character per layer) built from `teacher` the way `convert`
/// builds its candidates (attention weights transferred), untrained: for speed and memory.
pub(crate) fn layout_model(
    teacher: &HybridModel,
    spec: &str,
    window: usize,
) -> Result<HybridModel> {
    let kinds = kinds_of(spec, teacher.blocks.len())?;
    let mut cands = vec![];
    for k in ["swa", "gdn", "kda"] {
        if kinds.iter().any(|x| x == k) {
            cands.push((
                k.to_string(),
                train::transfer::candidate_model(teacher, k, window, 0)?,
            ));
        }
    }
    let mut sn = train::supernet::Supernet::new(teacher.clone_model(), cands)?;
    sn.extract(&kinds)
}

pub fn run(a: ContextArgs) -> Result<()> {
    let device = a.model.device()?;
    let path = a.model.model_path()?;
    if a.contexts.is_empty() || a.contexts.contains(&0) {
        bail!("--contexts takes positive token counts");
    }
    let mut models: Vec<(String, HybridModel)> = vec![];
    if path.is_dir() {
        if a.layout != ["teacher"] {
            bail!(
                "--layout builds layouts from a GGUF teacher; {} is a hybrid folder",
                path.display()
            );
        }
        let m = HybridModel::load(&path)?;
        let name = m.config.layer_names()?.join(",");
        models.push((name, m));
    } else {
        let lm = model::LoadedModel::load(&path)?;
        let teacher = HybridModel::from_llama(&lm.model)?;
        for spec in &a.layout {
            if spec == "teacher" {
                models.push(("teacher".into(), teacher.clone_model()));
                continue;
            }
            models.push((spec.clone(), layout_model(&teacher, spec, a.window)?));
        }
    }
    let mut results = vec![];
    for (name, m) in &models {
        for &ctx in &a.contexts {
            let tps = model::hybrid::speed::decode_tokens_per_s(m, device, ctx, a.steps)?;
            results.push(serde_json::json!({
                "layout": name, "context": ctx, "decode_tokens_per_s": tps,
                "cache_bytes": m.cache_bytes(ctx, 2),
            }));
        }
    }
    let dev_name = match device {
        tensor::Device::Cuda(n) => tensor::cuda::Gpu::open(n)?.name.clone(),
        tensor::Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
    };
    let j = serde_json::json!({
        "bench": "context", "model": path.display().to_string(), "device": dev_name,
        "steps": a.steps, "window": a.window, "results": results,
    });
    println!("{}", serde_json::to_string_pretty(&j)?);
    Ok(())
}
