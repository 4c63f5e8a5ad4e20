//! What the server tests share: the real SmolLM2 and a hybrid made from it, a server on a real
//! port, and small HTTP clients.
#![allow(dead_code)] // each test binary uses a different part
use engine::{Engine, EngineConfig, ServeModel};
use serde_json::Value;
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
