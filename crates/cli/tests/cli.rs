//! The `hybrid` binary end to end: JSON generation on the real model, and bad input giving
//! one line on stderr and a non-zero exit.
use std::path::PathBuf;
use std::process::{Command, Output};

mod common;
use common::fails_with;

fn hybrid(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hybrid"))
        .args(["--threads", "2"])
        .args(args)
        .output()
        .unwrap()
}

fn fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures")
        .join(name);
    p.to_str().unwrap().to_owned()
}

fn model() -> String {
    let p = model::fetch::default_model_path();
    assert!(p.exists(), "run `hybrid fetch` first ({})", p.display());
    p.to_str().unwrap().to_owned()
}

#[test]
fn generate_json_has_prompt_tokens_tokens_and_text() {
    let out = hybrid(&[
        "generate",
        "--model",
        &model(),
        "--prompt",
        "Hello",
        "--chat",
        "--max-tokens",
        "6",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["prompt_tokens"].as_array().unwrap().len() > 5);
    assert!(!j["tokens"].as_array().unwrap().is_empty());
    assert!(j["text"].is_string());
}

#[test]
fn inspect_reports_layers_and_kv_bytes() {
    let out = hybrid(&["inspect", "--model", &model(), "--json"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["config"]["n_layers"], 30);
    // 2 (K,V) x 30 layers x 3 kv heads x 64 dims x 2 bytes
    assert_eq!(j["kv_bytes_per_token_f16"], 23040);
    assert_eq!(j["layers"].as_array().unwrap().len(), 30);
}

#[test]
fn missing_file() {
    fails_with(
        hybrid(&[
            "generate",
            "--model",
            "/nonexistent/x.gguf",
            "--prompt",
            "hi",
        ]),
        "does not exist",
    );
}

#[test]
fn non_gguf_file() {
    fails_with(
        hybrid(&[
            "generate",
            "--model",
            &fixture("llamacpp_tokens.json"),
            "--prompt",
            "hi",
        ]),
        "GGUF magic",
    );
}

#[test]
fn truncated_gguf() {
    let full = std::fs::read(model()).unwrap();
    let p = std::env::temp_dir().join(format!("hybrid-cli-trunc-{}.gguf", std::process::id()));
    std::fs::write(&p, &full[..full.len() / 3]).unwrap();
    let out = hybrid(&["generate", "--model", p.to_str().unwrap(), "--prompt", "hi"]);
    std::fs::remove_file(&p).unwrap();
    fails_with(out, "truncated");
}

#[test]
fn unknown_architecture() {
    fails_with(
        hybrid(&[
            "generate",
            "--model",
            &fixture("unknown_arch.gguf"),
            "--prompt",
            "hi",
        ]),
        "architecture 'mamba9'",
    );
}

#[test]
fn prompt_longer_than_context() {
    let long = "hello ".repeat(9000);
    fails_with(
        hybrid(&["generate", "--model", &model(), "--prompt", &long]),
        "context is 8192 tokens",
    );
}

#[test]
fn bad_sampling_and_device() {
    fails_with(
        hybrid(&[
            "generate",
            "--model",
            &model(),
            "--prompt",
            "hi",
            "--top-p",
            "0",
        ]),
        "top-p",
    );
    fails_with(
        hybrid(&[
            "generate",
            "--model",
            &model(),
            "--prompt",
            "hi",
            "--device",
            "cuda:0",
        ]),
        // No GPU on CI: one sentence saying so; on a GPU machine: that models do not run there yet.
        if tensor::cuda::libs::driver_present() {
            "not implemented yet"
        } else {
            "no NVIDIA driver"
        },
    );
    // Option parsing errors are clap's (its usual usage hint follows the first line).
    let out = hybrid(&[
        "generate",
        "--model",
        &model(),
        "--prompt",
        "hi",
        "--device",
        "tpu",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .lines()
        .next()
        .unwrap()
        .contains("unknown device 'tpu'"));
}

#[test]
fn inspect_shows_each_hybrid_layer_and_its_cache_cost() {
    use model::hybrid::{HybridConfig, HybridModel};
    let cfg = HybridConfig {
        sliding_window: Some(16),
        max_position_embeddings: 4096,
        linear_gate_rank: 8,
        linear_chunk_size: 16,
        rope_theta: 1e4,
        ..HybridConfig::small("fa,swa,gdn,kda,gla", 50).unwrap()
    };
    let dir = std::env::temp_dir().join(format!("hybrid-inspect-{}", std::process::id()));
    HybridModel::init(cfg, 0).unwrap().save(&dir).unwrap();
    let out = hybrid(&[
        "inspect",
        "--model",
        dir.to_str().unwrap(),
        "--json",
        "--context",
        "1000",
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let types: Vec<&str> = j["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["FA", "SWA", "GDN", "KDA", "GLA"]);
    // FA: K and V, 2 kv heads x 8 dims x 2 bytes per token; SWA: 16 tokens of the same.
    assert_eq!(j["cache_bytes_per_token"], 2 * 2 * 8 * 2);
    assert_eq!(
        j["layers"][1]["cache_bytes_per_sequence"],
        16 * 2 * 2 * 8 * 2
    );
    // GDN state: 2 heads x 8 x 8 f32, plus 3 history rows of q, k, v (2x8 each) at 2 bytes.
    assert_eq!(
        j["layers"][2]["cache_bytes_per_sequence"],
        2 * 8 * 8 * 4 + 3 * (3 * 16) * 2
    );
}

#[test]
fn convert_rejects_budgets_that_do_not_fit_and_writes_nothing() {
    let dir = std::env::temp_dir().join(format!("hybrid-cv-bad-{}", std::process::id()));
    let d = dir.to_str().unwrap();
    let m = model();
    fails_with(
        hybrid(&[
            "convert",
            "--teacher",
            &m,
            "--budget",
            "fa=20,swa=20",
            "--out",
            d,
            "--device",
            "cpu",
        ]),
        "asks for 40 softmax layers but the teacher has 30",
    );
    fails_with(
        hybrid(&[
            "convert",
            "--teacher",
            &m,
            "--budget",
            "fa=2,swa=4",
            "--preset",
            "full",
            "--out",
            d,
            "--device",
            "cpu",
        ]),
        "--preset full trains on a GPU",
    );
    fails_with(
        hybrid(&[
            "convert",
            "--teacher",
            &m,
            "--budget",
            "gdn=3",
            "--out",
            d,
            "--device",
            "cpu",
        ]),
        "unknown key 'gdn'",
    );
    fails_with(
        hybrid(&[
            "convert",
            "--teacher",
            &m,
            "--budget",
            "cost=2",
            "--out",
            d,
            "--device",
            "cpu",
        ]),
        "cost fraction must be in (0, 1]",
    );
    fails_with(
        hybrid(&[
            "convert",
            "--teacher",
            &fixture("tiny-llama.gguf"),
            "--budget",
            "fa=1",
            "--out",
            d,
            "--device",
            "cpu",
        ]),
        "tokenizer",
    );
    // Teachers that are not supported full-attention models.
    fails_with(
        hybrid(&[
            "convert",
            "--teacher",
            &fixture("unknown_arch.gguf"),
            "--budget",
            "fa=1",
            "--out",
            d,
            "--device",
            "cpu",
        ]),
        "architecture 'mamba9' is not supported",
    );
    let folder = std::env::temp_dir().join(format!("hybrid-cv-folder-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    fails_with(
        hybrid(&[
            "convert",
            "--teacher",
            folder.to_str().unwrap(),
            "--budget",
            "fa=1",
            "--out",
            d,
            "--device",
            "cpu",
        ]),
        "the teacher must be a full-attention model in a GGUF file",
    );
    let _ = std::fs::remove_dir_all(&folder);
    assert!(!dir.exists(), "a rejected run must not create its folder");
}

/// The first stages on the real teacher, then a rerun that resumes (skips them) and a rerun
/// with other settings that is refused.
#[test]
fn convert_runs_resumes_and_refuses_mixed_settings() {
    let dir = std::env::temp_dir().join(format!("hybrid-cv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let m = model();
    let args = [
        "convert",
        "--teacher",
        &m,
        "--budget",
        "fa=2,swa=4",
        "--out",
        d,
        "--device",
        "cpu",
        "--until",
        "transfer",
    ];
    // A disk that fills up during the corpus stage (a 64 KiB file size limit; SIGXFSZ ignored
    // so that the write fails with an error instead of killing the process): one clear error,
    // the finished teacher stage intact, no half-written corpus.
    let limited = Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f 128; exec "$@""#)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_hybrid"))
        .args(["--threads", "2"])
        .args(args)
        .output()
        .unwrap();
    fails_with(limited, "cannot write");
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("stages.json")).unwrap()).unwrap();
    assert_eq!(st["done"], serde_json::json!(["teacher"]));
    assert!(dir.join("teacher.json").exists());
    assert!(!dir.join("corpus").exists(), "a half-written corpus stage");
    // The rerun resumes after the teacher stage and finishes.
    let out = hybrid(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = |f: &str| {
        std::fs::read_to_string(dir.join("corpus").join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let (train, held) = (lines("train.jsonl"), lines("heldout.jsonl"));
    assert_eq!(train.len() + held.len(), 24 + 3 * 20);
    for kind in ["teacher", "passkey", "kv_recall", "multi_hop"] {
        assert!(held.iter().any(|i| i["kind"] == kind), "no held-out {kind}");
    }
    for it in train.iter().chain(&held) {
        let n = it["tokens"].as_array().unwrap().len();
        assert!(it["answer_start"].as_u64().unwrap() < n as u64);
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("corpus/corpus.json")).unwrap())
            .unwrap();
    assert!(
        summary["teacher_heldout_accuracy"]["passkey"]
            .as_f64()
            .unwrap()
            > 0.5
    );
    let tr: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("candidates/transfer.json")).unwrap(),
    )
    .unwrap();
    for kind in ["swa", "gdn"] {
        let layers = tr["kinds"][kind].as_array().unwrap();
        assert_eq!(layers.len(), 30);
        let mean = |k: &str| layers.iter().map(|l| l[k].as_f64().unwrap()).sum::<f64>() / 30.0;
        assert!(
            mean("rel_mse_after") < mean("rel_mse_before"),
            "{kind}: transfer did not help"
        );
        assert!(dir.join(format!("candidates/{kind}.safetensors")).exists());
    }
    // Resume: every stage is skipped.
    let t = std::time::Instant::now();
    let out = hybrid(&args);
    assert!(out.status.success());
    assert!(
        t.elapsed().as_secs_f64() < 10.0,
        "the rerun redid finished stages"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stages done: teacher, corpus, transfer.")
    );
    fails_with(
        hybrid(&[
            "convert",
            "--teacher",
            &m,
            "--budget",
            "fa=3",
            "--out",
            d,
            "--device",
            "cpu",
        ]),
        "holds a run with other settings",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The whole quick pipeline on the real teacher (what `make demo` runs): a report that compares
/// the learned layout with the same-budget baselines, and a hybrid folder that loads.
#[test]
fn convert_quick_produces_a_report_and_a_loadable_hybrid() {
    let dir = std::env::temp_dir().join(format!("hybrid-cv-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let m = model();
    let out = hybrid(&[
        "convert",
        "--teacher",
        &m,
        "--budget",
        "fa=2,swa=4",
        "--out",
        d,
        "--device",
        "cpu",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for row in [
        "teacher (all FA)",
        "learned, distilled",
        "uniform interleave",
        "first/last FA",
        "Single-FA heatmap",
    ] {
        assert!(md.contains(row), "report lacks '{row}'");
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let rows = j["rows"].as_array().unwrap();
    let learned = rows
        .iter()
        .find(|r| r["name"] == "learned, distilled")
        .unwrap();
    let layout: Vec<String> = serde_json::from_value(learned["layout"].clone()).unwrap();
    assert_eq!(layout.iter().filter(|k| *k == "fa").count(), 2);
    assert_eq!(layout.iter().filter(|k| *k == "swa").count(), 4);
    let teacher_cache = rows[0]["cache_bytes"][1].as_f64().unwrap();
    assert!(learned["cache_bytes"][1].as_f64().unwrap() < 0.15 * teacher_cache);
    let h = model::hybrid::HybridModel::load(&dir.join("model")).unwrap();
    assert_eq!(
        h.config
            .layer_names()
            .unwrap()
            .iter()
            .filter(|k| *k == "FA")
            .count(),
        2
    );
    assert!(
        dir.join("model/tokenizer.json").exists()
            && dir.join("model/tokenizer_config.json").exists()
    );
    // Report contents beyond the table: retrieval by distance, decode speed, rank fidelity
    // over at least 8 layouts, plots.
    for section in [
        "Retrieval accuracy by distance",
        "Decode speed",
        "Rank fidelity of the supernet",
        "at 128K",
    ] {
        assert!(md.contains(section), "report lacks '{section}'");
    }
    let fid: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("fidelity.json")).unwrap()).unwrap();
    assert!(fid["layouts"].as_array().unwrap().len() >= 8);
    let tau = fid["kendall_tau_kl"].as_f64().unwrap();
    assert!((-1.0..=1.0).contains(&tau));
    let speed = &j["decode_tokens_per_s"];
    for who in ["teacher", "hybrid"] {
        assert!(speed[who]["32768"].as_f64().unwrap() > 0.0);
    }
    for plot in [
        "fa_heatmap",
        "retrieval_by_distance",
        "cache_vs_context",
        "fidelity",
    ] {
        let bytes = std::fs::read(dir.join(format!("plots/{plot}.png"))).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{plot}.png is not a PNG");
    }
    // The saved hybrid is a model every text command takes: chat-templated generation.
    let folder = dir.join("model");
    let out = hybrid(&[
        "generate",
        "--model",
        folder.to_str().unwrap(),
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--max-tokens",
        "8",
        "--format",
        "json",
        "--device",
        "cpu",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!g["tokens"].as_array().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench context`: the teacher and a layout of it side by side (JSON), and bad layouts named.
#[test]
fn bench_context_measures_layouts_and_names_bad_ones() {
    let m = model();
    let layout = format!("FS{}", ".".repeat(28));
    let out = hybrid(&[
        "bench",
        "context",
        "--model",
        &m,
        "--device",
        "cpu",
        "--layout",
        "teacher",
        "--layout",
        &layout,
        "--contexts",
        "256,1024",
        "--steps",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = j["results"].as_array().unwrap();
    assert_eq!(r.len(), 4);
    for x in r {
        assert!(x["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    }
    // At 1024 tokens the layout (1 FA layer, 1 SWA of 64, 28 GDN states) caches under 30%.
    assert!(r[3]["cache_bytes"].as_f64().unwrap() < 0.3 * r[1]["cache_bytes"].as_f64().unwrap());
    fails_with(
        hybrid(&[
            "bench", "context", "--model", &m, "--device", "cpu", "--layout", "FS",
        ]),
        "has 2 layers; the model has 30",
    );
    fails_with(
        hybrid(&[
            "bench",
            "context",
            "--model",
            &m,
            "--device",
            "cpu",
            "--layout",
            &format!("X{}", ".".repeat(29)),
        ]),
        "'X' is not a layer type",
    );
}

/// `serve --speculative` settings are checked before anything listens.
#[test]
fn serve_refuses_bad_speculative_settings() {
    let m = model();
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--model", &m, "--device", "cpu", "--port", "0"];
        args.extend_from_slice(extra);
        hybrid(&args)
    };
    fails_with(
        serve(&["--speculative", "medusa"]),
        "--speculative must be 'ngram' or 'model:PATH'",
    );
    fails_with(
        serve(&["--speculative", "ngram", "--num-speculative-tokens", "0"]),
        "--num-speculative-tokens must be between 1 and 16",
    );
    fails_with(
        serve(&["--speculative", "model:/nonexistent/draft.gguf"]),
        "cannot load the draft model /nonexistent/draft.gguf",
    );
}
