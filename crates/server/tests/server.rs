//! The server on a real port, driven over HTTP, with the real SmolLM2 (its tokenizer and chat
//! template) as the FA model and a hybrid made from it (some layers GDN, some SWA with a small
//! window, so that the prefix cache must restore recurrent and windowed states).
mod common;
use common::*;
use engine::{EngineConfig, ServeModel};
use serde_json::{json, Value};
use std::io::BufRead;
use std::sync::Arc;

fn greedy_is_invariant(m: Arc<ServeModel>) {
    // Reference: no prefix cache, one sequence at a time, whole-prompt prefill.
    let cold = TestServer::start(m.clone(), cold_config());
    let want = run_conversations(&cold, false, 10);
    drop(cold);
    assert!(want.iter().all(|r| r.1 == 0));
    // (The untrained hybrid may end a turn at once; most replies still have text.)
    assert!(
        want.iter().filter(|r| !r.0.is_empty()).count() >= 3,
        "{want:?}"
    );
    // Prefix cache on, prefill in chunks of 7 tokens, both conversations at once; at batch 1
    // in chunks of 64; and both at once under a state budget of 3 MiB, which preempts.
    for (seqs, chunk, state_mib) in [(4, 7, 4096), (1, 64, 4096), (4, 16, 3)] {
        let s = TestServer::start(
            m.clone(),
            EngineConfig {
                max_num_seqs: seqs,
                max_batched_tokens: chunk,
                prefix_cache: true,
                pools: engine::PoolBytes {
                    kv: state_mib << 20,
                    ..EngineConfig::default().pools
                },
                ..Default::default()
            },
        );
        let got = run_conversations(&s, seqs > 1, 10);
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(
                w.0, g.0,
                "{}: greedy reply changed (seqs {seqs}, chunk {chunk})",
                m.name
            );
            assert_eq!(w.2, g.2);
        }
        second_turns_resume(&m.name, &got);
        // The same first turn again: a hit of the whole prompt, same reply.
        let msgs = vec![
            json!({"role": "system", "content": SYSTEM}),
            json!({"role": "user", "content": conversation(0)[0]}),
        ];
        let again = chat(&s, &msgs, 10);
        assert_eq!(again.0, want[0].0);
        assert_eq!(
            again.1, again.2,
            "{}: a repeated prompt is cached whole",
            m.name
        );
        let (status, metrics) = get_text(&format!("{}/metrics", s.url));
        assert_eq!(status, 200);
        if state_mib == 3 && m.name == "smol" {
            // The FA model's KV (46 KB a token in f32) outgrows 3 MiB with two sequences.
            assert!(
                metric(&metrics, "hybrid_preempted_total") > 0.0,
                "{metrics}"
            );
            // ... and it was the key/value pool that overflowed (the first pool listed).
            assert!(
                metric(&metrics, "hybrid_pool_preempted_total") > 0.0,
                "{metrics}"
            );
        }
        assert!(
            metrics.contains("hybrid_prefix_hits_total{model="),
            "{metrics}"
        );
        assert!(metrics.contains("hybrid_cached_tokens_by_layer_type_total"));
    }
}

#[test]
fn greedy_output_is_the_same_cold_cached_chunked_and_batched_fa() {
    greedy_is_invariant(teacher());
}

#[test]
fn greedy_output_is_the_same_cold_cached_chunked_and_batched_hybrid() {
    greedy_is_invariant(hybrid());
}

/// Reads an SSE response: the `data:` payloads up to `[DONE]`.

#[test]
fn streaming_matches_non_streaming_and_reports_usage() {
    let s = TestServer::start(teacher(), EngineConfig::default());
    let msgs = json!([{"role": "user", "content": "Write the word hello three times."}]);
    let (_, plain) = post(
        &format!("{}/v1/chat/completions", s.url),
        &json!({"messages": msgs, "max_tokens": 12, "temperature": 0}),
    );
    let chunks = sse(
        &format!("{}/v1/chat/completions", s.url),
        &json!({"messages": msgs, "max_tokens": 12, "temperature": 0, "stream": true,
                "stream_options": {"include_usage": true}}),
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        usage["completion_tokens"],
        plain["usage"]["completion_tokens"]
    );
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"],
        usage["prompt_tokens"]
    );
    // /v1/completions, streamed, with a stop string.
    let chunks = sse(
        &format!("{}/v1/completions", s.url),
        &json!({"prompt": "One, two, three, four,", "max_tokens": 12, "temperature": 0,
                "stream": true, "stop": [" seven"]}),
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert!(!text.contains(" seven"), "{text}");
    let last = chunks.last().unwrap();
    assert!(["stop", "length"].contains(&last["choices"][0]["finish_reason"].as_str().unwrap()));
    let (status, models) = post(
        &format!("{}/v1/completions", s.url),
        &json!({"prompt": "Hi", "max_tokens": 1}),
    );
    assert_eq!(status, 200, "{models}");
    let mut r = agent().get(&format!("{}/v1/models", s.url)).call().unwrap();
    let v: Value = r.body_mut().read_json().unwrap();
    assert_eq!(v["data"][0]["id"], "smol");
    assert_eq!(get_text(&format!("{}/health", s.url)).0, 200);
}

#[test]
fn bad_requests_get_400_with_a_reason_and_the_server_stays_up() {
    let s = TestServer::start(teacher(), EngineConfig::default());
    let chat_url = format!("{}/v1/chat/completions", s.url);
    let raw = |body: &str| -> (u16, Value) {
        let mut r = agent()
            .post(&chat_url)
            .header("content-type", "application/json")
            .send(body)
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_json().unwrap())
    };
    let msgs = json!([{"role": "user", "content": "Hi"}]);
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"model": "gpt-9", "messages": msgs}),
            "does not exist",
        ),
        (json!({"messages": msgs, "max_tokens": -3}), "at least 1"),
        (
            json!({"messages": msgs, "max_tokens": 10_000_000}),
            "does not fit",
        ),
        (json!({"messages": msgs, "temperature": -1}), "temperature"),
        (json!({"messages": "hello"}), "invalid JSON body"),
        (json!({"messages": []}), "messages is empty"),
        (
            json!({"messages": [{"role": "user", "content": "word ".repeat(9000)}]}),
            "context",
        ),
    ];
    for (body, want) in cases {
        let (status, v) = post(&chat_url, &body);
        assert_eq!(status, 400, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{body}: {msg}");
    }
    let (status, v) = raw("{not json");
    assert_eq!(status, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid JSON"));
    // Still serving.
    let (status, _) = post(&chat_url, &json!({"messages": msgs, "max_tokens": 2}));
    assert_eq!(status, 200);
}

#[test]
fn a_client_that_disconnects_mid_stream_cancels_its_sequence() {
    let s = TestServer::start(teacher(), EngineConfig::default());
    let r = agent()
        .post(&format!("{}/v1/completions", s.url))
        .send_json(
            json!({"prompt": "Count from one to one hundred:", "max_tokens": 400,
                          "temperature": 0, "stream": true}),
        )
        .unwrap();
    let mut reader = std::io::BufReader::new(r.into_body().into_reader());
    let mut line = String::new();
    for _ in 0..6 {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    drop(reader);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, m) = get_text(&format!("{}/metrics", s.url));
        if m.contains("hybrid_cancelled_total{model=\"smol\"} 1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not cancelled:\n{m}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The official `openai` Python client (pip install openai; CI installs it), streaming and not.
#[test]
fn the_openai_python_client_works() {
    let s = TestServer::start(teacher(), EngineConfig::default());
    let script = r#"
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="none")
r = c.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0)
plain = r.choices[0].message.content
assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
parts = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(model="smol",
         messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0, stream=True) if ch.choices]
assert "".join(parts) == plain, ("".join(parts), plain)
t = c.completions.create(model="smol", prompt="The sky is", max_tokens=4, temperature=0)
assert t.choices[0].text
try:
    c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("an unknown model was accepted")
except openai.BadRequestError as e:
    assert "does not exist" in str(e)
print("ok", plain)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &s.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the openai client failed (pip install openai):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `delethink` extension: the reply is the trace `engine::delethink::think` produces, as
/// `reasoning_content` (SmolLM2 writes no `</think>`, so there is no answer), streamed or not,
/// with the reasoning tokens in usage; a bad spec is a 400.
#[test]
fn delethink_requests_return_the_trace_as_reasoning() {
    let t = teacher();
    let s = TestServer::start(t.clone(), EngineConfig::default());
    let url = format!("{}/v1/chat/completions", s.url);
    let spec = json!({"chunk": 24, "carryover": 8, "max_chunks": 3, "head": 4});
    let body = json!({"messages": [{"role": "user", "content": "Write a long story about a dragon who learns to count."}],
        "temperature": 0, "delethink": spec});
    let (code, v) = post(&url, &body);
    assert_eq!(code, 200, "{v}");
    let q = model::prompt_tokens(
        &t.tokenizer,
        t.template.as_ref(),
        "Write a long story about a dragon who learns to count.",
        true,
    )
    .unwrap();
    let want = engine::delethink::think(
        &t,
        &q,
        &serde_json::from_value(spec.clone()).unwrap(),
        &Default::default(),
        &[],
        |_| {},
    )
    .unwrap();
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["reasoning_content"], want.text.as_str());
    assert_eq!(msg["content"], "");
    assert_eq!(v["usage"]["completion_tokens"], want.tokens.len() as u64);
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        want.tokens.len() as u64
    );
    assert_eq!(v["delethink"]["chunks"], want.chunks.len() as u64);
    assert!(want.chunks.len() >= 2);
    // Streaming: the reasoning deltas add up to the same trace; usage comes last.
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let chunks = sse(&url, &sb);
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(streamed, want.text);
    let last = chunks.last().unwrap();
    assert_eq!(
        last["usage"]["completion_tokens_details"]["reasoning_tokens"],
        want.tokens.len() as u64
    );
    // Bad specs.
    for bad in [
        json!({"chunk": 8, "carryover": 8, "max_chunks": 2}),
        json!({"chunk": 100000, "carryover": 8, "max_chunks": 2}),
        json!({"chunk": "x"}),
    ] {
        let mut b = body.clone();
        b["delethink"] = bad;
        let (code, v) = post(&url, &b);
        assert_eq!(code, 400, "{v}");
        assert!(v["error"]["message"].is_string());
    }
}
