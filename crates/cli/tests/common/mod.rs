//! What the `hybrid` binary's tests share.
use std::process::Output;

/// Asserts a failed run whose stderr is exactly one line naming `what`.
pub fn fails_with(out: Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "expected one line, got: {err}"
    );
    assert!(
        err.starts_with("error: ") && err.contains(what),
        "expected '{what}' in: {err}"
    );
}
