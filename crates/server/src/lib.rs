//! The OpenAI-compatible HTTP server (axum): `/v1/chat/completions` and `/v1/completions`
//! (streaming SSE and not), `/v1/models`, `/health`, `/metrics` (Prometheus text). Requests
//! go to the engine's thread; a client that disconnects drops its event channel, which
//! cancels its sequence at the engine's next step.
pub mod api;
mod delethink;

use api::{error_body, usage_json, ChatBody, CompletionBody};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::{Engine, Event, Request};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

pub struct AppState {
    pub engine: Engine,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

fn bad_request(msg: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(error_body(&msg.to_string(), "invalid_request_error")),
    )
        .into_response()
}

pub(crate) fn server_error(msg: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(error_body(&msg.to_string(), "server_error")),
    )
        .into_response()
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn models(State(s): State<Arc<AppState>>) -> Json<Value> {
    let m = &s.engine.model;
    Json(json!({"object": "list", "data": [{
        "id": m.name, "object": "model", "created": 0, "owned_by": "hybrid",
        "max_model_len": m.context,
    }]}))
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.engine.metrics.prometheus(&s.engine.model.name),
    )
        .into_response()
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn request_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{prefix}-{}-{}",
        now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn completions(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    let b: CompletionBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(e),
    };
    let m = &s.engine.model;
    let prompt = match m.tokenizer.encode(&b.prompt, true) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("cannot tokenize the prompt: {e}")),
    };
    if prompt.is_empty() {
        return bad_request("the prompt is empty");
    }
    submit(&s, &b.common, prompt, vec![], Kind::Completion).await
}

async fn chat_completions(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    let b: ChatBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(e),
    };
    let m = &s.engine.model;
    let Some(t) = &m.template else {
        return bad_request("this model has no chat template; use /v1/completions");
    };
    if b.messages.is_empty() {
        return bad_request("messages is empty");
    }
    let msgs: Vec<model::Message> = b
        .messages
        .iter()
        .map(|x| model::Message::new(&x.role, &x.content))
        .collect();
    let encode = |add_gen: bool| -> anyhow::Result<Vec<u32>> {
        let text = t.render(&msgs, add_gen)?;
        let with_bos = !text.starts_with(&t.bos_token) || t.bos_token.is_empty();
        m.tokenizer.encode(&text, with_bos)
    };
    let prompt = match encode(true) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("cannot render the chat: {e}")),
    };
    // The conversation without the generation prompt: the next turn shares it, so a
    // checkpoint is kept there.
    let keep = match encode(false) {
        Ok(h) if h.len() < prompt.len() && prompt[..h.len()] == h[..] => vec![h.len()],
        _ => vec![],
    };
    submit(&s, &b.common, prompt, keep, Kind::Chat).await
}

/// Checks the shared fields against the prompt and the model, then runs the request.
async fn submit(
    s: &AppState,
    c: &api::Common,
    prompt: Vec<u32>,
    keep: Vec<usize>,
    kind: Kind,
) -> Response {
    let m = &s.engine.model;
    let (sampling, max_tokens) = match c.settings(&m.name, m.context, prompt.len()) {
        Ok(x) => x,
        Err(e) => return bad_request(e),
    };
    let usage = c.stream_options.as_ref().is_some_and(|o| o.include_usage);
    if let Some(spec) = c.delethink {
        if let Err(e) = spec.validate() {
            return bad_request(e);
        }
        if let Err(e) = spec.check_fits(prompt.len(), m.context) {
            return bad_request(e);
        }
        let d = delethink::DelethinkRun {
            spec,
            prompt,
            sampling,
            stop: c.stop.list(),
        };
        return delethink::run(s, d, kind == Kind::Chat, c.stream, usage).await;
    }
    let req = Request {
        prompt,
        max_tokens,
        sampling,
        stop: c.stop.list(),
        keep,
    };
    run(s, req, kind, c.stream, usage).await
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Completion,
    Chat,
}

async fn run(s: &AppState, req: Request, kind: Kind, stream: bool, usage_chunk: bool) -> Response {
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let sink = Box::new(move |e: Event| tx.send(e).is_ok());
    if let Err(e) = s.engine.submit(req, sink) {
        return server_error(e);
    }
    let model = s.engine.model.name.clone();
    let created = now();
    let id = request_id(if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    });
    if !stream {
        let mut text = String::new();
        while let Some(e) = rx.recv().await {
            match e {
                Event::Text { delta, .. } => text.push_str(&delta),
                Event::Done {
                    finish_reason,
                    usage,
                    ..
                } => {
                    let choice = match kind {
                        Kind::Chat => {
                            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason, "logprobs": null})
                        }
                        Kind::Completion => {
                            json!({"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": null})
                        }
                    };
                    let object = if kind == Kind::Chat {
                        "chat.completion"
                    } else {
                        "text_completion"
                    };
                    return Json(json!({
                        "id": id, "object": object, "created": created, "model": model,
                        "choices": [choice], "usage": usage_json(&usage),
                    }))
                    .into_response();
                }
                Event::Error(msg) => return server_error(msg),
            }
        }
        return server_error("the engine stopped before the request finished");
    }
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |choice: Value, usage: Option<Value>| -> SseEvent {
        let mut v = json!({"id": id, "object": object, "created": created, "model": model,
            "choices": if choice.is_null() { json!([]) } else { json!([choice]) }});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        SseEvent::default().data(v.to_string())
    };
    let first = (kind == Kind::Chat).then(|| {
        chunk(
            json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}),
            None,
        )
    });
    let to_sse = move |e: Event| -> Vec<SseEvent> {
        match e {
            Event::Text { delta, .. } if delta.is_empty() => vec![],
            Event::Text { delta, .. } => vec![chunk(
                match kind {
                    Kind::Chat => {
                        json!({"index": 0, "delta": {"content": delta}, "finish_reason": null})
                    }
                    Kind::Completion => json!({"index": 0, "text": delta, "finish_reason": null}),
                },
                None,
            )],
            Event::Done {
                finish_reason,
                usage,
                ..
            } => {
                let last = match kind {
                    Kind::Chat => json!({"index": 0, "delta": {}, "finish_reason": finish_reason}),
                    Kind::Completion => {
                        json!({"index": 0, "text": "", "finish_reason": finish_reason})
                    }
                };
                let mut v = vec![chunk(last, None)];
                if usage_chunk {
                    v.push(chunk(Value::Null, Some(usage_json(&usage))));
                }
                v.push(SseEvent::default().data("[DONE]"));
                v
            }
            Event::Error(msg) => vec![
                SseEvent::default().data(error_body(&msg, "server_error").to_string()),
                SseEvent::default().data("[DONE]"),
            ],
        }
    };
    // A task turns engine events into SSE messages. When the client goes away the response
    // stream is dropped, the task's next send fails and it ends, dropping the engine's
    // channel: the sequence is cancelled at the engine's next step.
    sse_response(first, rx, to_sse)
}

/// An SSE response: `first` (if any), then the messages `to_sse` makes of each item from `rx`,
/// forwarded by a task that ends (dropping `rx`) when the client goes away.
pub(crate) fn sse_response<T: Send + 'static>(
    first: Option<SseEvent>,
    mut rx: mpsc::UnboundedReceiver<T>,
    mut to_sse: impl FnMut(T) -> Vec<SseEvent> + Send + 'static,
) -> Response {
    let (out_tx, out_rx) = mpsc::unbounded_channel::<SseEvent>();
    if let Some(f) = first {
        let _ = out_tx.send(f);
    }
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            for ev in to_sse(e) {
                if out_tx.send(ev).is_err() {
                    return;
                }
            }
        }
    });
    let all = UnboundedReceiverStream::new(out_rx).map(Ok::<_, Infallible>);
    Sse::new(all)
        .keep_alive(KeepAlive::default())
        .into_response()
}
