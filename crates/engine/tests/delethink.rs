//! Delethink on the real SmolLM2 (tokenizer, chat template) and on a hybrid with GDN and SWA
//! layers: the context rebuilt at every boundary, token by token, and each chunk's tokens equal
//! to a cold greedy run from that context (the restored snapshot plus the carryover prefill is
//! exactly a fresh prefill of q ⊕ head ⊕ carryover).
use engine::delethink::{think, DelethinkSpec, Event};
use engine::ServeModel;
use model::hybrid::{HybridConfig, HybridModel};

fn smollm2() -> ServeModel {
    let p = model::fetch::default_model_path();
    assert!(
        p.exists(),
        "SmolLM2 is not fetched: run `hybrid fetch` (make test does)"
    );
    ServeModel::load(&p, "smol").unwrap()
}

/// A small random hybrid (FA, GDN, SWA of window 6) over SmolLM2's vocabulary and tokenizer.
fn hybrid(t: &ServeModel) -> ServeModel {
    let cfg = HybridConfig::small("fa,gdn,swa,gdn", t.model.config.vocab_size).unwrap();
    ServeModel {
        name: "tiny-hybrid".into(),
        model: HybridModel::init(cfg, 7).unwrap(),
        tokenizer: t.tokenizer.clone(),
        template: t.template.clone(),
        context: 2048,
    }
}

/// Greedy tokens from a fresh state after `context`, at most `n`, up to a stop token.
fn cold(m: &ServeModel, context: &[u32], n: usize) -> Vec<u32> {
    let mut st = m.model.new_state(1);
    let mut logits = m.model.forward(context, 1, &mut st, false).unwrap();
    let mut out = vec![];
    while out.len() < n {
        let next = model::sampling::argmax(&logits);
        if m.tokenizer.is_stop(next) {
            break;
        }
        out.push(next);
        logits = m.model.forward(&[next], 1, &mut st, false).unwrap();
    }
    out
}

fn check(m: &ServeModel, query: &[u32], spec: DelethinkSpec) {
    let mut boundaries = vec![];
    let mut text = String::new();
    let trace = think(m, query, &spec, &Default::default(), &[], |e| match e {
        Event::Text(t) => text.push_str(t),
        Event::Boundary { chunk, context } => boundaries.push((chunk, context)),
    })
    .unwrap();
    assert!(
        trace.chunks.len() >= 3,
        "the trace should cross two boundaries ({} chunks, {})",
        trace.chunks.len(),
        trace.finish_reason
    );
    assert_eq!(text, trace.text);
    let head: Vec<u32> = trace.chunks[0].tokens[..spec.head].to_vec();
    for (i, c) in trace.chunks.iter().enumerate() {
        let want: Vec<u32> = if i == 0 {
            query.to_vec()
        } else {
            let prev = &trace.chunks[i - 1].tokens;
            let mut w = query.to_vec();
            w.extend(&head);
            w.extend(&prev[prev.len() - spec.carryover..]);
            w
        };
        assert_eq!(c.context, want, "chunk {} context", i + 1);
        assert_eq!(boundaries[i], (i + 1, want.len()));
        let budget = if i == 0 {
            spec.chunk
        } else {
            spec.chunk - spec.carryover
        };
        assert!(c.tokens.len() <= budget);
        assert_eq!(
            c.prefilled,
            if i == 0 { query.len() } else { spec.carryover }
        );
        assert_eq!(
            c.tokens,
            cold(m, &want, budget),
            "chunk {} differs from a cold greedy run of its context",
            i + 1
        );
        assert!(c.peak_cache_tokens <= spec.peak_context(query.len()));
    }
    let all: Vec<u32> = trace.chunks.iter().flat_map(|c| c.tokens.clone()).collect();
    assert_eq!(trace.tokens, all);
    assert!(trace.tokens.len() <= spec.max_thinking_tokens());
}

#[test]
fn boundaries_rebuild_query_head_and_carryover_exactly() {
    let t = smollm2();
    let q = model::prompt_tokens(
        &t.tokenizer,
        t.template.as_ref(),
        "Write a long story about a dragon who learns to count.",
        true,
    )
    .unwrap();
    let spec = DelethinkSpec {
        chunk: 24,
        carryover: 8,
        max_chunks: 4,
        head: 4,
    };
    check(&t, &q, spec);
    // A head as long as the whole first chunk, and no head at all.
    check(&t, &q, DelethinkSpec { head: 24, ..spec });
    check(&t, &q, DelethinkSpec { head: 0, ..spec });
    let h = hybrid(&t);
    check(&h, &q, spec);
    check(
        &h,
        &q,
        DelethinkSpec {
            head: 0,
            carryover: 3,
            ..spec
        },
    );
}

#[test]
fn bad_specs_are_refused_with_a_reason() {
    let t = smollm2();
    let q = [1u32, 2, 3];
    let bad = [
        (
            DelethinkSpec {
                chunk: 8,
                carryover: 8,
                max_chunks: 2,
                head: 1,
            },
            "carryover",
        ),
        (
            DelethinkSpec {
                chunk: 0,
                carryover: 0,
                max_chunks: 2,
                head: 0,
            },
            "chunk >= 1",
        ),
        (
            DelethinkSpec {
                chunk: 8,
                carryover: 2,
                max_chunks: 2,
                head: 9,
            },
            "head",
        ),
        (
            DelethinkSpec {
                chunk: 9000,
                carryover: 2,
                max_chunks: 2,
                head: 1,
            },
            "context",
        ),
    ];
    for (spec, why) in bad {
        let e = think(&t, &q, &spec, &Default::default(), &[], |_| {}).unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
    }
}
