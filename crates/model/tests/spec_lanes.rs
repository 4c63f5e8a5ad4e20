//! Speculative verification's lanes on the CPU model, all five layer kinds: one call over T
//! tokens gives the logits that T decode steps give, and committing any prefix of them leaves
//! the state that decoding just that prefix leaves (later steps agree), including a sliding
//! window whose blocks are dropped while the drafts are checked.
use model::hybrid::{HybridConfig, HybridModel, LayerState};

/// All five layer kinds (window 6), weights perturbed beyond the init.
fn model() -> HybridModel {
    let config = HybridConfig {
        max_position_embeddings: 256,
        ..HybridConfig::small("fa,swa,gdn,kda,gla", 37).unwrap()
    };
    let mut m = HybridModel::init(config, 3).unwrap();
    let g = m.zero_grads();
    let mut r = tensor::rng::SplitMix64::new(5);
    m.visit_params(&g, |_, p, _| {
        p.iter_mut()
            .for_each(|x| *x += (r.uniform() as f32 - 0.5) * 0.4)
    });
    m
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    (0..n as u64)
        .map(|i| ((i * 11 + seed * 5 + i * i) % 37) as u32)
        .collect()
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
    assert!(err < 1e-4, "{what}: max rel err {err}");
}

fn steps(m: &HybridModel, toks: &[u32], st: &mut [LayerState]) -> Vec<Vec<f32>> {
    toks.iter()
        .map(|&t| m.forward(&[t], 1, st, false).unwrap())
        .collect()
}

#[test]
fn verification_equals_decode_steps_and_any_prefix_commits() {
    let m = model();
    let v = 37;
    // 65 prompt tokens: after the 5 drafts the window of 6 no longer reaches the second
    // 32-token block, which would be dropped without the verification's slack although a
    // rollback to 66 tokens still needs its last keys.
    let mut prompt_state = m.new_state(1);
    m.forward(&tokens(65, 1), 1, &mut prompt_state, false)
        .unwrap();
    let drafts = tokens(5, 2);
    let after = tokens(3, 3);
    let stepped = steps(&m, &drafts, &mut prompt_state.clone());
    for keep in 0..=drafts.len() {
        let mut st = prompt_state.clone();
        let (logits, lanes) = m.forward_lanes(&drafts, &mut st).unwrap();
        for (j, want) in stepped.iter().enumerate() {
            close(
                &logits[j * v..(j + 1) * v],
                want,
                &format!("verified token {j}"),
            );
        }
        m.commit(&mut st, lanes, keep).unwrap();
        let mut reference = prompt_state.clone();
        steps(&m, &drafts[..keep], &mut reference);
        for (a, b) in st.iter().zip(&reference) {
            match (a, b) {
                (LayerState::Attention(a), LayerState::Attention(b)) => {
                    assert_eq!((a.kept, a.pos), (b.kept, b.pos), "keep {keep}");
                    assert_eq!(a.kv[0].end(), b.kv[0].end());
                }
                (LayerState::Linear(a), LayerState::Linear(b)) => {
                    close(&a.rec, &b.rec, "recurrent state");
                    close(&a.conv_v, &b.conv_v, "conv history");
                }
                _ => panic!("state kinds differ"),
            }
        }
        let (got, want) = (
            steps(&m, &after, &mut st),
            steps(&m, &after, &mut reference),
        );
        for (g, w) in got.iter().zip(&want) {
            close(g, w, &format!("a step after keeping {keep}"));
        }
    }
}

#[test]
fn committing_more_than_was_verified_is_an_error() {
    let m = model();
    let mut st = m.new_state(1);
    let (_, lanes) = m.forward_lanes(&tokens(3, 1), &mut st).unwrap();
    let e = m.commit(&mut st, lanes, 4).unwrap_err();
    assert!(e.to_string().contains("cannot keep 4 of 3"), "{e}");
    assert!(m.forward_lanes(&[], &mut st).is_err());
}
