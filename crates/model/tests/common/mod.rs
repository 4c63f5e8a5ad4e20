//! Shared by the integration tests that run the real SmolLM2 model.
use std::path::PathBuf;

/// The fetched default model. `make test` fetches it first; a missing model fails loudly
/// rather than skipping, so that CI cannot pass without running these checks.
#[allow(dead_code)]
pub fn smollm2() -> model::LoadedModel {
    let p: PathBuf = model::fetch::default_model_path();
    assert!(
        p.exists(),
        "the SmolLM2 model is not fetched ({}): run `hybrid fetch` or `make test`",
        p.display()
    );
    model::LoadedModel::load(&p).expect("SmolLM2 loads")
}

#[allow(dead_code)]
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// Weights moved further from the init than its small normals, so that every path of a
/// random model carries signal: norm gains by up to ±0.1, everything else by up to ±0.03.
#[allow(dead_code)]
pub fn perturb(m: &mut model::hybrid::HybridModel, seed: u64) {
    let gr = m.zero_grads();
    let mut r = tensor::rng::SplitMix64::new(seed);
    m.visit_params(&gr, |name, p, _| {
        let s = if name.ends_with("norm.weight") {
            0.2
        } else {
            0.06
        };
        p.iter_mut()
            .for_each(|x| *x += (r.uniform() as f32 - 0.5) * s);
    });
}

/// max |want − got| / max |want|; a non-finite value in `got` is an infinite error.
#[allow(dead_code)]
pub fn rel_err(want: &[f32], got: &[f32]) -> f32 {
    assert_eq!(want.len(), got.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    want.iter()
        .zip(got)
        .map(|(a, b)| {
            if b.is_finite() {
                (a - b).abs()
            } else {
                f32::INFINITY
            }
        })
        .fold(0f32, f32::max)
        / scale
}
