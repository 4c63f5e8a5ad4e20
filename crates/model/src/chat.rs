//! Chat templates: the model's `tokenizer.chat_template` (Jinja, as Hugging Face writes it)
//! rendered with `minijinja`, with Python string methods from `minijinja-contrib`'s pycompat
//! and the helpers HF templates call (`raise_exception`, `strftime_now`).
use anyhow::{anyhow, bail, Result};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};
use std::panic::AssertUnwindSafe;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// An assistant turn's reasoning sent back separately (vLLM/DeepSeek's `reasoning_content`);
    /// [`ThinkHistory`] decides whether it reaches the rendered history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            reasoning_content: None,
        }
    }
}

/// What earlier assistant turns' thinking becomes in the rendered history (interleaved
/// thinking; research/delethink-mqar.md §2): models differ, so the choice belongs to the
/// template layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThinkHistory {
    /// MiniMax-M2 style: every `<think>` block stays in the history verbatim (a separate
    /// `reasoning_content` is put back in front of the content as `<think>\n…\n</think>\n\n`),
    /// so each turn's prompt extends the last one's tokens and hits the prefix cache whole.
    Keep,
    /// Qwen3 / DeepSeek-R1 style: earlier turns' thinking is dropped (the content after the
    /// last `</think>`; `reasoning_content` ignored).
    Strip,
}

/// `messages` with the assistant turns' thinking kept or stripped as `policy` says.
pub fn apply_think_history(messages: &[Message], policy: ThinkHistory) -> Vec<Message> {
    messages
        .iter()
        .map(|m| {
            if m.role != "assistant" {
                return m.clone();
            }
            let content = match (policy, &m.reasoning_content) {
                (ThinkHistory::Keep, Some(r)) if !m.content.trim_start().starts_with("<think>") => {
                    format!("<think>\n{r}\n</think>\n\n{}", m.content)
                }
                (ThinkHistory::Keep, _) => m.content.clone(),
                (ThinkHistory::Strip, _) => match m.content.rfind("</think>") {
                    Some(i) => m.content[i + "</think>".len()..].trim_start().to_string(),
                    // An unclosed block is all thinking.
                    None if m.content.trim_start().starts_with("<think>") => String::new(),
                    None => m.content.clone(),
                },
            };
            Message {
                role: m.role.clone(),
                content,
                reasoning_content: None,
            }
        })
        .collect()
}

/// The instructions one render may run: a base plus this much per message. A template is a
/// program that comes with the model's files, and one that loops for hours (`range` allows
/// 100 000 items, and loops nest) would hold the server's handler; real templates run tens to
/// a few hundred instructions a message. A render that runs out fails with an error. (Fuel
/// bounds time, not memory: a template that doubles a string in a loop can still exhaust it.)
pub const RENDER_FUEL_BASE: u64 = 1_000_000;
pub const RENDER_FUEL_PER_MESSAGE: u64 = 10_000;

#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The Jinja source, for writing it into a converted model's folder.
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |_fmt: String| -> String {
            // Deterministic output matters more for tests than the real date.
            "26 Jul 2024".to_string()
        });
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| anyhow!("chat template does not parse: {e}"))?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The history policy this template implies: one that cuts assistant content at
    /// `</think>` itself (Qwen3, DeepSeek-R1) strips; any other keeps (MiniMax-M2, and
    /// templates that know nothing of thinking pass content through verbatim).
    pub fn think_history(&self) -> ThinkHistory {
        let s = self.source.replace(' ', "");
        if s.contains("split('</think>')") || s.contains("split(\"</think>\")") {
            ThinkHistory::Strip
        } else {
            ThinkHistory::Keep
        }
    }

    /// Whether the generation prompt opens a `<think>` block (the model then writes only its
    /// reasoning, `</think>` and the answer, as MiniMax-M2's template makes it).
    pub fn opens_think(rendered_with_generation_prompt: &str) -> bool {
        rendered_with_generation_prompt
            .trim_end()
            .ends_with("<think>")
    }

    /// [`ChatTemplate::render`] after applying a thinking-history policy.
    pub fn render_thinking(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        policy: ThinkHistory,
    ) -> Result<String> {
        self.render(
            &apply_think_history(messages, policy),
            add_generation_prompt,
        )
    }

    /// Renders `messages`, ending with the assistant's turn opener when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        // The fuel is the environment's: a copy per render (its templates are shared).
        let mut env = self.env.clone();
        let per_message = RENDER_FUEL_PER_MESSAGE.saturating_mul(messages.len() as u64);
        env.set_fuel(Some(RENDER_FUEL_BASE.saturating_add(per_message)));
        let tmpl = env.get_template("chat")?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        // minijinja panics on some templates (2.24: `loop.cycle()` without arguments divides
        // by zero): a render that panics fails like any other. Nothing shared is left
        // half-updated: the environment is this render's copy.
        match std::panic::catch_unwind(AssertUnwindSafe(|| tmpl.render(ctx))) {
            Ok(r) => r.map_err(|e| anyhow!("chat template failed to render: {e}")),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                bail!("chat template failed to render: the renderer panicked ({why})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_chatml_template_with_python_methods() {
        let src = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.strip() }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let out = t.render(&[Message::new("user", "  hi ")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn think_history_keeps_or_strips_earlier_reasoning() {
        let mut a = Message::new("assistant", "The answer is 4.");
        a.reasoning_content = Some("2 + 2 = 4".into());
        let inline = Message::new("assistant", "<think>\nadd them\n</think>\n\nIt is 5.");
        let msgs = [Message::new("user", "2+2?"), a, inline.clone()];
        let kept = apply_think_history(&msgs, ThinkHistory::Keep);
        assert_eq!(kept[0], msgs[0]);
        assert_eq!(
            kept[1].content,
            "<think>\n2 + 2 = 4\n</think>\n\nThe answer is 4."
        );
        assert_eq!(kept[2].content, inline.content);
        let stripped = apply_think_history(&msgs, ThinkHistory::Strip);
        assert_eq!(stripped[1].content, "The answer is 4.");
        assert_eq!(stripped[2].content, "It is 5.");
        assert!(stripped.iter().all(|m| m.reasoning_content.is_none()));
        let open = Message::new("assistant", "<think>\nstill thinking");
        assert_eq!(
            apply_think_history(&[open], ThinkHistory::Strip)[0].content,
            ""
        );
    }

    #[test]
    fn templates_choose_their_think_history() {
        let qwen3 = "{% for m in messages %}{% if m.role == 'assistant' %}{% set c = m.content.split('</think>')[-1] %}{{ c }}{% else %}{{ m.content }}{% endif %}{% endfor %}";
        let t = ChatTemplate::new(qwen3, "", "").unwrap();
        assert_eq!(t.think_history(), ThinkHistory::Strip);
        let plain = ChatTemplate::new("{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}", "", "").unwrap();
        assert_eq!(plain.think_history(), ThinkHistory::Keep);
        let r = plain.render(&[Message::new("user", "q")], true).unwrap();
        assert!(ChatTemplate::opens_think(&r));
        assert!(!ChatTemplate::opens_think("<|im_start|>assistant\n"));
    }

    #[test]
    fn a_render_that_runs_too_long_is_an_error() {
        let src =
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let e = t.render(&[], true).unwrap_err().to_string();
        assert!(e.contains("fuel"), "{e}");
    }

    #[test]
    fn a_render_that_panics_is_an_error() {
        let t = ChatTemplate::new(
            "{% for i in range(2) %}{{ loop.cycle() }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let e = t.render(&[], true).unwrap_err().to_string();
        assert!(e.contains("panicked"), "{e}");
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let e = t.render(&[], true).unwrap_err().to_string();
        assert!(e.contains("no system role"), "{e}");
    }
}
