//! Crash safety of `hybrid convert` (opt-in, about 20 minutes on 2 cores:
//! `cargo test --release -p hybrid-cli --test convert_kill -- --ignored --nocapture`).
//!
//! A quick conversion of a small teacher (SmolLM2's tokenizer and chat template, 6 random
//! layers of width 64) runs once uninterrupted; then, 20 times, a fresh run is killed with
//! SIGKILL at a random moment and rerun until it finishes. Every resumed run must end with the
//! uninterrupted run's report (every number but wall-clock seconds), and no stage may be left
//! half-written under its final name.
#[path = "../../model/tests/common/gguf_writer.rs"]
mod gguf_writer;
use gguf_writer::{GgufWriter, ALIGN};
use model::gguf::{Gguf, Value};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// SmolLM2's tokenizer and chat template over a small random Llama.
fn tiny_teacher(path: &Path) {
    let src = Gguf::open(&model::fetch::default_model_path()).expect("run `hybrid fetch` first");
    let (d, heads, kv, ffn, layers) = (64usize, 4usize, 2usize, 128usize, 6usize);
    let hd = d / heads;
    let mut w = GgufWriter::default();
    w.str("general.architecture", "llama")
        .u32("general.alignment", ALIGN as u32)
        .u32("llama.embedding_length", d as u32)
        .u32("llama.attention.head_count", heads as u32)
        .u32("llama.attention.head_count_kv", kv as u32)
        .u32("llama.block_count", layers as u32)
        .u32("llama.feed_forward_length", ffn as u32)
        .u32("llama.context_length", 2048)
        .u32("llama.rope.dimension_count", hd as u32)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .f32("llama.rope.freq_base", 10000.0);
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
    ] {
        match src.get(key) {
            None => {}
            Some(Value::String(s)) => {
                w.str(key, s);
            }
            Some(Value::Bool(b)) => {
                w.bool(key, *b);
            }
            Some(Value::Array(a)) if a.first().is_some_and(|v| v.as_str().is_some()) => {
                let v: Vec<String> = a.iter().map(|v| v.as_str().unwrap().to_string()).collect();
                w.strs(key, &v);
            }
            Some(Value::Array(a)) => {
                let v: Vec<i32> = a.iter().map(|v| v.as_u64().unwrap() as i32).collect();
                w.i32s(key, &v);
            }
            Some(v) => {
                w.u32(key, v.as_u64().unwrap() as u32);
            }
        }
    }
    let vocab = src
        .get("tokenizer.ggml.tokens")
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    let mut r = tensor::rng::SplitMix64::new(42);
    let mut normal = |n: usize, s: f32| -> Vec<f32> {
        (0..n)
            .map(|_| (r.uniform() as f32 - 0.5) * 2.0 * s)
            .collect()
    };
    let ones = vec![1.0f32; d];
    w.tensor_f32("token_embd.weight", &[d, vocab], &normal(d * vocab, 0.1))
        .tensor_f32("output_norm.weight", &[d], &ones);
    for l in 0..layers {
        let b = |n: &str| format!("blk.{l}.{n}.weight");
        w.tensor_f32(&b("attn_norm"), &[d], &ones)
            .tensor_f32(&b("attn_q"), &[d, d], &normal(d * d, 0.15))
            .tensor_f32(&b("attn_k"), &[d, kv * hd], &normal(d * kv * hd, 0.15))
            .tensor_f32(&b("attn_v"), &[d, kv * hd], &normal(d * kv * hd, 0.15))
            .tensor_f32(&b("attn_output"), &[d, d], &normal(d * d, 0.1))
            .tensor_f32(&b("ffn_norm"), &[d], &ones)
            .tensor_f32(&b("ffn_gate"), &[d, ffn], &normal(d * ffn, 0.15))
            .tensor_f32(&b("ffn_up"), &[d, ffn], &normal(d * ffn, 0.15))
            .tensor_f32(&b("ffn_down"), &[ffn, d], &normal(ffn * d, 0.1));
    }
    std::fs::write(path, w.finish()).unwrap();
}

fn convert(teacher: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hybrid"));
    c.args([
        "--threads",
        "2",
        "convert",
        "--budget",
        "fa=1,swa=2",
        "--device",
        "cpu",
    ])
    .arg("--teacher")
    .arg(teacher)
    .arg("--out")
    .arg(out)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

/// The report without wall-clock times (the only thing a resumed run may change).
fn numbers(out: &Path) -> Json {
    fn strip(v: &mut Json) {
        match v {
            Json::Object(m) => {
                m.retain(|k, _| !k.contains("seconds") && !k.ends_with("_s"));
                m.values_mut().for_each(strip);
            }
            Json::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(out.join("report.json"))
        .unwrap_or_else(|e| panic!("{}: no report: {e}", out.display()));
    let mut v: Json = serde_json::from_str(&text).unwrap();
    strip(&mut v);
    v
}

/// No stage folder or file under its final name may be a leftover of a killed write.
fn no_half_written(out: &Path) {
    for e in std::fs::read_dir(out).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".tmp") {
            continue; // a temporary the rerun replaces
        }
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&p).unwrap();
            serde_json::from_str::<Json>(&text)
                .unwrap_or_else(|e| panic!("{}: half-written ({e})", p.display()));
        }
    }
}

#[test]
#[ignore]
fn twenty_kills_at_random_moments_resume_to_the_same_report() {
    let base = std::env::temp_dir().join(format!("hybrid-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let teacher = base.join("teacher.gguf");
    tiny_teacher(&teacher);

    let reference = base.join("uninterrupted");
    let t0 = Instant::now();
    let st = convert(&teacher, &reference).status().unwrap();
    assert!(st.success(), "the uninterrupted run failed");
    let total = t0.elapsed();
    let want = numbers(&reference);
    eprintln!("uninterrupted run: {:.1} s", total.as_secs_f64());

    let kills: usize = std::env::var("HYBRID_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut r = tensor::rng::SplitMix64::new(7);
    let mut log = vec![];
    for k in 0..kills {
        let out: PathBuf = base.join(format!("killed-{k}"));
        let at = total.mul_f64(0.02 + 0.96 * r.uniform());
        let mut child = convert(&teacher, &out).spawn().unwrap();
        std::thread::sleep(at);
        let finished_first = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        no_half_written(&out);
        let done: Vec<String> = std::fs::read_to_string(out.join("stages.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Json>(&s).ok())
            .map(|v| serde_json::from_value(v["done"].clone()).unwrap())
            .unwrap_or_default();
        let st = convert(&teacher, &out).status().unwrap();
        assert!(st.success(), "kill {k} at {at:?}: the rerun failed");
        assert_eq!(
            numbers(&out),
            want,
            "kill {k} at {:.1} s (after stages {done:?}): the resumed report differs",
            at.as_secs_f64()
        );
        eprintln!(
            "kill {k} at {:.1} s after stages {done:?}{}: resumed, same report",
            at.as_secs_f64(),
            if finished_first {
                " (had finished)"
            } else {
                ""
            }
        );
        log.push(serde_json::json!({"kill": k, "at_s": at.as_secs_f64(), "done_before": done}));
        let _ = std::fs::remove_dir_all(&out);
    }
    std::fs::write(
        base.join("kills.json"),
        serde_json::to_string_pretty(&log).unwrap(),
    )
    .unwrap();
    eprintln!(
        "{} kills, every resume gave the same report ({})",
        kills,
        base.display()
    );
    let _ = std::fs::remove_dir_all(&base);
}
