//! `hybrid convert`: from a full-attention model to a hybrid with learned layer placement, as a
//! resumable pipeline. Every stage writes its results under `--out DIR` through a temporary
//! name and a rename, and records itself in DIR/stages.json; a rerun skips finished stages, so an
//! interrupted run (or a full disk) leaves every finished stage intact.
//!
//! Stages built so far: `teacher` (the teacher loads as an all-FA model; the budget fits it),
//! `corpus` (teacher traces from the shipped seed prompts + natural-text retrieval items, a
//! held-out split, and the teacher's own retrieval accuracy on it) and `transfer` (SWA and
//! linear candidates for every layer initialised from the teacher's attention, trained to
//! reproduce each teacher layer's mixer output; saved as mixer-only safetensors under
//! DIR/candidates). Supernet, search, distillation and the report come next (the conversion
//! issue).
use super::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use model::{GenerateOptions, LoadedModel};
use std::io::Write;
use std::path::{Path, PathBuf};
use train::budget::Budget;
use train::corpus::{self, CorpusSpec, Item};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Preset {
    /// 2 CPU cores, minutes: a small corpus, few steps, fewer candidates.
    Quick,
    /// One H200.
    Full,
}

#[derive(Args, Clone, Debug)]
pub struct ConvertArgs {
    /// The full-attention teacher (a GGUF Llama-family model; default: the fetched SmolLM2).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// What the hybrid may keep: type counts (`fa=2,swa=4`) or a cost fraction (`cost=0.15`).
    #[arg(long)]
    pub budget: String,
    /// The run folder (created; a rerun resumes it).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Preset::Quick)]
    pub preset: Preset,
    /// cpu, cuda or cuda:N (default: cuda when a GPU is usable, else cpu).
    #[arg(long)]
    pub device: Option<tensor::Device>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// DIR/stages.json: which stages are finished, and with which arguments (a resumed run must
/// not silently mix settings).
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Stages {
    teacher: String,
    budget: String,
    preset: Option<Preset>,
    seed: u64,
    done: Vec<String>,
}

fn corpus_spec(p: Preset, seed: u64) -> CorpusSpec {
    match p {
        Preset::Quick => CorpusSpec {
            traces: 24,
            trace_tokens: 64,
            items_per_kind: 20,
            distances: vec![2, 8, 24],
            heldout: 0.2,
            seed,
        },
        Preset::Full => CorpusSpec {
            traces: 512,
            trace_tokens: 256,
            items_per_kind: 200,
            distances: vec![2, 8, 24, 64, 160],
            heldout: 0.2,
            seed,
        },
    }
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let margs = ModelArgs {
        model: a.teacher.clone(),
        device: a.device,
    };
    let teacher_path = margs.model_path()?;
    let budget = Budget::parse(&a.budget)?;
    let device = margs.device()?;
    let m = LoadedModel::load(&teacher_path)?;
    // The budget must fit the teacher before anything is written.
    budget.validate(m.model.config.n_layers)?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create the run folder {}", a.out.display()))?;
    let stages_path = a.out.join("stages.json");
    let mut stages: Stages = match std::fs::read_to_string(&stages_path) {
        Ok(s) => serde_json::from_str(&s)
            .with_context(|| format!("{} is not a stages file", stages_path.display()))?,
        Err(_) => Stages::default(),
    };
    let me = Stages {
        teacher: teacher_path.display().to_string(),
        budget: a.budget.clone(),
        preset: Some(a.preset),
        seed: a.seed,
        done: stages.done.clone(),
    };
    if !stages.done.is_empty()
        && (stages.teacher != me.teacher
            || stages.budget != me.budget
            || stages.preset != me.preset
            || stages.seed != me.seed)
    {
        bail!(
            "{} holds a run with other settings (teacher {}, budget {}, preset {:?}, seed {}); use another --out",
            a.out.display(),
            stages.teacher,
            stages.budget,
            stages.preset,
            stages.seed
        );
    }
    stages = me;

    // Stage: teacher. The teacher must be a full-attention model we can convert, and the
    // budget must fit its layer count.
    if !stages.done.iter().any(|s| s == "teacher") {
        let c = &m.model.config;
        let j = serde_json::json!({
            "path": teacher_path.display().to_string(),
            "layers": c.n_layers, "hidden": c.hidden, "heads": c.n_heads, "kv_heads": c.n_kv_heads,
            "head_dim": c.head_dim, "vocab": c.vocab_size, "budget": budget,
        });
        write_atomic(
            &a.out.join("teacher.json"),
            serde_json::to_string_pretty(&j)?.as_bytes(),
        )?;
        finish(&mut stages, &stages_path, "teacher")?;
    }

    // Stage: corpus.
    if !stages.done.iter().any(|s| s == "corpus") {
        let spec = corpus_spec(a.preset, a.seed);
        let gpu = match device {
            tensor::Device::Cuda(n) => Some(model::llama_gpu::GpuLlama::new(&m.model, n)?),
            tensor::Device::Cpu => None,
        };
        let items = build_corpus(&m, gpu.as_ref(), &spec)?;
        let (train_items, held) = corpus::split(items, spec.heldout);
        let acc = teacher_accuracy(&m, &held)?;
        let dir = a.out.join("corpus");
        let tmp = a.out.join("corpus.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        write_jsonl(&tmp.join("train.jsonl"), &train_items)?;
        write_jsonl(&tmp.join("heldout.jsonl"), &held)?;
        let summary = serde_json::json!({
            "spec": spec, "train": train_items.len(), "heldout": held.len(),
            "train_tokens": train_items.iter().map(|i| i.tokens.len()).sum::<usize>(),
            "teacher_heldout_accuracy": acc,
        });
        write_atomic(
            &tmp.join("corpus.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir)
            .with_context(|| format!("cannot move {} into place", tmp.display()))?;
        eprintln!(
            "corpus: {} train / {} held-out items; teacher accuracy on held-out retrieval: {acc}",
            train_items.len(),
            held.len()
        );
        finish(&mut stages, &stages_path, "corpus")?;
    }
    // Stage: transfer (candidates per layer initialised from the teacher, then attention
    // transfer on the training corpus).
    if !stages.done.iter().any(|s| s == "transfer") {
        let teacher = model::hybrid::HybridModel::from_llama(&m.model)?;
        let (kinds, window, spec, n_seqs) = transfer_plan(a.preset);
        let mut cands = kinds
            .iter()
            .map(|k| train::transfer::candidate_model(&teacher, k, window, a.seed))
            .collect::<Result<Vec<_>>>()?;
        let seqs: Vec<Vec<u32>> = read_items(&a.out.join("corpus/train.jsonl"))?
            .into_iter()
            .map(|i| i.tokens)
            .take(n_seqs)
            .collect();
        let pb = ProgressBar::new((spec.epochs * seqs.len()) as u64);
        pb.set_style(
            ProgressStyle::with_template("transfer: {bar:30} {pos}/{len} sequences ETA {eta}")
                .unwrap(),
        );
        let reports =
            train::transfer::attention_transfer(&teacher, &mut cands, &seqs, &spec, |d, _| {
                pb.set_position(d as u64)
            })?;
        pb.finish_and_clear();
        let tmp = a.out.join("candidates.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        for (k, c) in kinds.iter().zip(&cands) {
            c.save_mixers(&tmp.join(format!("{k}.safetensors")))?;
            write_atomic(
                &tmp.join(format!("{k}.config.json")),
                serde_json::to_string_pretty(&c.config)?.as_bytes(),
            )?;
        }
        let j = serde_json::json!({
            "window": window, "spec": spec, "sequences": seqs.len(),
            "kinds": kinds.iter().zip(&reports).map(|(k, r)| (k.to_string(), r)).collect::<std::collections::BTreeMap<_, _>>(),
        });
        write_atomic(
            &tmp.join("transfer.json"),
            serde_json::to_string_pretty(&j)?.as_bytes(),
        )?;
        let dir = a.out.join("candidates");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir)
            .with_context(|| format!("cannot move {} into place", tmp.display()))?;
        for (k, r) in kinds.iter().zip(&reports) {
            let mean = |f: &dyn Fn(&train::transfer::LayerTransfer) -> f64| {
                r.iter().map(f).sum::<f64>() / r.len().max(1) as f64
            };
            eprintln!(
                "transfer: {k}: mean relative MSE to the teacher's mixer output {:.3} -> {:.3}",
                mean(&|x| x.rel_mse_before),
                mean(&|x| x.rel_mse_after)
            );
        }
        finish(&mut stages, &stages_path, "transfer")?;
    }
    // Stage: supernet.
    if !stages.done.iter().any(|s| s == "supernet") {
        let mut sn = load_supernet(&m, &a.out.join("candidates"), a.preset)?;
        let spec = supernet_spec(a.preset, a.seed);
        let seqs: Vec<Vec<u32>> = read_items(&a.out.join("corpus/train.jsonl"))?
            .into_iter()
            .map(|i| i.tokens)
            .collect();
        let pb = ProgressBar::new(spec.steps as u64);
        pb.set_style(
            ProgressStyle::with_template("supernet: {bar:30} {pos}/{len} steps ETA {eta} {msg}")
                .unwrap(),
        );
        let log = sn.train(&seqs, &spec, |l| {
            pb.set_message(format!("KL {:.3}", l.kl));
            pb.inc(1)
        })?;
        pb.finish_and_clear();
        let tmp = a.out.join("supernet.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        for (k, c) in &sn.cands {
            c.save_mixers(&tmp.join(format!("{k}.safetensors")))?;
        }
        let j = serde_json::json!({"spec": spec, "log": log});
        write_atomic(
            &tmp.join("supernet.json"),
            serde_json::to_string_pretty(&j)?.as_bytes(),
        )?;
        let dir = a.out.join("supernet");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir)
            .with_context(|| format!("cannot move {} into place", tmp.display()))?;
        let tail = &log[log.len().saturating_sub(8)..];
        eprintln!(
            "supernet: {} steps; mean KL of the first and last 8 sampled layouts {:.3} -> {:.3}",
            log.len(),
            log.iter().take(8).map(|l| l.kl as f64).sum::<f64>() / log.len().clamp(1, 8) as f64,
            tail.iter().map(|l| l.kl as f64).sum::<f64>() / tail.len().max(1) as f64
        );
        finish(&mut stages, &stages_path, "supernet")?;
    }
    eprintln!(
        "{}: stages done: {}. Search, distillation and the report are not built yet.",
        a.out.display(),
        stages.done.join(", ")
    );
    Ok(())
}

/// Candidate kinds, SWA window, transfer settings and how many corpus sequences to use.
fn transfer_plan(
    p: Preset,
) -> (
    Vec<&'static str>,
    usize,
    train::transfer::TransferSpec,
    usize,
) {
    match p {
        Preset::Quick => (
            vec!["swa", "gdn"],
            64,
            train::transfer::TransferSpec {
                epochs: 1,
                lr: 1e-3,
                max_len: 192,
            },
            16,
        ),
        Preset::Full => (
            vec!["swa", "gdn", "kda"],
            512,
            train::transfer::TransferSpec {
                epochs: 2,
                lr: 1e-3,
                max_len: 1024,
            },
            512,
        ),
    }
}

fn supernet_spec(p: Preset, seed: u64) -> train::supernet::SupernetSpec {
    let (steps, seq_len) = match p {
        Preset::Quick => (96, 128),
        Preset::Full => (2000, 1024),
    };
    train::supernet::SupernetSpec {
        steps,
        lr: 1e-3,
        seq_len,
        temperature: 1.0,
        p_all_fa: 0.1,
        p_uniform: 0.1,
        seed,
    }
}

/// The supernet from the teacher and the candidates in `dir` (a stage's output folder).
fn load_supernet(m: &LoadedModel, dir: &Path, preset: Preset) -> Result<train::supernet::Supernet> {
    let teacher = model::hybrid::HybridModel::from_llama(&m.model)?;
    let (kinds, window, _, _) = transfer_plan(preset);
    let mut cands = vec![];
    for k in kinds {
        let mut c = train::transfer::candidate_model(&teacher, k, window, 0)?;
        c.load_mixers(&dir.join(format!("{k}.safetensors")))?;
        cands.push((k.to_string(), c));
    }
    train::supernet::Supernet::new(teacher, cands)
}

fn read_items(path: &Path) -> Result<Vec<Item>> {
    let s =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    s.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a corpus item", path.display(), i + 1))
        })
        .collect()
}

fn finish(stages: &mut Stages, path: &Path, name: &str) -> Result<()> {
    stages.done.push(name.to_string());
    write_atomic(path, serde_json::to_string_pretty(stages)?.as_bytes())
}

/// Writes through a temporary file and a rename, so that a failure (a full disk) never leaves
/// a half-written file under the final name.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let res = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}

fn write_jsonl(path: &Path, items: &[Item]) -> Result<()> {
    let mut s = String::new();
    for it in items {
        s.push_str(&serde_json::to_string(it)?);
        s.push('\n');
    }
    write_atomic(path, s.as_bytes())
}

/// Teacher traces (sampled through the chat template) and the retrieval items, tokenized.
fn build_corpus(
    m: &LoadedModel,
    gpu: Option<&model::llama_gpu::GpuLlama>,
    spec: &CorpusSpec,
) -> Result<Vec<Item>> {
    let prompts = corpus::seed_prompts(spec.traces);
    let pb = ProgressBar::new(prompts.len() as u64);
    pb.set_style(
        ProgressStyle::with_template("corpus: teacher traces {bar:30} {pos}/{len} ETA {eta}")
            .unwrap(),
    );
    let mut items = vec![];
    for (i, p) in prompts.iter().enumerate() {
        let prompt = m.prompt_tokens(p, m.template.is_some())?;
        let opts = GenerateOptions {
            max_tokens: spec.trace_tokens,
            sampling: model::SamplingParams {
                temperature: 0.8,
                top_p: 0.95,
                seed: spec.seed.wrapping_add(i as u64),
                ..Default::default()
            },
            stop: vec![],
        };
        let g = match gpu {
            Some(gpu) => model::generate_gpu(m, gpu, &prompt, &opts, |_| {})?,
            None => model::generate(m, &prompt, &opts, |_| {})?,
        };
        let mut tokens = prompt.clone();
        tokens.extend(&g.tokens);
        items.push(Item {
            kind: "teacher".into(),
            prompt: p.clone(),
            answer: g.text,
            tokens,
            answer_start: prompt.len(),
            distance: 0,
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    for (kind, prompt, answer, distance) in corpus::retrieval_items(spec) {
        let p = m.tokenizer.encode(&prompt, true)?;
        let full = m.tokenizer.encode(&format!("{prompt}{answer}"), true)?;
        // The answer's tokens are what follows the prompt's (the answer starts with a space,
        // which BPE keeps at the start of the answer's first token).
        if full.len() <= p.len() || full[..p.len()] != p[..] {
            bail!("the {kind} item's answer does not tokenize after its prompt");
        }
        items.push(Item {
            kind,
            prompt,
            answer,
            tokens: full,
            answer_start: p.len(),
            distance,
        });
    }
    Ok(items)
}

/// Share of held-out retrieval items whose answer tokens the teacher predicts exactly under
/// teacher forcing (greedy argmax at every answer position), per kind.
fn teacher_accuracy(m: &LoadedModel, held: &[Item]) -> Result<serde_json::Value> {
    let v = m.model.config.vocab_size;
    let mut per: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for it in held.iter().filter(|i| i.kind != "teacher") {
        let logits = m
            .model
            .forward(&it.tokens, &mut m.model.new_cache(), true)?;
        let ok = (it.answer_start..it.tokens.len()).all(|pos| {
            let row = &logits[(pos - 1) * v..pos * v];
            let am = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                )
                .0;
            am as u32 == it.tokens[pos]
        });
        let e = per.entry(it.kind.clone()).or_default();
        e.0 += ok as usize;
        e.1 += 1;
    }
    Ok(serde_json::json!(per
        .into_iter()
        .map(|(k, (ok, n))| (k, ok as f64 / n.max(1) as f64))
        .collect::<std::collections::BTreeMap<_, _>>()))
}
