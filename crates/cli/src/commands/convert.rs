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
    /// Data-parallel training over these GPUs (`0,1`): every supernet and distillation batch
    /// is split over them and the gradients are summed over NCCL before each step; the other
    /// stages run on the first GPU.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this stage (teacher, corpus, transfer, supernet, search, distil, fidelity,
    /// report).
    #[arg(long)]
    pub until: Option<String>,
}

const STAGES: [&str; 8] = [
    "teacher", "corpus", "transfer", "supernet", "search", "distil", "fidelity", "report",
];

/// DIR/stages.json: which stages are finished, and with which arguments (a resumed run must
/// not silently mix settings).
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Stages {
    teacher: String,
    budget: String,
    preset: Option<Preset>,
    seed: u64,
    done: Vec<String>,
    /// Wall-clock seconds of each stage (of the run that finished it).
    #[serde(default)]
    seconds: std::collections::BTreeMap<String, f64>,
    #[serde(skip)]
    started: Option<std::time::Instant>,
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
    let device = match (a.devices.first(), a.device) {
        (None, d) => d,
        (Some(&first), None) => Some(tensor::Device::Cuda(first)),
        (Some(&first), Some(d)) if d == tensor::Device::Cuda(first) => Some(d),
        (Some(_), Some(d)) => bail!(
            "--device {d} and --devices {:?} disagree: the first of --devices is the device of the other stages",
            a.devices
        ),
    };
    let margs = ModelArgs {
        model: a.teacher.clone(),
        device,
        gpu_weights: super::GpuWeightsArg::Bf16,
    };
    let teacher_path = margs.model_path()?;
    let budget = Budget::parse(&a.budget)?;
    if teacher_path.is_dir() {
        bail!(
            "--teacher {}: a folder; the teacher must be a full-attention model in a GGUF file (hybrid folders are already converted)",
            teacher_path.display()
        );
    }
    let device = margs.device()?;
    let m = LoadedModel::load(&teacher_path)?;
    // The budget must fit the teacher before anything is written.
    budget.validate(m.model.config.n_layers)?;
    if a.preset == Preset::Full && device == tensor::Device::Cpu {
        // Its settings (thousands of steps over batches of 1024-token windows) are sized for
        // GPU training; on the CPU they would run for days.
        bail!("--preset full trains on a GPU (--device cuda), and none is in use here; use --preset quick on the CPU");
    }
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
        seconds: stages.seconds.clone(),
        started: Some(std::time::Instant::now()),
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
    if let Some(u) = &a.until {
        if !STAGES.contains(&u.as_str()) {
            bail!("--until {u}: not a stage ({})", STAGES.join(", "));
        }
    }
    let stop_after = |name: &str| a.until.as_deref() == Some(name);
    // Free disk before each stage (a stage that dies on a full disk wastes its minutes).
    let stage_need = super::disk::stage_bytes(&m.model.config);
    let room = |stage: &str| super::disk::check_free(&a.out, stage_need, stage);

    // Stage: teacher. The teacher must be a full-attention model we can convert, and the
    // budget must fit its layer count.
    if !stages.done.iter().any(|s| s == "teacher") {
        room("teacher")?;
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
    if stop_after("teacher") {
        return done_message(&a.out, &stages.done);
    }

    // Stage: corpus.
    if !stages.done.iter().any(|s| s == "corpus") {
        room("corpus")?;
        let spec = corpus_spec(a.preset, a.seed);
        let items = build_corpus(&m, device, &spec)?;
        let (train_items, held) = corpus::split(items, spec.heldout);
        let gpu = match device {
            tensor::Device::Cuda(n) => Some(model::llama_gpu::GpuLlama::new(&m.model, n)?),
            tensor::Device::Cpu => None,
        };
        let acc = teacher_accuracy(&m, gpu.as_ref(), &held)?;
        stage_dir(&a.out, "corpus", |tmp| {
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
            Ok(())
        })?;
        eprintln!(
            "corpus: {} train / {} held-out items; teacher accuracy on held-out retrieval: {acc}",
            train_items.len(),
            held.len()
        );
        finish(&mut stages, &stages_path, "corpus")?;
    }
    if stop_after("corpus") {
        return done_message(&a.out, &stages.done);
    }
    // Stage: transfer (candidates per layer initialised from the teacher, then attention
    // transfer on the training corpus).
    if !stages.done.iter().any(|s| s == "transfer") {
        room("transfer")?;
        let teacher = model::hybrid::HybridModel::from_llama(&m.model)?;
        let (kinds, window, spec, n_seqs) = transfer_plan(a.preset);
        let mut cands = kinds
            .iter()
            .map(|k| train::transfer::candidate_model(&teacher, k, window, a.seed))
            .collect::<Result<Vec<_>>>()?;
        let mut seqs = train_seqs(&a.out)?;
        seqs.truncate(n_seqs);
        let pb = ProgressBar::new((spec.epochs * seqs.len()) as u64);
        pb.set_style(
            ProgressStyle::with_template("transfer: {bar:30} {pos}/{len} sequences ETA {eta}")
                .unwrap(),
        );
        // On the GPU when the run has one (the teacher's activations and every candidate).
        let gpu = match device {
            tensor::Device::Cuda(n) => Some(n),
            tensor::Device::Cpu => None,
        };
        let reports = train::transfer::attention_transfer(
            &teacher,
            &mut cands,
            &seqs,
            &spec,
            gpu,
            |d, _| pb.set_position(d as u64),
        )?;
        pb.finish_and_clear();
        stage_dir(&a.out, "candidates", |tmp| {
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
            Ok(())
        })?;
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
    if stop_after("transfer") {
        return done_message(&a.out, &stages.done);
    }
    // Stage: supernet.
    if !stages.done.iter().any(|s| s == "supernet") {
        room("supernet")?;
        let mut sn = load_supernet(&m, &a.out.join("candidates"), a.preset, device)?;
        data_parallel(&mut sn, &a.devices)?;
        let spec = supernet_spec(a.preset, a.seed);
        let log = train_with_progress(&mut sn, &train_seqs(&a.out)?, &spec, "supernet")?;
        stage_dir(&a.out, "supernet", |tmp| {
            for (k, c) in &sn.cands {
                c.save_mixers(&tmp.join(format!("{k}.safetensors")))?;
            }
            let j = serde_json::json!({"spec": spec, "log": log});
            write_atomic(
                &tmp.join("supernet.json"),
                serde_json::to_string_pretty(&j)?.as_bytes(),
            )?;
            Ok(())
        })?;
        let tail = &log[log.len().saturating_sub(8)..];
        eprintln!(
            "supernet: {} steps; mean KL of the first and last 8 sampled layouts {:.3} -> {:.3}",
            log.len(),
            log.iter().take(8).map(|l| l.kl as f64).sum::<f64>() / log.len().clamp(1, 8) as f64,
            tail.iter().map(|l| l.kl as f64).sum::<f64>() / tail.len().max(1) as f64
        );
        finish(&mut stages, &stages_path, "supernet")?;
    }
    if stop_after("supernet") {
        return done_message(&a.out, &stages.done);
    }
    // Stage: search.
    let (fa, swa) = budget_counts(&budget, m.model.config.n_layers, a.preset);
    if !stages.done.iter().any(|s| s == "search") {
        room("search")?;
        let mut sn = load_supernet(&m, &a.out.join("supernet"), a.preset, device)?;
        let set = eval_set(
            &sn.teacher,
            &read_items(&a.out.join("corpus/heldout.jsonl"))?,
            a.preset,
            device,
        )?;
        let spec = train::search::SearchSpec {
            width: if a.preset == Preset::Quick { 2 } else { 4 },
            top: if a.preset == Preset::Quick { 4 } else { 10 },
            linear: "gdn".into(),
        };
        let n = sn.teacher.blocks.len();
        let expect = n + fa.saturating_sub(1) * spec.width * spec.top + n.saturating_sub(fa) + 1;
        let pb = ProgressBar::new(expect as u64);
        pb.set_style(
            ProgressStyle::with_template("search: {msg} {bar:30} {pos}/~{len} layouts ETA {eta}")
                .unwrap(),
        );
        let r = train::search::search(&mut sn, &set, fa, swa, &spec, |stage, done| {
            pb.set_message(stage.to_string());
            pb.set_position(done as u64)
        })?;
        pb.finish_and_clear();
        write_atomic(
            &a.out.join("search.json"),
            serde_json::to_string_pretty(&serde_json::json!({
                "budget": budget, "fa": fa, "swa": swa, "spec": spec,
                "eval_tokens": set.tokens(), "result": r,
            }))?
            .as_bytes(),
        )?;
        eprintln!(
            "search: {} layouts evaluated; best {}",
            r.evaluated,
            layout_string(&r.best.layout)
        );
        finish(&mut stages, &stages_path, "search")?;
    }
    if stop_after("search") {
        return done_message(&a.out, &stages.done);
    }
    let searched: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(a.out.join("search.json")).context("search.json is missing")?,
    )?;
    let best: Vec<String> = serde_json::from_value(searched["result"]["best"]["layout"].clone())?;

    // Stage: distil (the best layout as a standalone hybrid, fine-tuned with KL to the
    // teacher, saved with the teacher's tokenizer and chat template).
    if !stages.done.iter().any(|s| s == "distil") {
        room("distil")?;
        let mut sn = load_supernet(&m, &a.out.join("supernet"), a.preset, device)?;
        data_parallel(&mut sn, &a.devices)?;
        let mut spec = supernet_spec(a.preset, a.seed ^ 0xd1);
        distil_settings(&mut spec, a.preset);
        spec.fixed = Some(best.clone());
        let log = train_with_progress(&mut sn, &train_seqs(&a.out)?, &spec, "distil")?;
        let mut hybrid = sn.extract(&best)?;
        hybrid.config.bos_token_id = m.tokenizer.bos;
        hybrid.config.eos_token_id = m.tokenizer.eos;
        stage_dir(&a.out, "model", |tmp| {
            hybrid.save(tmp)?;
            model::bundle::write_tokenizer(tmp, &m.tokenizer, m.template.as_ref())?;
            write_atomic(
                &tmp.join("distil.json"),
                serde_json::to_string_pretty(&serde_json::json!({"spec": spec, "log": log}))?
                    .as_bytes(),
            )?;
            Ok(())
        })?;
        finish(&mut stages, &stages_path, "distil")?;
    }
    if stop_after("distil") {
        return done_message(&a.out, &stages.done);
    }

    let ctx = super::convert_report::RunCtx {
        m: &m,
        out: &a.out,
        teacher_path: &teacher_path,
        budget: &a.budget,
        preset: a.preset,
        seed: a.seed,
        fa,
        swa,
        best,
        device,
    };
    // Stage: fidelity (Kendall tau of supernet vs post-distillation scores over 8+ layouts).
    if !stages.done.iter().any(|s| s == "fidelity") {
        room("fidelity")?;
        super::convert_report::fidelity_stage(&ctx)?;
        finish(&mut stages, &stages_path, "fidelity")?;
    }
    if stop_after("fidelity") {
        return done_message(&a.out, &stages.done);
    }
    // Stage: report (Markdown, JSON, plots).
    if !stages.done.iter().any(|s| s == "report") {
        room("report")?;
        super::convert_report::report_stage(&ctx)?;
        finish(&mut stages, &stages_path, "report")?;
    }
    done_message(&a.out, &stages.done)
}

fn done_message(out: &Path, done: &[String]) -> Result<()> {
    let mut msg = format!("{}: stages done: {}.", out.display(), done.join(", "));
    if done.iter().any(|s| s == "report") {
        msg.push_str(&format!(
            " The hybrid is in {}, the report in {}.",
            out.join("model").display(),
            out.join("report.md").display()
        ));
    }
    eprintln!("{msg}");
    Ok(())
}

pub(crate) fn layout_string(l: &[String]) -> String {
    l.iter()
        .map(|k| match k.as_str() {
            "fa" => 'F',
            "swa" => 'S',
            _ => '.',
        })
        .collect()
}

/// Type counts of the budget. A cost fraction becomes the most softmax layers whose decode
/// cost fits: relative per-layer costs from `bench step` on this project's CPU kernels at 32K
/// context (bench/step-cpu.json: FA 22.4 ms, SWA(window) 1.38 ms, GDN 0.38 ms per token).
fn budget_counts(b: &Budget, n: usize, _p: Preset) -> (usize, usize) {
    match *b {
        Budget::Counts { fa, swa } => (fa, swa),
        Budget::Cost(f) => {
            let (c_fa, c_swa, c_lin) = (1.0, 1.375 / 22.4, 0.383 / 22.4);
            let limit = f * n as f64;
            let mut best = (0, 0);
            for fa in 0..=n {
                for swa in 0..=(n - fa) {
                    let cost =
                        fa as f64 * c_fa + swa as f64 * c_swa + (n - fa - swa) as f64 * c_lin;
                    if cost <= limit && (fa, swa) > best && fa < n {
                        best = (fa, swa);
                    }
                }
            }
            best
        }
    }
}

/// The held-out evaluation set: teacher traces (KL) and retrieval items beyond the SWA window.
fn eval_set(
    teacher: &model::hybrid::HybridModel,
    held: &[Item],
    p: Preset,
    device: tensor::Device,
) -> Result<train::search::EvalSet> {
    let (n_traces, per_kind, trace_len) = match p {
        Preset::Quick => (1, 1, 96),
        Preset::Full => (8, 12, 384),
    };
    let traces: Vec<(Vec<u32>, usize)> = held
        .iter()
        .filter(|i| i.kind == "teacher")
        .take(n_traces)
        .map(|i| {
            (
                i.tokens[..i.tokens.len().min(i.answer_start + trace_len)].to_vec(),
                i.answer_start,
            )
        })
        .collect();
    let mut retrieval = vec![];
    for kind in ["passkey", "kv_recall", "multi_hop"] {
        let mut items: Vec<&Item> = held.iter().filter(|i| i.kind == kind).collect();
        // Farthest first: what a sliding window cannot see.
        items.sort_by_key(|i| std::cmp::Reverse(i.distance));
        for it in items.into_iter().take(per_kind) {
            retrieval.push(train::search::Probe {
                kind: kind.to_string(),
                tokens: it.tokens.clone(),
                answer_start: it.answer_start,
                distance: it.distance,
            });
        }
    }
    new_eval_set(teacher, traces, retrieval, device)
}

/// An evaluation set for the run's device: on the GPU the teacher's logits are recomputed
/// there, on the CPU its log-probabilities are computed once here.
pub(crate) fn new_eval_set(
    teacher: &model::hybrid::HybridModel,
    traces: Vec<(Vec<u32>, usize)>,
    probes: Vec<train::search::Probe>,
    device: tensor::Device,
) -> Result<train::search::EvalSet> {
    match device {
        tensor::Device::Cuda(_) => {
            train::search::EvalSet::for_gpu(teacher.config.vocab_size, traces, probes)
        }
        tensor::Device::Cpu => train::search::EvalSet::new(teacher, traces, probes),
    }
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
            vec!["swa", "gdn"],
            512,
            train::transfer::TransferSpec {
                epochs: 1,
                lr: 1e-3,
                max_len: 1024,
            },
            384,
        ),
    }
}

/// Distillation of one fixed layout (the `distil` and `fidelity` stages): fewer steps and,
/// on the full preset, a lower learning rate than the supernet's (at 1e-3 a 300-step distil
/// on the GPU raised the held-out KL: it overfits the corpus).
pub(crate) fn distil_settings(spec: &mut train::supernet::SupernetSpec, p: Preset) {
    match p {
        Preset::Quick => spec.steps = 32,
        Preset::Full => {
            spec.steps = 100;
            spec.lr = 3e-4;
        }
    }
}

pub(crate) fn supernet_spec(p: Preset, seed: u64) -> train::supernet::SupernetSpec {
    // Full: batches of 8 windows of 1024 tokens on the GPU.
    let (steps, seq_len, batch) = match p {
        Preset::Quick => (96, 128, 1),
        Preset::Full => (400, 1024, 8),
    };
    train::supernet::SupernetSpec {
        steps,
        lr: 1e-3,
        seq_len,
        temperature: 1.0,
        p_all_fa: 0.1,
        p_uniform: 0.1,
        seed,
        fixed: None,
        batch,
    }
}

/// The supernet from the teacher and the candidates in `dir` (a stage's output folder).
pub(crate) fn load_supernet(
    m: &LoadedModel,
    dir: &Path,
    preset: Preset,
    device: tensor::Device,
) -> Result<train::supernet::Supernet> {
    let teacher = model::hybrid::HybridModel::from_llama(&m.model)?;
    let (kinds, window, _, _) = transfer_plan(preset);
    let mut cands = vec![];
    for k in kinds {
        let mut c = train::transfer::candidate_model(&teacher, k, window, 0)?;
        c.load_mixers(&dir.join(format!("{k}.safetensors")))?;
        cands.push((k.to_string(), c));
    }
    let mut sn = train::supernet::Supernet::new(teacher, cands)?;
    if let tensor::Device::Cuda(n) = device {
        sn.use_gpu(n)?;
    }
    Ok(sn)
}

/// With several `--devices`, the supernet's training runs on all of them (one replica each).
fn data_parallel(sn: &mut train::supernet::Supernet, devices: &[usize]) -> Result<()> {
    if devices.len() > 1 {
        sn.use_gpus(devices)?;
        eprintln!("data-parallel training on GPUs {devices:?}");
    }
    Ok(())
}

/// The token sequences of the training corpus (DIR/corpus/train.jsonl).
pub(crate) fn train_seqs(out: &Path) -> Result<Vec<Vec<u32>>> {
    Ok(read_items(&out.join("corpus/train.jsonl"))?
        .into_iter()
        .map(|i| i.tokens)
        .collect())
}

/// Supernet training (sampled or fixed layouts) with a progress bar named `what`.
fn train_with_progress(
    sn: &mut train::supernet::Supernet,
    seqs: &[Vec<u32>],
    spec: &train::supernet::SupernetSpec,
    what: &str,
) -> Result<Vec<train::supernet::StepLog>> {
    let pb = ProgressBar::new(spec.steps as u64);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what}: {{bar:30}} {{pos}}/{{len}} steps ETA {{eta}} {{msg}}"
        ))
        .unwrap(),
    );
    let log = sn.train(seqs, spec, |l| {
        pb.set_message(format!("KL {:.3}", l.kl));
        pb.inc(1)
    })?;
    pb.finish_and_clear();
    Ok(log)
}

pub(crate) fn read_items(path: &Path) -> Result<Vec<Item>> {
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

/// Fills a stage's output folder DIR/`name` through DIR/`name`.tmp and a rename, so that a
/// failure leaves no half-written stage under the final name.
pub(crate) fn stage_dir(
    out: &Path,
    name: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let tmp = out.join(format!("{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dir = out.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).with_context(|| format!("cannot move {} into place", tmp.display()))
}

fn finish(stages: &mut Stages, path: &Path, name: &str) -> Result<()> {
    stages.done.push(name.to_string());
    if let Some(t) = stages.started.replace(std::time::Instant::now()) {
        let s = t.elapsed().as_secs_f64();
        stages
            .seconds
            .insert(name.to_string(), (s * 10.0).round() / 10.0);
    }
    write_atomic(path, serde_json::to_string_pretty(stages)?.as_bytes())
}

/// Writes through a temporary file and a rename, so that a failure (a full disk) never leaves
/// a half-written file under the final name.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
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
/// On a GPU, 16 workers sample concurrently, each with its own copy of the teacher and its own
/// stream (batch-1 decoding is launch-bound; the workers overlap their launches). Each
/// prompt's sampling seed is fixed, so the corpus does not depend on the workers' timing.
fn build_corpus(m: &LoadedModel, device: tensor::Device, spec: &CorpusSpec) -> Result<Vec<Item>> {
    let prompts = corpus::seed_prompts(spec.traces);
    let pb = ProgressBar::new(prompts.len() as u64);
    pb.set_style(
        ProgressStyle::with_template("corpus: teacher traces {bar:30} {pos}/{len} ETA {eta}")
            .unwrap(),
    );
    let workers = match device {
        tensor::Device::Cuda(_) => 16,
        tensor::Device::Cpu => 1,
    };
    let sample = |i: usize, gpu: Option<&model::llama_gpu::GpuLlama>| -> Result<Item> {
        let p = &prompts[i];
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
        pb.inc(1);
        Ok(Item {
            kind: "teacher".into(),
            prompt: p.clone(),
            answer: g.text,
            tokens,
            answer_start: prompt.len(),
            distance: 0,
        })
    };
    let per_worker: Vec<Result<Vec<(usize, Item)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let sample = &sample;
                let n = prompts.len();
                scope.spawn(move || -> Result<Vec<(usize, Item)>> {
                    let gpu = match device {
                        tensor::Device::Cuda(o) => Some(model::llama_gpu::GpuLlama::on(
                            &m.model,
                            tensor::cuda::Gpu::open_with_own_stream(o)?,
                        )?),
                        tensor::Device::Cpu => None,
                    };
                    (w..n)
                        .step_by(workers)
                        .map(|i| Ok((i, sample(i, gpu.as_ref())?)))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a corpus worker panicked"))
            })
            .collect()
    });
    let mut traces = vec![];
    for r in per_worker {
        traces.extend(r?);
    }
    traces.sort_by_key(|(i, _)| *i);
    let mut items: Vec<Item> = traces.into_iter().map(|(_, it)| it).collect();
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
fn teacher_accuracy(
    m: &LoadedModel,
    gpu: Option<&model::llama_gpu::GpuLlama>,
    held: &[Item],
) -> Result<serde_json::Value> {
    let v = m.model.config.vocab_size;
    let mut per: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for it in held.iter().filter(|i| i.kind != "teacher") {
        let t = it.tokens.len();
        let greedy: Vec<u32> = match gpu {
            Some(g) => {
                let logits = g.forward(&it.tokens, &mut g.new_cache(1, t)?)?;
                g.argmax(&logits, t)?
            }
            None => m
                .model
                .forward(&it.tokens, &mut m.model.new_cache(), true)?
                .chunks_exact(v)
                .map(model::sampling::argmax)
                .collect(),
        };
        let ok = (it.answer_start..t).all(|pos| greedy[pos - 1] == it.tokens[pos]);
        let e = per.entry(it.kind.clone()).or_default();
        e.0 += ok as usize;
        e.1 += 1;
    }
    Ok(serde_json::json!(per
        .into_iter()
        .map(|(k, (ok, n))| (k, ok as f64 / n.max(1) as f64))
        .collect::<std::collections::BTreeMap<_, _>>()))
}
