//! Request bodies that broke the checks before the engine (found by the `request_parser`
//! fuzz target of fuzz/, or while writing it): each must now be refused with a message.
use server::api::{parse_body, ChatBody, CompletionBody};

const SERVED: &str = "hybrid-test";
const CONTEXT: usize = 4096;

/// What the completion handler concludes about `body` before the engine: its error, if any.
fn completion_error(body: &str, prompt_len: usize) -> Option<String> {
    let b: CompletionBody = match parse_body(body.as_bytes()) {
        Ok(b) => b,
        Err(e) => return Some(e),
    };
    b.common
        .check(SERVED, CONTEXT, prompt_len)
        .err()
        .map(|e| e.to_string())
}

/// Delethink's fit check adds prompt + head + chunk: with a client's chunk and head near the
/// top of the integers the sum overflowed (a panic with overflow checks, and in a release
/// build a wrapped small sum that "fit", sending an impossible spec to the engine).
#[test]
fn delethink_sizes_that_overflow_are_refused() {
    let max = u64::MAX;
    let body = format!(
        r#"{{"prompt": "x", "delethink": {{"chunk": {max}, "head": {max}, "carryover": 0, "max_chunks": 1}}}}"#
    );
    let e = completion_error(&body, 3).expect("refused");
    assert!(e.contains("cannot fit"), "{e}");
    let body = format!(
        r#"{{"prompt": "x", "delethink": {{"chunk": {max}, "head": 2, "carryover": 1, "max_chunks": 2}}}}"#
    );
    let e = completion_error(&body, 3).expect("refused");
    assert!(e.contains("context"), "{e}");
}

/// The checks still pass a reasonable Delethink request through.
#[test]
fn delethink_that_fits_is_accepted() {
    let body = r#"{"prompt": "x", "delethink": {"chunk": 512, "carryover": 64, "max_chunks": 4}}"#;
    assert_eq!(completion_error(body, 10), None);
}

/// An empty conversation is refused by the chat body itself, before any template runs.
#[test]
fn chat_without_messages_is_refused() {
    let b: ChatBody = parse_body(br#"{"messages": []}"#).unwrap();
    let e = b.messages().unwrap_err().to_string();
    assert!(e.contains("messages is empty"), "{e}");
}
