//! The server under load, alone in its process so that its memory is all this test's own
//! (the other server tests load a second model and run servers of their own).
mod common;
use common::*;
use engine::EngineConfig;
use serde_json::json;

/// 32 concurrent streaming clients for a bounded time: every request completes (200, a
/// finish reason, [DONE]); afterwards nothing runs or waits, no state is held beyond the
/// prefix cache's budget, and the process memory returns to its idle level (within that
/// budget and allocator slack).
#[test]
fn thirty_two_concurrent_streaming_clients_and_memory_returns_to_idle() {
    let budget = 64usize << 20;
    let s = TestServer::start(
        teacher(),
        EngineConfig {
            max_num_seqs: 8,
            max_batched_tokens: 64,
            cache_bytes: budget,
            ..Default::default()
        },
    );
    // Warm up (first allocations, the template, the tokenizer), then take the idle level.
    let _ = post(
        &format!("{}/v1/completions", s.url),
        &json!({"prompt": "Hello", "max_tokens": 2}),
    );
    let idle = rss();
    let done = streaming_clients(&s.url, 32, 20, 4);
    assert!(done >= 32);
    let m = idle_metrics(&s.url);
    assert_eq!(metric(&m, "hybrid_running"), 0.0, "{m}");
    assert_eq!(metric(&m, "hybrid_queue_waiting"), 0.0);
    assert_eq!(metric(&m, "hybrid_running_state_bytes"), 0.0);
    assert!(metric(&m, "hybrid_prefix_cache_bytes") <= budget as f64);
    let after = rss();
    println!(
        "{done} requests; memory {} MiB idle, {} MiB after (prefix cache {} MiB)",
        idle >> 20,
        after >> 20,
        metric(&m, "hybrid_prefix_cache_bytes") as u64 >> 20
    );
    assert!(
        after < idle + budget as u64 + (128 << 20),
        "memory grew from {} MiB idle to {} MiB after the load ({done} requests)",
        idle >> 20,
        after >> 20
    );
}
