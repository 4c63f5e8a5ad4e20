//! A request body's bytes through what the server's handlers do before the engine: the body
//! parsed as a chat request (its messages rendered with a ChatML template) and as a
//! completion request, then every field checked against a model's context.
#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "renderer_panics.rs"]
mod renderer_panics;
use model::ChatTemplate;
use server::api::{parse_body, ChatBody, Common, CompletionBody};
use std::sync::OnceLock;

const SERVED: &str = "hybrid-test";
const CONTEXT: usize = 4096;

fn chatml() -> &'static ChatTemplate {
    static T: OnceLock<ChatTemplate> = OnceLock::new();
    T.get_or_init(|| {
        ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            "",
            "<|im_end|>",
        )
        .expect("the ChatML template parses")
    })
}

/// A prompt length the way a tokenizer would roughly count it (no tokenizer here).
fn prompt_len(text: &str) -> usize {
    text.len().div_ceil(4)
}

fn check(c: &Common, prompt_len: usize) {
    if let Ok(checked) = c.check(SERVED, CONTEXT, prompt_len) {
        assert!(checked.max_tokens >= 1 && prompt_len + checked.max_tokens <= CONTEXT);
        let _ = c.stop.list();
    }
}

fuzz_target!(|data: &[u8]| {
    renderer_panics::let_render_catch_minijinja_panics();
    if let Ok(b) = parse_body::<ChatBody>(data) {
        if let Ok(msgs) = b.messages() {
            let t = chatml();
            for policy in [model::ThinkHistory::Keep, model::ThinkHistory::Strip] {
                if let Ok(r) = t.render_thinking(&msgs, true, policy) {
                    check(&b.common, prompt_len(&r));
                }
            }
        }
    }
    if let Ok(b) = parse_body::<CompletionBody>(data) {
        check(&b.common, prompt_len(&b.prompt));
    }
});
