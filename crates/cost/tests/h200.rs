//! The cost model against this project's H200 measurements (committed under bench/): fitted
//! to the kernel benchmarks and three decode points, checked on the runs it was not fitted to.
use cost::calibrate::{calibrate, validate};
use std::path::PathBuf;

fn bench(f: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../bench")
        .join(f)
}

#[test]
fn predictions_agree_with_the_h200_runs_within_25_percent() {
    let p = calibrate(
        &bench("gpu-check-2026-11-30.json"),
        &bench("context-cuda-2026-11-29.json"),
        &bench("gpu-model-2026-11-30.json"),
    )
    .unwrap();
    println!("{}", serde_json::to_string_pretty(&p).unwrap());
    let checks = validate(
        &p,
        &bench("context-cuda-2026-11-29.json"),
        Some(&bench("gpu-model-2026-11-30.json")),
        Some(&bench("serve-gpu-2026-11-30/bench-serve.json")),
    )
    .unwrap();
    for c in &checks {
        println!(
            "{:>7.1}% {} (measured {:.3}, predicted {:.3} {}){}",
            c.error * 100.0,
            c.what,
            c.measured,
            c.predicted,
            c.unit,
            if c.fitted { " [fitted]" } else { "" }
        );
    }
    // Held out, and of what the model claims to cover (departures are listed with reasons).
    let held_out: Vec<_> = checks
        .iter()
        .filter(|c| !c.fitted && c.departure.is_none())
        .collect();
    assert!(held_out.len() >= 9, "{} held-out points", held_out.len());
    assert!(checks.iter().filter(|c| c.departure.is_some()).count() <= 9);
    let bad: Vec<_> = held_out.iter().filter(|c| c.error.abs() > 0.25).collect();
    assert!(
        bad.is_empty(),
        "{} of {} held-out predictions are off by more than 25%: {bad:#?}",
        bad.len(),
        held_out.len()
    );
}
