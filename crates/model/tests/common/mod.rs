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
