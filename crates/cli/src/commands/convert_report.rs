//! The last two stages of `hybrid convert`:
//! - `fidelity`: the supernet's rank fidelity. At least 8 layouts of the budget (the learned
//!   one, the three baselines, random placements) are scored on the supernet's shared weights,
//!   then each is distilled alone for a few steps and scored again; Kendall's tau between the
//!   two scores says whether ranking layouts on the supernet predicts their ranking after
//!   distillation (research/placement.md: the stochastic supernet's premise).
//! - `report`: Markdown + JSON + PNG plots comparing the teacher, the learned layout and the
//!   same-budget baselines: held-out KL and perplexity, greedy agreement with the teacher,
//!   retrieval accuracy by distance, cache bytes at 4K / 32K / 128K, measured decode tokens/s
//!   at 4K and 32K, the single-FA heatmap, and tau.
use super::convert::{
    distil_settings, layout_string, load_supernet, new_eval_set, read_items, stage_dir,
    supernet_spec, train_seqs, write_atomic, Preset,
};
use super::convert_plots as plots;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use model::hybrid::HybridModel;
use model::LoadedModel;
use std::path::Path;
use train::corpus::Item;
use train::search::{EvalSet, Probe, Score};
use train::supernet::Supernet;
use train::tasks::rng::SplitMix64;

/// What both stages need from the run.
pub(crate) struct RunCtx<'a> {
    pub m: &'a LoadedModel,
    pub out: &'a Path,
    pub teacher_path: &'a Path,
    pub budget: &'a str,
    pub preset: Preset,
    pub seed: u64,
    pub fa: usize,
    pub swa: usize,
    pub best: Vec<String>,
    pub device: tensor::Device,
}

/// The report's evaluation set: every held-out retrieval item (all distances, for accuracy
/// by distance) and more teacher traces than the search used.
fn report_eval_set(
    teacher: &HybridModel,
    held: &[Item],
    p: Preset,
    device: tensor::Device,
) -> Result<EvalSet> {
    let (n_traces, trace_len) = match p {
        Preset::Quick => (2, 96),
        Preset::Full => (16, 384),
    };
    let traces = held
        .iter()
        .filter(|i| i.kind == "teacher")
        .take(n_traces)
        .map(|i| {
            let end = i.tokens.len().min(i.answer_start + trace_len);
            (i.tokens[..end].to_vec(), i.answer_start)
        })
        .collect();
    let probes = held
        .iter()
        .filter(|i| i.kind != "teacher")
        .map(|i| Probe {
            kind: i.kind.clone(),
            tokens: i.tokens.clone(),
            answer_start: i.answer_start,
            distance: i.distance,
        })
        .collect();
    new_eval_set(teacher, traces, probes, device)
}

/// `k` distinct random placements of the budget (fa FA, swa SWA, the rest GDN).
fn random_layouts(n: usize, fa: usize, swa: usize, k: usize, seed: u64) -> Vec<Vec<String>> {
    let mut rng = SplitMix64::new(seed ^ 0x7a0);
    let mut out: Vec<Vec<String>> = vec![];
    let mut tries = 0;
    while out.len() < k && tries < 100 * k {
        tries += 1;
        let mut l: Vec<String> = (0..n)
            .map(|i| {
                if i < fa {
                    "fa"
                } else if i < fa + swa {
                    "swa"
                } else {
                    "gdn"
                }
                .to_string()
            })
            .collect();
        rng.shuffle(&mut l);
        if !out.contains(&l) {
            out.push(l);
        }
    }
    out
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
pub(crate) struct Fidelity {
    pub name: String,
    pub layout: Vec<String>,
    pub supernet: Score,
    pub distilled: Score,
}

/// Stage `fidelity`: writes DIR/fidelity.json.
pub(crate) fn fidelity_stage(c: &RunCtx) -> Result<()> {
    // The supernet's weights, loaded once on the CPU; each layout trains a copy of them.
    let sn0 = load_supernet(c.m, &c.out.join("supernet"), c.preset, tensor::Device::Cpu)?;
    let n = sn0.teacher.blocks.len();
    let held = read_items(&c.out.join("corpus/heldout.jsonl"))?;
    let set = report_eval_set(&sn0.teacher, &held, c.preset, c.device)?;
    let mut layouts: Vec<(String, Vec<String>)> = vec![("learned".into(), c.best.clone())];
    layouts.extend(train::search::baselines(n, c.fa, c.swa, "gdn"));
    let extra = 8usize.saturating_sub(layouts.len());
    let random: Vec<Vec<String>> = random_layouts(n, c.fa, c.swa, extra + 4, c.seed)
        .into_iter()
        .filter(|l| !layouts.iter().any(|(_, x)| x == l))
        .take(extra)
        .collect();
    for (j, l) in random.into_iter().enumerate() {
        layouts.push((format!("random {}", j + 1), l));
    }
    let seqs = train_seqs(c.out)?;
    let mut spec = supernet_spec(c.preset, c.seed ^ 0xf1d);
    distil_settings(&mut spec, c.preset);
    spec.steps = match c.preset {
        Preset::Quick => 8,
        Preset::Full => 40,
    };
    let steps = spec.steps;
    let pb = ProgressBar::new((layouts.len() * (steps + 2)) as u64);
    pb.set_style(
        ProgressStyle::with_template("fidelity: {msg} {bar:30} {pos}/{len} ETA {eta}").unwrap(),
    );
    let mut rows = vec![];
    for (name, l) in &layouts {
        pb.set_message(name.clone());
        // Each layout starts from the supernet's weights: training one moves the shared ones.
        let mut sn = Supernet::new(
            sn0.teacher.clone_model(),
            sn0.cands
                .iter()
                .map(|(k, m)| (k.clone(), m.clone_model()))
                .collect(),
        )?;
        if let tensor::Device::Cuda(o) = c.device {
            sn.use_gpu(o)?;
        }
        let before = sn.score(&set, l)?;
        pb.inc(1);
        let mut spec = spec.clone();
        spec.fixed = Some(l.clone());
        sn.train(&seqs, &spec, |_| pb.inc(1))?;
        let after = sn.score(&set, l)?;
        pb.inc(1);
        rows.push(Fidelity {
            name: name.clone(),
            layout: l.clone(),
            supernet: before,
            distilled: after,
        });
    }
    pb.finish_and_clear();
    let (tk, tc) = taus(&rows);
    write_atomic(
        &c.out.join("fidelity.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "distil_steps": steps, "eval_tokens": set.tokens(),
            "kendall_tau_kl": tk, "kendall_tau_combined": tc, "layouts": rows,
        }))?
        .as_bytes(),
    )?;
    eprintln!(
        "fidelity: {} layouts; Kendall tau (supernet vs distilled) {} on KL, {} on KL + answer NLL",
        rows.len(),
        fmt_opt(tk),
        fmt_opt(tc)
    );
    Ok(())
}

fn taus(rows: &[Fidelity]) -> (Option<f64>, Option<f64>) {
    let col = |f: &dyn Fn(&Score) -> f64, after: bool| -> Vec<f64> {
        rows.iter()
            .map(|r| f(if after { &r.distilled } else { &r.supernet }))
            .collect()
    };
    let kl = |s: &Score| s.kl;
    let comb = |s: &Score| s.combined();
    (
        train::search::kendall_tau(&col(&kl, false), &col(&kl, true)),
        train::search::kendall_tau(&col(&comb, false), &col(&comb, true)),
    )
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{v:.2}"))
}

/// One row of the report's main table.
#[derive(serde::Serialize)]
struct Row {
    name: String,
    layout: Vec<String>,
    score: Score,
    perplexity: f64,
    greedy_agreement: f64,
    cache_bytes: [usize; 3],
}

const CONTEXTS: [usize; 3] = [4096, 32768, 131072];

/// Stage `report`: DIR/report.md, DIR/report.json and DIR/plots/*.png.
pub(crate) fn report_stage(c: &RunCtx) -> Result<()> {
    let mut sn = load_supernet(c.m, &c.out.join("supernet"), c.preset, c.device)?;
    let held = read_items(&c.out.join("corpus/heldout.jsonl"))?;
    let set = report_eval_set(&sn.teacher, &held, c.preset, c.device)?;
    let n = sn.teacher.blocks.len();
    let teacher = sn.teacher.clone_model();
    let distilled = HybridModel::load(&c.out.join("model"))?;
    let mut entries: Vec<(String, Vec<String>)> = vec![
        ("teacher (all FA)".into(), vec!["fa".to_string(); n]),
        ("learned (supernet)".into(), c.best.clone()),
    ];
    entries.extend(
        train::search::baselines(n, c.fa, c.swa, "gdn")
            .into_iter()
            .map(|(k, l)| (format!("{k} (supernet)"), l)),
    );
    let pb = ProgressBar::new(entries.len() as u64 + 5);
    pb.set_style(
        ProgressStyle::with_template("report: {msg} {bar:30} {pos}/{len} ETA {eta}").unwrap(),
    );
    let row = |sn: &mut Supernet, name: &str, l: &[String]| -> Result<Row> {
        let score = sn.score(&set, l)?;
        Ok(Row {
            name: name.into(),
            layout: l.to_vec(),
            perplexity: score.trace_nll.exp(),
            greedy_agreement: score.greedy_agreement,
            cache_bytes: sn.with_layout(l, |mm| CONTEXTS.map(|ctx| mm.cache_bytes(ctx, 2)))?,
            score,
        })
    };
    let mut rows: Vec<Row> = vec![];
    for (name, l) in &entries {
        pb.set_message(name.clone());
        rows.push(row(&mut sn, name, l)?);
        pb.inc(1);
        if rows.len() == 2 {
            pb.set_message("learned, distilled");
            // The distilled hybrid as a one-candidate supernet: its FA layers are the
            // teacher's, every other layer is its own mixer.
            let mut dsn = Supernet::new(
                teacher.clone_model(),
                vec![("distilled".into(), distilled.clone_model())],
            )?;
            if let tensor::Device::Cuda(o) = c.device {
                dsn.use_gpu(o)?;
            }
            let dl: Vec<String> = c
                .best
                .iter()
                .map(|k| {
                    if k == "fa" {
                        k.clone()
                    } else {
                        "distilled".into()
                    }
                })
                .collect();
            let mut r = row(&mut dsn, "learned, distilled", &dl)?;
            r.layout = c.best.clone();
            r.cache_bytes = CONTEXTS.map(|ctx| distilled.cache_bytes(ctx, 2));
            rows.push(r);
        }
    }
    // Decode speed of the teacher and the distilled hybrid (every layout of the budget has
    // the same layer types, so the same speed).
    let steps = if c.preset == Preset::Quick { 4 } else { 64 };
    let mut speed = vec![];
    for (name, mm) in [("teacher", &teacher), ("hybrid", &distilled)] {
        let mut per = vec![];
        for ctx in [4096usize, 32768] {
            pb.set_message(format!("decode speed {name} at {ctx}"));
            per.push(model::hybrid::speed::decode_tokens_per_s(
                mm, c.device, ctx, steps,
            )?);
            pb.inc(1);
        }
        speed.push((name, per));
    }
    pb.finish_and_clear();
    let fid: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(c.out.join("fidelity.json"))
            .context("fidelity.json is missing")?,
    )?;
    let fid_rows: Vec<Fidelity> = serde_json::from_value(fid["layouts"].clone())?;
    let searched: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(c.out.join("search.json")).context("search.json is missing")?,
    )?;
    let heatmap: Vec<Score> = searched["result"]["fa_heatmap"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|e| serde_json::from_value(e["score"].clone()).ok())
                .collect()
        })
        .unwrap_or_default();

    stage_dir(c.out, "plots", |tmp| {
        plots::heatmap(&tmp.join("fa_heatmap.png"), &heatmap)?;
        let curves: Vec<(String, Vec<(usize, f64)>)> = rows
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.score.by_distance.iter().map(|(d, v)| (*d, v.1)).collect(),
                )
            })
            .collect();
        plots::retrieval_by_distance(&tmp.join("retrieval_by_distance.png"), &curves)?;
        plots::cache_vs_context(
            &tmp.join("cache_vs_context.png"),
            &CONTEXTS,
            &[
                ("teacher".into(), rows[0].cache_bytes.to_vec()),
                ("hybrid".into(), rows[2].cache_bytes.to_vec()),
            ],
        )?;
        let pts: Vec<(String, f64, f64)> = fid_rows
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.supernet.combined(),
                    r.distilled.combined(),
                )
            })
            .collect();
        plots::fidelity(
            &tmp.join("fidelity.png"),
            &pts,
            fid["kendall_tau_combined"].as_f64(),
        )?;
        Ok(())
    })?;

    let md = markdown(c, &rows, &speed, &fid, &fid_rows, &heatmap);
    let j = serde_json::json!({
        "teacher": c.teacher_path.display().to_string(), "budget": c.budget, "fa": c.fa, "swa": c.swa,
        "device": c.device.to_string(), "eval_tokens": set.tokens(),
        "rows": rows, "contexts": CONTEXTS,
        "decode_tokens_per_s": speed.iter().map(|(k, v)| (k.to_string(), serde_json::json!({"4096": v[0], "32768": v[1]}))).collect::<serde_json::Map<_, _>>(),
        "kendall_tau_kl": fid["kendall_tau_kl"], "kendall_tau_combined": fid["kendall_tau_combined"],
    });
    write_atomic(
        &c.out.join("report.json"),
        serde_json::to_string_pretty(&j)?.as_bytes(),
    )?;
    write_atomic(&c.out.join("report.md"), md.as_bytes())
}

fn markdown(
    c: &RunCtx,
    rows: &[Row],
    speed: &[(&str, Vec<f64>)],
    fid: &serde_json::Value,
    fid_rows: &[Fidelity],
    heatmap: &[Score],
) -> String {
    let mut md = format!(
        "# hybrid convert report\n\nTeacher: `{}` ({} layers). Budget: `{}` ({} FA + {} SWA, the rest GDN). Preset: {:?}. Device: {}.\n\n",
        c.teacher_path.display(), rows[0].layout.len(), c.budget, c.fa, c.swa, c.preset, c.device
    );
    md.push_str("Held-out scores (lower KL, perplexity and answer NLL are better; retrieval accuracy is exact answers under teacher forcing; greedy agreement is the share of trace positions where the argmax is the teacher's). Baselines are evaluated on the supernet's shared weights; the fidelity section below distils each of them too.\n\n");
    md.push_str("| layout | layers | held-out KL | perplexity | greedy agreement | answer NLL | retrieval accuracy | cache at 4K | at 32K | at 128K | 32K vs teacher |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    let tc = rows[0].cache_bytes[1] as f64;
    for r in rows {
        md.push_str(&format!(
            "| {} | `{}` | {:.4} | {:.2} | {:.1}% | {:.3} | {:.2} | {} | {} | {} | {:.1}% |\n",
            r.name,
            layout_string(&r.layout),
            r.score.kl,
            r.perplexity,
            100.0 * r.greedy_agreement,
            r.score.retrieval_nll(),
            r.score.retrieval_acc(),
            mib(r.cache_bytes[0]),
            mib(r.cache_bytes[1]),
            mib(r.cache_bytes[2]),
            100.0 * r.cache_bytes[1] as f64 / tc
        ));
    }
    md.push_str("\n## Retrieval accuracy by distance\n\nDistance: filler sentences (about 18 tokens each) between the fact and the question. ![retrieval by distance](plots/retrieval_by_distance.png)\n\n| layout |");
    let dists: Vec<usize> = rows[0].score.by_distance.keys().copied().collect();
    for d in &dists {
        md.push_str(&format!(" {d} |"));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(dists.len()));
    md.push('\n');
    for r in rows {
        md.push_str(&format!("| {} |", r.name));
        for d in &dists {
            match r.score.by_distance.get(d) {
                Some(v) => md.push_str(&format!(" {:.2} (n={}) |", v.1, v.2)),
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    md.push_str(&format!(
        "\n## Decode speed ({}, batch 1, caches filled to the context)\n\n| model | tokens/s at 4K | at 32K |\n|---|---|---|\n",
        c.device
    ));
    for (name, v) in speed {
        md.push_str(&format!("| {name} | {:.1} | {:.1} |\n", v[0], v[1]));
    }
    if speed.len() == 2 {
        md.push_str(&format!(
            "\nHybrid / teacher decode speed: {:.2}x at 4K, {:.2}x at 32K.\n",
            speed[1].1[0] / speed[0].1[0],
            speed[1].1[1] / speed[0].1[1]
        ));
    }
    md.push_str(&format!(
        "\n## Rank fidelity of the supernet\n\n{} layouts of the budget scored on the supernet's weights, then each distilled alone for {} steps and scored again. Kendall tau (supernet vs distilled): **{}** on held-out KL, **{}** on KL + answer NLL. ![fidelity](plots/fidelity.png)\n\n| layout | layers | supernet KL | distilled KL | supernet KL+NLL | distilled KL+NLL | distilled retrieval accuracy |\n|---|---|---|---|---|---|---|\n",
        fid_rows.len(),
        fid["distil_steps"],
        fmt_opt(fid["kendall_tau_kl"].as_f64()),
        fmt_opt(fid["kendall_tau_combined"].as_f64())
    ));
    for r in fid_rows {
        md.push_str(&format!(
            "| {} | `{}` | {:.4} | {:.4} | {:.3} | {:.3} | {:.2} |\n",
            r.name,
            layout_string(&r.layout),
            r.supernet.kl,
            r.distilled.kl,
            r.supernet.combined(),
            r.distilled.combined(),
            r.distilled.retrieval_acc()
        ));
    }
    md.push_str("\n## Single-FA heatmap\n\nLayer i the only FA layer, the rest GDN (supernet weights): KL and answer NLL per retrieval kind; which layers matter for which ability. ![heatmap](plots/fa_heatmap.png)\n\n| layer | KL |");
    let kinds: Vec<String> = heatmap
        .first()
        .map(|s| s.retrieval.keys().cloned().collect())
        .unwrap_or_default();
    for k in &kinds {
        md.push_str(&format!(" {k} NLL |"));
    }
    md.push_str("\n|---|---|");
    md.push_str(&"---|".repeat(kinds.len()));
    md.push('\n');
    for (i, s) in heatmap.iter().enumerate() {
        md.push_str(&format!("| {i} | {:.4} |", s.kl));
        for k in &kinds {
            md.push_str(&format!(
                " {:.3} |",
                s.retrieval.get(k).map_or(f64::NAN, |v| v.0)
            ));
        }
        md.push('\n');
    }
    md
}

fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}
