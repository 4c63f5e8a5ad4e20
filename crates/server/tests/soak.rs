//! Soak (opt-in: `cargo test --release -p hybrid-server --test soak -- --ignored`): 64
//! concurrent clients on a real port for HYBRID_SOAK_SECS seconds (default 600) — chat and
//! completion requests, streaming and not, a third of the streams abandoned midway — with
//! the process's resident memory sampled every second. Memory must stay flat: the mean of the
//! last fifth of the run within 15% (+32 MiB) of the mean of the second fifth (the first is
//! warm-up: allocator pools, the prefix cache filling to its budget). Writes the samples and a
//! plot to $HYBRID_SOAK_OUT (default out/soak): rss.csv, rss.svg, soak.json.
mod common;
use common::*;
use engine::EngineConfig;
use serde_json::json;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn client(url: &str, id: usize, stop: &AtomicBool, ok: &AtomicU64, failed: &AtomicU64) {
    let a = agent();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let stream = (id + i).is_multiple_of(2);
        let body = if i % 3 == 0 {
            json!({"messages": [{"role": "user", "content": format!("Client {id} asks question {i}.")}],
                   "max_tokens": 16, "stream": stream})
        } else {
            json!({"prompt": format!("Client {id}, request {i}: once upon a time"),
                   "max_tokens": 16, "stream": stream})
        };
        let path = if i % 3 == 0 {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        let Ok(r) = a.post(&format!("{url}{path}")).send_json(&body) else {
            failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if r.status().as_u16() != 200 {
            failed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if stream {
            let reader = std::io::BufReader::new(r.into_body().into_reader());
            let abandon = (id + i).is_multiple_of(6);
            for (n, line) in reader.lines().enumerate() {
                if line.is_err() || (abandon && n >= 4) {
                    break;
                }
            }
        } else {
            let _ = r.into_body().read_to_string();
        }
        ok.fetch_add(1, Ordering::Relaxed);
    }
}

fn svg(samples: &[(f64, f64)]) -> String {
    let (w, h) = (800.0, 400.0);
    let tmax = samples.last().map_or(1.0, |s| s.0).max(1.0);
    let mmax = samples.iter().fold(1.0f64, |m, s| m.max(s.1)) * 1.1;
    let pts: Vec<String> = samples
        .iter()
        .map(|(t, m)| {
            format!(
                "{:.1},{:.1}",
                60.0 + t / tmax * (w - 80.0),
                h - 40.0 - m / mmax * (h - 60.0)
            )
        })
        .collect();
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="60" y="16">resident memory (MiB) of the server process, 64 clients, {tmax:.0} s</text>
<line x1="60" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="60" y1="20" x2="60" y2="{y0}" stroke="black"/>
<text x="62" y="32">{mmax:.0}</text><text x="62" y="{y0}">0</text><text x="{x1}" y="{yl}" text-anchor="end">{tmax:.0} s</text>
<polyline fill="none" stroke="steelblue" stroke-width="1.5" points="{}"/>
</svg>
"#,
        pts.join(" "),
        y0 = h - 40.0,
        x1 = w - 20.0,
        yl = h - 25.0,
    )
}

#[test]
#[ignore]
fn sixty_four_clients_for_ten_minutes_keep_memory_flat() {
    let secs: u64 = std::env::var("HYBRID_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let out = std::path::PathBuf::from(
        std::env::var("HYBRID_SOAK_OUT").unwrap_or_else(|_| "out/soak".into()),
    );
    std::fs::create_dir_all(&out).unwrap();
    let s = TestServer::start(
        teacher(),
        EngineConfig {
            max_num_seqs: 16,
            cache_bytes: 256 << 20,
            ..Default::default()
        },
    );
    let (stop, ok, failed) = (AtomicBool::new(false), AtomicU64::new(0), AtomicU64::new(0));
    let mut samples = vec![];
    std::thread::scope(|sc| {
        for id in 0..64 {
            let (url, stop, ok, failed) = (&s.url, &stop, &ok, &failed);
            sc.spawn(move || client(url, id, stop, ok, failed));
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_secs(1));
            let mib = rss() as f64 / (1 << 20) as f64;
            samples.push((t0.elapsed().as_secs_f64(), mib));
            if samples.len() % 60 == 0 {
                eprintln!(
                    "{:.0} s: RSS {mib:.0} MiB, {} requests done, {} failed",
                    samples.last().unwrap().0,
                    ok.load(Ordering::Relaxed),
                    failed.load(Ordering::Relaxed)
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let n = samples.len();
    let mean = |a: usize, b: usize| samples[a..b].iter().map(|s| s.1).sum::<f64>() / (b - a) as f64;
    let (early, late) = (mean(n / 5, 2 * n / 5), mean(4 * n / 5, n));
    let csv: String = std::iter::once("seconds,rss_mib\n".to_string())
        .chain(samples.iter().map(|(t, m)| format!("{t:.1},{m:.1}\n")))
        .collect();
    std::fs::write(out.join("rss.csv"), csv).unwrap();
    std::fs::write(out.join("rss.svg"), svg(&samples)).unwrap();
    let done = ok.load(Ordering::Relaxed);
    let report = json!({"seconds": secs, "clients": 64, "requests_ok": done,
        "requests_failed": failed.load(Ordering::Relaxed),
        "rss_mib_second_fifth": early, "rss_mib_last_fifth": late,
        "rss_mib_max": samples.iter().fold(0f64, |m, s| m.max(s.1))});
    std::fs::write(
        out.join("soak.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    eprintln!("{report}");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed");
    assert!(done > 0);
    assert!(
        late <= early * 1.15 + 32.0,
        "memory grew: {early:.0} MiB -> {late:.0} MiB"
    );
}
