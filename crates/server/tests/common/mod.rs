//! What the server tests share: the real SmolLM2 and a hybrid made from it, a server on a real
//! port, and small HTTP clients.
#![allow(dead_code)] // each test binary uses a different part
use engine::{Engine, EngineConfig, ServeModel};
use serde_json::{json, Value};
use std::io::BufRead;
use std::sync::{Arc, OnceLock};

pub fn teacher() -> Arc<ServeModel> {
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
pub fn hybrid() -> Arc<ServeModel> {
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

pub struct TestServer {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    pub fn start(m: Arc<ServeModel>, cfg: EngineConfig) -> Self {
        Self::start_with(m, cfg, None)
    }

    /// A server whose thinking-history policy is `think` (default: the template's).
    pub fn start_with(
        m: Arc<ServeModel>,
        cfg: EngineConfig,
        think: Option<model::ThinkHistory>,
    ) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut state = server::AppState::new(Engine::start(m, cfg).unwrap());
        if let Some(t) = think {
            state.think_history = t;
        }
        let state = Arc::new(state);
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

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

pub fn post(url: &str, body: &Value) -> (u16, Value) {
    let mut r = agent().post(url).send_json(body).unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_json::<Value>().unwrap())
}

pub fn get_text(url: &str) -> (u16, String) {
    let mut r = agent().get(url).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

pub fn sse(url: &str, body: &Value) -> Vec<Value> {
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

/// Resident memory of this process, bytes (Linux).
pub fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b'{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// One chat turn, greedy: (reply, cached tokens, prompt tokens).
pub fn chat(s: &TestServer, messages: &[Value], max_tokens: usize) -> (String, u64, u64) {
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

pub const SYSTEM: &str = "You are a concise assistant. Answer in one short sentence.";

pub fn conversation(topic: usize) -> Vec<&'static str> {
    [
        vec!["What is the capital of France?", "And of Italy?"],
        vec!["Name a primary color.", "Name another one."],
    ][topic]
        .clone()
}

/// Two conversations of two turns (the second sharing the first's system prompt), each turn appending the previous reply: the replies, and
/// the cached tokens of each request.
pub fn run_conversations(
    s: &TestServer,
    concurrent: bool,
    max_tokens: usize,
) -> Vec<(String, u64, u64)> {
    let one = |topic: usize| -> Vec<(String, u64, u64)> {
        let mut msgs = vec![json!({"role": "system", "content": SYSTEM})];
        let mut out = vec![];
        for q in conversation(topic) {
            msgs.push(json!({"role": "user", "content": q}));
            let r = chat(s, &msgs, max_tokens);
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

/// `clients` concurrent streaming chat clients, each sending requests of `max_tokens` sampled
/// tokens until `secs` have passed (at least one each); every stream must end with a finish
/// reason and [DONE]. Returns the requests completed.
pub fn streaming_clients(url: &str, clients: usize, secs: u64, max_tokens: usize) -> usize {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let url = format!("{url}/v1/chat/completions");
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..clients)
            .map(|c| {
                let url = url.clone();
                sc.spawn(move || {
                    let (mut n, mut i) = (0, 0);
                    while n == 0 || std::time::Instant::now() < until {
                        let body = json!({"messages": [{"role": "user",
                            "content": format!("Client {c}, question {i}: name a fruit.")}],
                            "max_tokens": max_tokens, "temperature": 0.7, "seed": c * 100 + i,
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
    })
}

/// The `/metrics` text once nothing runs (the engine publishes its gauges after the step that
/// sent the last [DONE]), or after 10 s.
pub fn idle_metrics(url: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, m) = get_text(&format!("{url}/metrics"));
        if metric(&m, "hybrid_running") == 0.0 || std::time::Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Second turns of [`run_conversations`] resume from the first turn's checkpoint (system
/// prompt, question, reply): part of each prompt, not all of it, is cached.
pub fn second_turns_resume(model: &str, got: &[(String, u64, u64)]) {
    for g in [&got[1], &got[3]] {
        assert!(
            g.1 > 0 && g.1 < g.2,
            "{model}: a second turn cached {} of {} tokens",
            g.1,
            g.2
        );
    }
}

/// Asks for a copy of a sentence: prompt lookup finds the drafts in the prompt.
pub const COPY: &str = "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog near the old river bank.";

/// The two conversations of [`run_conversations`] and a copy request (concurrently when
/// `concurrent`): the replies.
pub fn replies(s: &TestServer, concurrent: bool) -> Vec<String> {
    let copy = || chat(s, &[json!({"role": "user", "content": COPY})], 32).0;
    let (mut out, c) = std::thread::scope(|sc| {
        let c = sc.spawn(copy);
        if !concurrent {
            let c = c.join().unwrap();
            return (run_conversations(s, false, 10), c);
        }
        (run_conversations(s, true, 10), c.join().unwrap())
    });
    let mut texts: Vec<String> = out.drain(..).map(|r| r.0).collect();
    texts.push(c);
    texts
}

/// The reference engine: no prefix cache, one sequence at a time, whole-prompt prefill.
pub fn cold_config() -> EngineConfig {
    EngineConfig {
        max_num_seqs: 1,
        max_batched_tokens: 4096,
        prefix_cache: false,
        ..Default::default()
    }
}
