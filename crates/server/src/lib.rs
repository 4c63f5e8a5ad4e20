//! The OpenAI-compatible HTTP server (axum): `/v1/chat/completions` and `/v1/completions`
//! (streaming SSE and not), `/v1/models`, `/health`, `/metrics` (Prometheus text). Requests
//! go to the engine's thread; a client that disconnects drops its event channel, which
//! cancels its sequence at the engine's next step.
pub mod api;
mod delethink;

use api::{error_body, parse_body, usage_json, ChatBody, CompletionBody};
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
    /// What earlier assistant turns' thinking becomes in a rendered chat.
    pub think_history: model::ThinkHistory,
}

impl AppState {
    /// The engine's model with the thinking-history policy its chat template implies.
    pub fn new(engine: Engine) -> Self {
        let think_history = engine
            .model
            .template
            .as_ref()
            .map_or(model::ThinkHistory::Keep, |t| t.think_history());
        AppState {
            engine,
            think_history,
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(state)
        .layer(axum::middleware::from_fn(refuse_oversized))
}

/// Request bodies past this are refused with 413 (axum's own body limit is the same 2 MiB).
pub const MAX_BODY_BYTES: u64 = 2 << 20;

/// 413 before reading a byte of a body whose declared length is past the limit. A client that
/// waits for `100 Continue` (curl does above 1 MiB) then gets the answer without uploading
/// anything; one that sends everything at once may see the connection close mid-upload, since
/// the server does not read a body it has refused (axum's limit still stops undeclared ones).
async fn refuse_oversized(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > MAX_BODY_BYTES => (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(error_body(
                &format!("the request body is {n} bytes; the limit is {MAX_BODY_BYTES}"),
                "invalid_request_error",
            )),
        )
            .into_response(),
        _ => next.run(req).await,
    }
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

/// 503 with Retry-After: the server is at its memory budget and refuses new work instead of
/// queueing without bound.
fn overloaded(o: &engine::Overloaded) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1")],
        Json(error_body(&o.to_string(), "server_overloaded")),
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
    let b: CompletionBody = match parse_body(&body) {
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
    let b: ChatBody = match parse_body(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(e),
    };
    let m = &s.engine.model;
    let Some(t) = &m.template else {
        return bad_request("this model has no chat template; use /v1/completions");
    };
    let msgs = match b.messages() {
        Ok(msgs) => msgs,
        Err(e) => return bad_request(e),
    };
    let render = |add_gen: bool| t.render_thinking(&msgs, add_gen, s.think_history);
    let encode = |text: &str| -> anyhow::Result<Vec<u32>> {
        let with_bos = !text.starts_with(&t.bos_token) || t.bos_token.is_empty();
        m.tokenizer.encode(text, with_bos)
    };
    let (prompt, opens_think) = match render(true).and_then(|r| Ok((encode(&r)?, r))) {
        Ok((p, r)) => (p, model::ChatTemplate::opens_think(&r)),
        Err(e) => return bad_request(format!("cannot render the chat: {e}")),
    };
    // The conversation without the generation prompt: the next turn shares it, so a
    // checkpoint is kept there.
    let keep = match render(false).and_then(|r| encode(&r)) {
        Ok(h) if h.len() < prompt.len() && prompt[..h.len()] == h[..] => vec![h.len()],
        _ => vec![],
    };
    // A generation prompt that opens `<think>`: the reply starts inside the thinking block.
    let kind = if opens_think {
        Kind::ChatThinking(s.think_history)
    } else {
        Kind::Chat
    };
    submit(&s, &b.common, prompt, keep, kind).await
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
    let api::Checked {
        sampling,
        max_tokens,
        delethink,
    } = match c.check(&m.name, m.context, prompt.len()) {
        Ok(x) => x,
        Err(e) => return bad_request(e),
    };
    let usage = c.stream_options.as_ref().is_some_and(|o| o.include_usage);
    if let Some(spec) = delethink {
        let d = delethink::DelethinkRun {
            spec,
            prompt,
            sampling,
            stop: c.stop.list(),
        };
        return delethink::run(s, d, kind.is_chat(), c.stream, usage).await;
    }
    let req = Request {
        prompt,
        max_tokens,
        sampling,
        stop: c.stop.list(),
        keep,
        ignore_eos: c.ignore_eos,
    };
    run(s, req, kind, c.stream, usage).await
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Completion,
    Chat,
    /// A chat whose generation prompt opened a `<think>` block. With `Keep` the reply's
    /// content is `<think>\n` + the generated text (vLLM's `minimax_m2_append_think`: a client
    /// that sends content back keeps the thinking, token for token); with `Strip` the text up
    /// to `</think>` is `reasoning_content` and the rest `content`.
    ChatThinking(model::ThinkHistory),
}

impl Kind {
    fn is_chat(self) -> bool {
        self != Kind::Completion
    }
}

async fn run(s: &AppState, req: Request, kind: Kind, stream: bool, usage_chunk: bool) -> Response {
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let sink = Box::new(move |e: Event| tx.send(e).is_ok());
    if let Err(e) = s.engine.submit(req, sink) {
        return match e.downcast_ref::<engine::Overloaded>() {
            Some(o) => overloaded(o),
            None => server_error(e),
        };
    }
    let model = s.engine.model.name.clone();
    let created = now();
    let id = request_id(if kind.is_chat() { "chatcmpl" } else { "cmpl" });
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
                    let message = match kind {
                        Kind::ChatThinking(model::ThinkHistory::Keep) => {
                            json!({"role": "assistant", "content": format!("<think>\n{text}")})
                        }
                        Kind::ChatThinking(model::ThinkHistory::Strip) => {
                            let (r, a) = engine::delethink::ThinkSplitter::split_text(&text);
                            json!({"role": "assistant", "content": a, "reasoning_content": r})
                        }
                        _ => json!({"role": "assistant", "content": text}),
                    };
                    let choice = match kind {
                        Kind::Completion => {
                            json!({"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": null})
                        }
                        _ => {
                            json!({"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": null})
                        }
                    };
                    let object = if kind.is_chat() {
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
    let object = if kind.is_chat() {
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
    let first = kind.is_chat().then(|| {
        chunk(
            json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}),
            None,
        )
    });
    // Appended thinking: the first generated delta carries the `<think>` the generation prompt
    // opened (as vLLM's minimax_m2_append_think does), so the content read back is exact.
    let mut opener = if kind == Kind::ChatThinking(model::ThinkHistory::Keep) {
        "<think>\n"
    } else {
        ""
    };
    // Split thinking: deltas go to reasoning_content until `</think>`, then to content.
    let mut splitter = engine::delethink::ThinkSplitter::default();
    let delta_chunks = move |(r, a): (String, String)| -> Vec<Value> {
        let mut out = vec![];
        if !r.is_empty() {
            out.push(json!({"index": 0, "delta": {"reasoning_content": r}, "finish_reason": null}));
        }
        if !a.is_empty() {
            out.push(json!({"index": 0, "delta": {"content": a}, "finish_reason": null}));
        }
        out
    };
    let to_sse = move |e: Event| -> Vec<SseEvent> {
        match e {
            Event::Text { delta, .. } if delta.is_empty() => vec![],
            Event::Text { delta, .. } => match kind {
                Kind::Completion => vec![chunk(
                    json!({"index": 0, "text": delta, "finish_reason": null}),
                    None,
                )],
                Kind::ChatThinking(model::ThinkHistory::Strip) => {
                    delta_chunks(splitter.push(&delta))
                        .into_iter()
                        .map(|c| chunk(c, None))
                        .collect()
                }
                _ => {
                    let content = format!("{}{delta}", std::mem::take(&mut opener));
                    vec![chunk(
                        json!({"index": 0, "delta": {"content": content}, "finish_reason": null}),
                        None,
                    )]
                }
            },
            Event::Done {
                finish_reason,
                usage,
                ..
            } => {
                let mut v: Vec<SseEvent> = delta_chunks(splitter.finish())
                    .into_iter()
                    .map(|c| chunk(c, None))
                    .collect();
                if !opener.is_empty() {
                    // Nothing was generated: the content is the opened block alone.
                    let content = std::mem::take(&mut opener);
                    v.push(chunk(
                        json!({"index": 0, "delta": {"content": content}, "finish_reason": null}),
                        None,
                    ));
                }
                let last = match kind {
                    Kind::Completion => {
                        json!({"index": 0, "text": "", "finish_reason": finish_reason})
                    }
                    _ => json!({"index": 0, "delta": {}, "finish_reason": finish_reason}),
                };
                v.push(chunk(last, None));
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
