//! Speculative decoding through the server on a real port, SmolLM2 and the hybrid made from it:
//! greedy replies are byte-identical with speculation off and on (prompt lookup and a draft
//! model; one sequence at a time and batched with chunked prefill and the prefix cache), drafts
//! are proposed and accepted, and a repeated prompt is still cached whole.
mod common;
use common::*;
use engine::speculative::{Method, SpecConfig};
use engine::{Engine, EngineConfig, ServeModel};
use serde_json::json;
use std::sync::Arc;

fn spec(method: Method, k: usize) -> Option<SpecConfig> {
    Some(SpecConfig { method, k })
}

fn draft(m: &ServeModel) -> Method {
    Method::Model {
        path: m.name.clone().into(),
        model: Arc::new(m.model.clone_model()),
    }
}

fn speculation_is_exact(m: Arc<ServeModel>, other: Arc<ServeModel>) {
    let reference = TestServer::start(m.clone(), cold_config());
    let want = replies(&reference, false);
    drop(reference);
    assert!(!want.last().unwrap().is_empty(), "{want:?}");
    let runs = [
        ("ngram, one at a time", spec(Method::Ngram, 4), 1, 4096),
        (
            "ngram, batched, chunks of 16",
            spec(Method::Ngram, 3),
            4,
            16,
        ),
        ("draft model, batched", spec(draft(&other), 3), 4, 64),
    ];
    for (what, speculative, seqs, chunk) in runs {
        let s = TestServer::start(
            m.clone(),
            EngineConfig {
                max_num_seqs: seqs,
                max_batched_tokens: chunk,
                speculative,
                ..Default::default()
            },
        );
        let got = replies(&s, seqs > 1);
        assert_eq!(want, got, "{}: greedy replies changed ({what})", m.name);
        let metrics = idle_metrics(&s.url);
        let (drafted, accepted) = (
            metric(&metrics, "hybrid_spec_draft_tokens_total"),
            metric(&metrics, "hybrid_spec_accepted_tokens_total"),
        );
        assert!(drafted > 0.0, "{}: no drafts ({what})", m.name);
        eprintln!(
            "{} ({what}): {accepted} of {drafted} drafts accepted",
            m.name
        );
        assert!(metrics.contains("hybrid_spec_accepted_length_total{model="));
        // The copy request again: a hit of the whole prompt, the same reply.
        let again = chat(&s, &[json!({"role": "user", "content": COPY})], 32);
        assert_eq!(again.0, *want.last().unwrap());
        assert_eq!(
            again.1, again.2,
            "{what}: a repeated prompt is cached whole"
        );
    }
}

#[test]
fn speculation_keeps_greedy_replies_fa() {
    speculation_is_exact(teacher(), hybrid());
}

#[test]
fn speculation_keeps_greedy_replies_hybrid() {
    speculation_is_exact(hybrid(), teacher());
}

/// The copy request's drafts from prompt lookup are mostly right for the real SmolLM2.
#[test]
fn prompt_lookup_drafts_are_accepted_when_copying() {
    let s = TestServer::start(
        teacher(),
        EngineConfig {
            speculative: spec(Method::Ngram, 4),
            ..Default::default()
        },
    );
    let reply = chat(&s, &[json!({"role": "user", "content": COPY})], 32).0;
    let m = idle_metrics(&s.url);
    let (drafted, accepted) = (
        metric(&m, "hybrid_spec_draft_tokens_total"),
        metric(&m, "hybrid_spec_accepted_tokens_total"),
    );
    assert!(
        accepted >= 0.5 * drafted && accepted >= 4.0,
        "{accepted} of {drafted} accepted; reply {reply:?}"
    );
}

#[test]
fn a_draft_model_with_another_vocabulary_is_refused() {
    let t = teacher();
    let tiny = model::hybrid::HybridModel::init(
        model::hybrid::HybridConfig::small("fa,gdn", 50).unwrap(),
        1,
    )
    .unwrap();
    let cfg = EngineConfig {
        speculative: spec(
            Method::Model {
                path: "tiny".into(),
                model: Arc::new(tiny),
            },
            3,
        ),
        ..Default::default()
    };
    let e = Engine::start(t, cfg).err().expect("refused").to_string();
    assert!(e.contains("vocabulary of 50 tokens"), "{e}");
}
