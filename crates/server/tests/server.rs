//! The server on a real port, driven over HTTP, with the real SmolLM2 (its tokenizer and chat
//! template) as the FA model and a hybrid made from it (some layers GDN, some SWA with a small
//! window, so that the prefix cache must restore recurrent and windowed states).
use engine::{Engine, EngineConfig, ServeModel};
use serde_json::{json, Value};
use std::io::BufRead;
use std::sync::{Arc, OnceLock};

fn teacher() -> Arc<ServeModel> {
    static M: OnceLock<Arc<ServeModel>> = OnceLock::new();
    M.get_or_init(|| {
        let p = model::fetch::default_model_path();
        assert!(
            p.exists(),
            "SmolLM2 is not fetched: run `hybrid fetch` (make test does)"
        );
        Arc::new(ServeModel::load(&p, "smol").unwrap())
    })
    .clone()
}

/// Layers 1, 4, 7, ... GDN and 2, 5, 8, ... SWA (window 8) with candidates initialised from the
/// teacher's attention: an untrained hybrid, but a real one for caching.
fn hybrid() -> Arc<ServeModel> {
    static M: OnceLock<Arc<ServeModel>> = OnceLock::new();
    M.get_or_init(|| {
        let t = teacher();
        let cands = ["swa", "gdn"]
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    train::transfer::candidate_model(&t.model, k, 8, 0).unwrap(),
                )
            })
            .collect();
        let n = t.model.blocks.len();
        let layout: Vec<String> = (0..n)
            .map(|i| ["fa", "gdn", "swa"][i % 3].to_string())
            .collect();
        let mut sn = train::supernet::Supernet::new(t.model.clone_model(), cands).unwrap();
        let model = sn.extract(&layout).unwrap();
        Arc::new(ServeModel {
            name: "smol-hybrid".into(),
            model,
            tokenizer: t.tokenizer.clone(),
            template: t.template.clone(),
            context: t.context,
        })
    })
    .clone()
}

struct TestServer {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    fn start(m: Arc<ServeModel>, cfg: EngineConfig) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(server::AppState {
            engine: Engine::start(m, cfg).unwrap(),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(server::serve(listener, state, async {
            let _ = rx.await;
        }));
        TestServer {
            url,
            stop: Some(tx),
            rt: Some(rt),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(10));
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    let mut r = agent().post(url).send_json(body).unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_json::<Value>().unwrap())
}

fn get_text(url: &str) -> (u16, String) {
    let mut r = agent().get(url).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// One chat turn, greedy: (reply, cached tokens, prompt tokens).
fn chat(s: &TestServer, messages: &[Value], max_tokens: usize) -> (String, u64, u64) {
    let (status, v) = post(
        &format!("{}/v1/chat/completions", s.url),
        &json!({"model": null, "messages": messages, "max_tokens": max_tokens, "temperature": 0}),
    );
    assert_eq!(status, 200, "{v}");
    (
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string(),
        v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
        v["usage"]["prompt_tokens"].as_u64().unwrap(),
    )
}

const SYSTEM: &str = "You are a concise assistant. Answer in one short sentence.";

fn conversation(topic: usize) -> Vec<&'static str> {
    [
        vec!["What is the capital of France?", "And of Italy?"],
        vec!["Name a primary color.", "Name another one."],
    ][topic]
        .clone()
}

/// Two conversations of two turns, each turn appending the previous reply: the replies, and
/// the cached tokens of each request.
fn run_conversations(s: &TestServer, concurrent: bool) -> Vec<(String, u64, u64)> {
    let one = |topic: usize| -> Vec<(String, u64, u64)> {
        let mut msgs = vec![json!({"role": "system", "content": SYSTEM})];
        let mut out = vec![];
        for q in conversation(topic) {
            msgs.push(json!({"role": "user", "content": q}));
            let r = chat(s, &msgs, 10);
            msgs.push(json!({"role": "assistant", "content": r.0.clone()}));
            out.push(r);
        }
        out
    };
    if concurrent {
        std::thread::scope(|sc| {
            let h: Vec<_> = (0..2).map(|t| sc.spawn(move || one(t))).collect();
            h.into_iter().flat_map(|h| h.join().unwrap()).collect()
        })
    } else {
        (0..2).flat_map(one).collect()
    }
}

fn greedy_is_invariant(m: Arc<ServeModel>) {
    // Reference: no prefix cache, one sequence at a time, whole-prompt prefill.
    let cold = TestServer::start(
        m.clone(),
        EngineConfig {
            max_num_seqs: 1,
            max_batched_tokens: 4096,
            prefix_cache: false,
            ..Default::default()
        },
    );
    let want = run_conversations(&cold, false);
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
                state_bytes: state_mib << 20,
                ..Default::default()
            },
        );
        let got = run_conversations(&s, seqs > 1);
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(
                w.0, g.0,
                "{}: greedy reply changed (seqs {seqs}, chunk {chunk})",
                m.name
            );
            assert_eq!(w.2, g.2);
        }
        // Second turns resume from the first turn's checkpoint (system prompt, question,
        // reply); first turns share at least the system prompt once the other ran.
        for g in [&got[1], &got[3]] {
            assert!(
                g.1 > 0 && g.1 < g.2,
                "{}: second turn cached {} of {}",
                m.name,
                g.1,
                g.2
            );
        }
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
fn sse(url: &str, body: &Value) -> Vec<Value> {
    let r = agent().post(url).send_json(body).unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let reader = std::io::BufReader::new(r.into_body().into_reader());
    let mut out = vec![];
    for line in reader.lines() {
        let line = line.unwrap();
        let Some(d) = line.strip_prefix("data: ") else {
            continue;
        };
        if d == "[DONE]" {
            return out;
        }
        out.push(serde_json::from_str(d).unwrap());
    }
    panic!("the stream ended without [DONE]");
}

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

/// Resident memory of this process, bytes (Linux).
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b'{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// 32 concurrent streaming clients for a bounded time: every request completes (200, a
/// finish reason, [DONE]); afterwards nothing runs or waits, no state is held beyond the
/// prefix cache's budget, and the process memory returns to its idle level (within that
/// budget and allocator slack).
#[test]
fn thirty_two_concurrent_streaming_clients_and_memory_returns_to_idle() {
    let budget = 64usize << 20;
    let s = TestServer::start(
        teacher(),
        EngineConfig {
            max_num_seqs: 8,
            max_batched_tokens: 64,
            cache_bytes: budget,
            ..Default::default()
        },
    );
    // Warm up (first allocations, the template, the tokenizer), then take the idle level.
    let _ = post(
        &format!("{}/v1/completions", s.url),
        &json!({"prompt": "Hello", "max_tokens": 2}),
    );
    let idle = rss();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let url = format!("{}/v1/chat/completions", s.url);
    let done: usize = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..32)
            .map(|c| {
                let url = url.clone();
                sc.spawn(move || {
                    let mut n = 0;
                    let mut i = 0;
                    while n == 0 || std::time::Instant::now() < until {
                        let body = json!({"messages": [{"role": "user",
                            "content": format!("Client {c}, question {i}: name a fruit.")}],
                            "max_tokens": 4, "temperature": 0.7, "seed": c * 100 + i,
                            "stream": true});
                        let chunks = sse(&url, &body);
                        let last = chunks.last().unwrap();
                        assert!(last["choices"][0]["finish_reason"].is_string(), "{last}");
                        n += 1;
                        i += 1;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(done >= 32);
    // The engine publishes its gauges after the step that sent the last [DONE].
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let m = loop {
        let (_, m) = get_text(&format!("{}/metrics", s.url));
        if metric(&m, "hybrid_running") == 0.0 || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(metric(&m, "hybrid_running"), 0.0, "{m}");
    assert_eq!(metric(&m, "hybrid_queue_waiting"), 0.0);
    assert_eq!(metric(&m, "hybrid_running_state_bytes"), 0.0);
    assert!(metric(&m, "hybrid_prefix_cache_bytes") <= budget as f64);
    let after = rss();
    assert!(
        after < idle + budget as u64 + (96 << 20),
        "memory grew from {} MiB idle to {} MiB after the load ({done} requests)",
        idle >> 20,
        after >> 20
    );
}
