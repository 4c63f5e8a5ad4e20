//! Interleaved thinking through the server on a real port, with SmolLM2's tokenizer under a
//! ChatML template whose generation prompt opens `<think>` (MiniMax-M2 style; SmolLM2 is not a
//! reasoning model, so this checks mechanics): with `keep` the reply's content carries the
//! opened block and, sent back, the next turn resumes from the whole previous turn; with
//! `strip` the reply splits into reasoning_content and content, the server drops the reasoning
//! from the history, and the next turn resumes only where the stripped history still matches.
mod common;

use common::*;
use engine::{EngineConfig, ServeModel};
use model::ThinkHistory;
use serde_json::{json, Value};
use std::sync::Arc;

const THINKING_CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}";

fn thinking_model() -> Arc<ServeModel> {
    let t = teacher();
    Arc::new(ServeModel {
        name: "smol-thinking".into(),
        model: t.model.clone_model(),
        tokenizer: t.tokenizer.clone(),
        template: Some(model::ChatTemplate::new(THINKING_CHATML, "", "<|im_end|>").unwrap()),
        context: t.context,
    })
}

fn ask(s: &TestServer, msgs: &[Value], stream: bool) -> (Value, u64, u64) {
    let url = format!("{}/v1/chat/completions", s.url);
    let body = json!({"messages": msgs, "max_tokens": 12, "temperature": 0, "stream": stream,
        "stream_options": {"include_usage": true}});
    if !stream {
        let (status, v) = post(&url, &body);
        assert_eq!(status, 200, "{v}");
        let u = &v["usage"];
        return (
            v["choices"][0]["message"].clone(),
            u["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap(),
            u["prompt_tokens"].as_u64().unwrap(),
        );
    }
    // Streamed: the message put back together from its deltas.
    let (mut content, mut reasoning) = (String::new(), String::new());
    let mut usage = json!(null);
    for c in sse(&url, &body) {
        if let Some(d) = c["choices"].get(0).map(|c| &c["delta"]) {
            content.push_str(d["content"].as_str().unwrap_or(""));
            reasoning.push_str(d["reasoning_content"].as_str().unwrap_or(""));
        }
        if !c["usage"].is_null() {
            usage = c["usage"].clone();
        }
    }
    let mut m = json!({"role": "assistant", "content": content});
    if !reasoning.is_empty() {
        m["reasoning_content"] = json!(reasoning);
    }
    (
        m,
        usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
        usage["prompt_tokens"].as_u64().unwrap(),
    )
}

#[test]
fn kept_thinking_extends_the_cached_prefix_and_stripped_thinking_is_dropped() {
    let m = thinking_model();
    let cfg = || EngineConfig {
        max_batched_tokens: 32,
        ..Default::default()
    };
    let q1 = json!({"role": "user", "content": "Think about the number seven."});
    let q2 = json!({"role": "user", "content": "And eight?"});

    let keep = TestServer::start_with(m.clone(), cfg(), Some(ThinkHistory::Keep));
    let (r1, _, p1) = ask(&keep, std::slice::from_ref(&q1), false);
    let c1 = r1["content"].as_str().unwrap().to_string();
    assert!(
        c1.starts_with("<think>\n") && c1.len() > "<think>\n".len(),
        "{r1}"
    );
    assert!(r1.get("reasoning_content").is_none());
    // Streaming gives the same content (the opener arrives with the first token).
    let (s1, ..) = ask(&keep, std::slice::from_ref(&q1), true);
    assert_eq!(s1["content"], r1["content"]);
    let (_, cached, p2) = ask(&keep, &[q1.clone(), r1.clone(), q2.clone()], false);
    // The whole first turn (prompt and its generated thinking) is cached.
    assert!(
        cached > p1 + 4 && cached < p2,
        "keep: cached {cached} of {p2} (first prompt {p1})"
    );

    let strip = TestServer::start_with(m.clone(), cfg(), Some(ThinkHistory::Strip));
    let (r1, _, p1) = ask(&strip, std::slice::from_ref(&q1), false);
    // SmolLM2 never closes the block: everything is reasoning, no answer.
    assert_eq!(r1["content"], json!(""), "{r1}");
    let reasoning = r1["reasoning_content"].as_str().unwrap();
    assert_eq!(
        format!("<think>\n{reasoning}"),
        c1,
        "same tokens under both policies"
    );
    let (s1, ..) = ask(&strip, std::slice::from_ref(&q1), true);
    assert_eq!(s1["reasoning_content"], r1["reasoning_content"]);
    let (_, cached, p2) = ask(&strip, &[q1, r1, q2], false);
    // The stripped history leaves the first turn at its generation prompt: the cache resumes
    // where the conversation without it ended (the first user turn), no further.
    assert!(
        cached > 0 && cached < p1,
        "strip: cached {cached} of {p2} (first prompt {p1})"
    );
}
