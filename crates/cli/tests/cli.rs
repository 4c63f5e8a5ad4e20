//! The `hybrid` binary end to end: JSON generation on the real model, and bad input giving
//! one line on stderr and a non-zero exit.
use std::path::PathBuf;
use std::process::{Command, Output};

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

/// Asserts a failed run whose stderr is exactly one line naming `what`.
fn fails_with(out: Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "expected one line, got: {err}"
    );
    assert!(
        err.starts_with("error: ") && err.contains(what),
        "expected '{what}' in: {err}"
    );
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
        "cuda:0",
    );
}
