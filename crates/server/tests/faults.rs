//! The server on a real port under bad days: more work than its memory budget (503 with
//! Retry-After, then service again), request bodies past the size limit, thousands of tiny
//! requests, storms of clients that disconnect mid-stream, and a slow reader that must not
//! hold up anyone else. Each test ends by checking that the server still answers. (Malformed
//! JSON, wrong types, enormous prompts and max_tokens past the context are in server.rs;
//! the fuzzed request parser in fuzz/.) The 10-minute soak is `soak.rs` (opt-in).
mod common;
use common::*;
use engine::{EngineConfig, PoolBytes};
use serde_json::{json, Value};
use std::io::BufRead;
use std::time::{Duration, Instant};

fn still_serving(s: &TestServer) {
    let (status, v) = post(
        &format!("{}/v1/completions", s.url),
        &json!({"prompt": "Hello", "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(status, 200, "the server stopped answering: {v}");
}

#[test]
fn past_its_memory_budget_the_server_answers_503_with_retry_after() {
    // SmolLM2's f32 keys/values take 46 KB a token on the CPU: a request of ~10 prompt
    // tokens and 96 new ones needs ~5 MB. Pools of 10 MB in all run one and queue one.
    let cfg = EngineConfig {
        max_num_seqs: 1,
        pools: PoolBytes {
            kv: 8 << 20,
            window: 1 << 20,
            recurrent: 1 << 20,
        },
        ..Default::default()
    };
    let s = TestServer::start(teacher(), cfg);
    let url = format!("{}/v1/completions", s.url);
    let results: Vec<(u16, Option<String>, Value)> =
        std::thread::scope(|sc| {
            let hs: Vec<_> =
                (0..8)
                    .map(|i| {
                        let url = &url;
                        sc.spawn(move || {
                    let body = json!({"prompt": format!("Story number {i}:"), "max_tokens": 96,
                                      "temperature": 0, "ignore_eos": true});
                    let mut r = agent().post(url).send_json(&body).unwrap();
                    let retry = r
                        .headers()
                        .get("retry-after")
                        .map(|h| h.to_str().unwrap().to_string());
                    (r.status().as_u16(), retry, r.body_mut().read_json::<Value>().unwrap())
                })
                    })
                    .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(ok + refused.len(), 8, "{results:?}");
    assert!(
        ok >= 1 && !refused.is_empty(),
        "ok {ok}, refused {}",
        refused.len()
    );
    for (_, retry, v) in &refused {
        assert_eq!(retry.as_deref(), Some("1"));
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("memory budget"), "{msg}");
    }
    let (_, m) = get_text(&format!("{}/metrics", s.url));
    assert_eq!(
        metric(&m, "hybrid_overloaded_total") as usize,
        refused.len()
    );
    // Once the queue drains, the budget is free again (nothing leaked from it).
    assert_eq!(metric(&m, "hybrid_queued_state_bytes"), 0.0);
    still_serving(&s);
}

#[test]
fn a_body_past_the_size_limit_gets_413() {
    use std::io::{Read, Write};
    let s = TestServer::start(teacher(), EngineConfig::default());
    // A client that waits for `100 Continue` (as curl does for large bodies): the 413 comes at
    // once, before any of the body is sent, with the sizes named.
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        3 << 20
    )
    .unwrap();
    let mut reply = vec![0u8; 4096];
    let n = c.read(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]).to_string();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("3145728 bytes"), "{reply}");
    // A client that sends the whole body at once: the server may close the connection before
    // the upload ends (it does not read a refused body), so the client sees the 413 or a
    // broken pipe; anything else, or a server that stops serving, fails.
    let huge = "x".repeat(3 << 20);
    let body = json!({"prompt": huge, "max_tokens": 1}).to_string();
    match agent()
        .post(&format!("{}/v1/completions", s.url))
        .header("content-type", "application/json")
        .send(&body)
    {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        Err(e) => assert!(
            matches!(&e, ureq::Error::Io(io) if matches!(io.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)),
            "{e}"
        ),
    }
    still_serving(&s);
}

#[test]
fn two_thousand_tiny_requests_from_sixteen_clients() {
    let s = TestServer::start(
        teacher(),
        EngineConfig {
            max_num_seqs: 16,
            ..Default::default()
        },
    );
    let url = format!("{}/v1/completions", s.url);
    let (n, clients) = (2000, 16);
    let statuses: Vec<u16> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..clients)
            .map(|c| {
                let url = &url;
                sc.spawn(move || {
                    let a = agent(); // keep-alive connection per client
                    (0..n / clients)
                        .map(|i| {
                            let body = json!({"prompt": format!("{c} {i}"), "max_tokens": 1});
                            a.post(url).send_json(&body).unwrap().status().as_u16()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.len(), n);
    assert!(statuses.iter().all(|&c| c == 200), "{statuses:?}");
    let (_, m) = get_text(&format!("{}/metrics", s.url));
    assert!(metric(&m, "hybrid_requests_total") >= n as f64);
    still_serving(&s);
}

/// Opens a streaming request and hangs up after `lines` lines.
fn stream_and_hang_up(url: &str, lines: usize) {
    let r = agent()
        .post(url)
        .send_json(json!({"prompt": "Count to one hundred:", "max_tokens": 200,
                          "temperature": 0, "stream": true, "ignore_eos": true}))
        .unwrap();
    let mut reader = std::io::BufReader::new(r.into_body().into_reader());
    let mut line = String::new();
    for _ in 0..lines {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
    }
}

#[test]
fn a_storm_of_clients_that_disconnect_mid_stream() {
    let s = TestServer::start(teacher(), EngineConfig::default());
    let url = format!("{}/v1/completions", s.url);
    let clients = 48;
    std::thread::scope(|sc| {
        for i in 0..clients {
            let url = &url;
            sc.spawn(move || stream_and_hang_up(url, 1 + i % 5));
        }
    });
    // Every abandoned sequence is cancelled (none generates its 200 tokens for nobody).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, m) = get_text(&format!("{}/metrics", s.url));
        let (cancelled, running, waiting) = (
            metric(&m, "hybrid_cancelled_total"),
            metric(&m, "hybrid_running"),
            metric(&m, "hybrid_queue_waiting"),
        );
        if cancelled >= clients as f64 && running == 0.0 && waiting == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cancelled {cancelled} of {clients}, running {running}, waiting {waiting}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    still_serving(&s);
}

#[test]
fn a_slow_reader_holds_up_nobody_else() {
    let s = TestServer::start(teacher(), EngineConfig::default());
    let url = format!("{}/v1/completions", s.url);
    let slow_done = std::thread::scope(|sc| {
        let slow = sc.spawn(|| {
            let r = agent()
                .post(&url)
                .send_json(json!({"prompt": "Count to fifty:", "max_tokens": 40,
                                  "temperature": 0, "stream": true, "ignore_eos": true}))
                .unwrap();
            let reader = std::io::BufReader::new(r.into_body().into_reader());
            let mut chunks = 0;
            for line in reader.lines() {
                let line = line.unwrap();
                if line == "data: [DONE]" {
                    break;
                }
                if line.starts_with("data: ") {
                    chunks += 1;
                    std::thread::sleep(Duration::from_millis(150)); // reads one event at a time
                }
            }
            (Instant::now(), chunks)
        });
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        still_serving(&s);
        let fast_done = Instant::now();
        let (slow_done, chunks) = slow.join().unwrap();
        assert!(chunks >= 40, "the slow reader got {chunks} events");
        assert!(
            fast_done < slow_done,
            "a short request ({:?}) waited for the slow reader",
            fast_done - t0
        );
        slow_done
    });
    assert!(slow_done <= Instant::now());
    still_serving(&s);
}
