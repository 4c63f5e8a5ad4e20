//! A chat template's source, a NUL byte, then the messages as the server receives them (a
//! JSON list of `{"role", "content", "reasoning_content"}`; a fixed conversation when absent
//! or invalid), rendered as the server renders a chat: the template's own thinking-history
//! policy, with and without the generation prompt.
#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "renderer_panics.rs"]
mod renderer_panics;
use model::{ChatTemplate, Message};

fn default_messages() -> Vec<Message> {
    let mut answer = Message::new("assistant", "<think>\nadd\n</think>\n\n4");
    answer.reasoning_content = Some("2 + 2".into());
    vec![
        Message::new("system", "Be brief."),
        Message::new("user", "2 + 2?"),
        answer,
        Message::new("user", "and 3 + 3?"),
    ]
}

fuzz_target!(|data: &[u8]| {
    renderer_panics::let_render_catch_minijinja_panics();
    let (source, messages) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(source) = std::str::from_utf8(source) else {
        return;
    };
    let messages: Vec<Message> =
        serde_json::from_slice(messages).unwrap_or_else(|_| default_messages());
    let Ok(t) = ChatTemplate::new(source, "<s>", "</s>") else {
        return;
    };
    // minijinja repeats a sequence (`[m] * n`) lazily with no bound on n, and printing or
    // joining the result is a single instruction, out of reach of the render's fuel: a
    // template can ask for unbounded work that way. Templates are model data, trusted as the
    // weights are; such ones are parsed but not rendered here (fuzz/README.md, "Limits").
    if source.contains('*') {
        return;
    }
    let policy = t.think_history();
    for add_generation_prompt in [true, false] {
        if let Ok(r) = t.render_thinking(&messages, add_generation_prompt, policy) {
            let _ = ChatTemplate::opens_think(&r);
        }
    }
});
