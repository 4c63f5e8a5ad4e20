//! Requests with the `delethink` extension: the trace (`engine::delethink`) runs on a blocking
//! thread beside the engine's (the model is shared read-only; Delethink traces are not batched
//! with the engine's sequences). The reply splits the trace at the first `</think>`:
//! `reasoning_content` before it, `content` after, and
//! `usage.completion_tokens_details.reasoning_tokens`. A client that goes away cancels the
//! trace at its next token.
use crate::{now, request_id, server_error, AppState};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::delethink::{reasoning_tokens, think_with, DelethinkSpec, Event, ThinkSplitter};
use model::SamplingParams;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

pub struct DelethinkRun {
    pub spec: DelethinkSpec,
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

enum Msg {
    Reasoning(String),
    Answer(String),
    Done {
        finish: String,
        usage: Value,
        chunks: usize,
        peak_cache_tokens: usize,
    },
    Error(String),
}

pub async fn run(
    s: &AppState,
    d: DelethinkRun,
    chat: bool,
    stream: bool,
    usage_chunk: bool,
) -> Response {
    s.engine.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let m = s.engine.model.clone();
    tokio::task::spawn_blocking(move || {
        let mut split = ThinkSplitter::default();
        let send = |tx: &mpsc::UnboundedSender<Msg>, (r, a): (String, String)| -> bool {
            (r.is_empty() || tx.send(Msg::Reasoning(r)).is_ok())
                && (a.is_empty() || tx.send(Msg::Answer(a)).is_ok())
        };
        let res = think_with(
            &m,
            &d.prompt,
            &d.spec,
            &d.sampling,
            &d.stop,
            false,
            |e| match e {
                Event::Text(t) => send(&tx, split.push(t)),
                Event::Boundary { .. } => !tx.is_closed(),
            },
        );
        match res {
            Ok(tr) => {
                send(&tx, split.finish());
                let n = tr.tokens.len();
                let usage = json!({
                    "prompt_tokens": d.prompt.len(),
                    "completion_tokens": n,
                    "total_tokens": d.prompt.len() + n,
                    "prompt_tokens_details": {"cached_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": reasoning_tokens(&m, &tr.tokens)},
                });
                let _ = tx.send(Msg::Done {
                    finish: tr.finish_reason.clone(),
                    usage,
                    chunks: tr.chunks.len(),
                    peak_cache_tokens: tr.peak_cache_tokens(),
                });
            }
            Err(e) => {
                let _ = tx.send(Msg::Error(format!("{e:#}")));
            }
        }
    });
    let model = s.engine.model.name.clone();
    let created = now();
    let id = request_id(if chat { "chatcmpl" } else { "cmpl" });
    if !stream {
        let (mut reasoning, mut answer) = (String::new(), String::new());
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Reasoning(r) => reasoning.push_str(&r),
                Msg::Answer(a) => answer.push_str(&a),
                Msg::Done {
                    finish,
                    usage,
                    chunks,
                    peak_cache_tokens,
                } => {
                    let choice = if chat {
                        json!({"index": 0, "message": {"role": "assistant", "content": answer,
                            "reasoning_content": reasoning}, "finish_reason": finish, "logprobs": null})
                    } else {
                        json!({"index": 0, "text": answer, "reasoning_content": reasoning,
                            "finish_reason": finish, "logprobs": null})
                    };
                    return Json(json!({
                        "id": id,
                        "object": if chat { "chat.completion" } else { "text_completion" },
                        "created": created, "model": model, "choices": [choice], "usage": usage,
                        "delethink": {"chunks": chunks, "peak_cache_tokens": peak_cache_tokens},
                    }))
                    .into_response();
                }
                Msg::Error(e) => return server_error(e),
            }
        }
        return server_error("the delethink trace stopped before it finished");
    }
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |choice: Value, extra: Option<(&str, Value)>| -> SseEvent {
        let mut v = json!({"id": id, "object": object, "created": created, "model": model,
            "choices": if choice.is_null() { json!([]) } else { json!([choice]) }});
        if let Some((k, x)) = extra {
            v[k] = x;
        }
        SseEvent::default().data(v.to_string())
    };
    let delta = move |field: &str, text: String| -> Value {
        if chat {
            json!({"index": 0, "delta": {field: text}, "finish_reason": null})
        } else if field == "content" {
            json!({"index": 0, "text": text, "finish_reason": null})
        } else {
            json!({"index": 0, "text": "", field: text, "finish_reason": null})
        }
    };
    let first = chat.then(|| {
        chunk(
            json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}),
            None,
        )
    });
    crate::sse_response(first, rx, move |msg| match msg {
        Msg::Reasoning(r) => vec![chunk(delta("reasoning_content", r), None)],
        Msg::Answer(a) => vec![chunk(delta("content", a), None)],
        Msg::Done {
            finish,
            usage,
            chunks,
            peak_cache_tokens,
        } => {
            let last = if chat {
                json!({"index": 0, "delta": {}, "finish_reason": finish})
            } else {
                json!({"index": 0, "text": "", "finish_reason": finish})
            };
            let info = json!({"chunks": chunks, "peak_cache_tokens": peak_cache_tokens});
            let mut v = vec![chunk(last, Some(("delethink", info)))];
            if usage_chunk {
                v.push(chunk(Value::Null, Some(("usage", usage))));
            }
            v.push(SseEvent::default().data("[DONE]"));
            v
        }
        Msg::Error(e) => vec![
            SseEvent::default().data(crate::api::error_body(&e, "server_error").to_string()),
            SseEvent::default().data("[DONE]"),
        ],
    })
}
