//! The hybrid model with all five layer types: save/load round trip, backward through the
//! whole model (embedding, norms, every mixer, SwiGLU, LM head) against finite differences,
//! and stateful prefill + decode equal to one whole-sequence forward.
use model::hybrid::config::LinearAttnType;
use model::hybrid::{parse_layout, HybridConfig, HybridModel};

fn config(layout: &str, mlp: usize, tied: bool) -> HybridConfig {
    let (layer_types, lin) = parse_layout(layout).unwrap();
    HybridConfig {
        model_type: "hybrid".into(),
        vocab_size: 37,
        hidden_size: 16,
        intermediate_size: mlp,
        num_hidden_layers: layer_types.len(),
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 4,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        partial_rotary_factor: 1.0,
        sliding_window: Some(3),
        attn_output_gate: false,
        attention_bias: false,
        qk_norm: false,
        moe: None,
        mla: None,
        max_position_embeddings: 64,
        tie_word_embeddings: tied,
        layer_types,
        linear_attn_type: Some(LinearAttnType::PerLayer(lin)),
        linear_num_key_heads: Some(2),
        linear_num_value_heads: Some(2),
        linear_key_head_dim: Some(4),
        linear_value_head_dim: Some(4),
        linear_conv_kernel_dim: 4,
        linear_gate_rank: 4,
        linear_chunk_size: 4,
        bos_token_id: None,
        eos_token_id: None,
    }
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    (0..n as u64)
        .map(|i| ((i * 7 + seed * 13 + i * i) % 37) as u32)
        .collect()
}

/// Larger random weights than the init so every path carries signal.
fn perturb(m: &mut HybridModel) {
    let g = m.zero_grads();
    let mut r = tensor::rng::SplitMix64::new(99);
    m.visit_params(&g, |_, p, _| {
        for x in p.iter_mut() {
            *x += (r.uniform() as f32 - 0.5) * 0.4;
        }
    });
}

#[test]
fn all_five_layer_types_round_trip_through_save_and_load() {
    let mut m = HybridModel::init(config("fa,swa,gdn,kda,gla", 24, false), 1).unwrap();
    perturb(&mut m);
    let dir = std::env::temp_dir().join(format!("hybrid-roundtrip-{}", std::process::id()));
    m.save(&dir).unwrap();
    let m2 = HybridModel::load(&dir).unwrap();
    assert_eq!(m2.config, m.config);
    let t = tokens(2 * 9, 3);
    let (a, _) = m.forward_train(&t, 2, 9).unwrap();
    let (b, _) = m2.forward_train(&t, 2, 9).unwrap();
    assert_eq!(a, b, "outputs differ after save/load");
    assert_eq!(m.named_params(), m2.named_params());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn decode_with_state_equals_whole_sequence_forward() {
    let mut m = HybridModel::init(config("fa,swa,gdn,kda,gla", 24, true), 2).unwrap();
    perturb(&mut m);
    let (b, t) = (2, 11);
    let toks = tokens(b * t, 5);
    let (want, _) = m.forward_train(&toks, b, t).unwrap();
    let mut st = m.new_state(b);
    let first: Vec<u32> = (0..b)
        .flat_map(|i| toks[i * t..i * t + 6].to_vec())
        .collect();
    let mut got = m.forward(&first, b, &mut st, true).unwrap();
    let v = 37;
    let mut rows: Vec<Vec<f32>> = (0..b)
        .map(|i| got[i * 6 * v..(i + 1) * 6 * v].to_vec())
        .collect();
    for p in 6..t {
        let step: Vec<u32> = (0..b).map(|i| toks[i * t + p]).collect();
        got = m.forward(&step, b, &mut st, false).unwrap();
        for i in 0..b {
            rows[i].extend_from_slice(&got[i * v..(i + 1) * v]);
        }
    }
    let flat: Vec<f32> = rows.concat();
    let err = want
        .iter()
        .zip(&flat)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-4, "max abs diff {err}");
}

#[test]
fn whole_model_backward_matches_finite_differences() {
    for (layout, mlp, tied) in [("fa,swa,gdn,kda,gla", 24, true), ("gla,fa", 0, false)] {
        let mut m = HybridModel::init(config(layout, mlp, tied), 3).unwrap();
        perturb(&mut m);
        let (b, t) = (2, 6);
        let toks = tokens(b * t, 7);
        let (logits, saved) = m.forward_train(&toks, b, t).unwrap();
        let w: Vec<f32> = (0..logits.len())
            .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0)
            .collect();
        let mut g = m.zero_grads();
        m.backward(&saved, &w, &mut g);
        let loss = |m: &HybridModel| -> f64 {
            m.forward_train(&toks, b, t)
                .unwrap()
                .0
                .iter()
                .zip(&w)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        };
        // Directional derivative along a random unit direction per tensor (see mixers' layer
        // tests for why directions, and why the spread of the estimates is the noise floor).
        let names: Vec<String> = m.named_params().map.keys().cloned().collect();
        let mut grads = std::collections::BTreeMap::new();
        let mut mm = m;
        mm.visit_params(&g, |k, _, gr| {
            grads.insert(k.to_string(), gr.to_vec());
        });
        let mut r = tensor::rng::SplitMix64::new(1);
        for name in names {
            let ga = &grads[&name];
            let mut u: Vec<f32> = ga.iter().map(|_| r.uniform() as f32 - 0.5).collect();
            let un = u.iter().map(|v| v * v).sum::<f32>().sqrt();
            u.iter_mut().for_each(|v| *v /= un);
            let ana: f64 = u.iter().zip(ga).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mut est: Vec<f64> = [5e-3f32, 1e-2, 2e-2, 4e-2]
                .iter()
                .map(|&h| {
                    let mut f = |h: f32| {
                        let g0 = mm.zero_grads();
                        mm.visit_params(&g0, |k, p, _| {
                            if k == name {
                                p.iter_mut().zip(&u).for_each(|(p, u)| *p += h * u);
                            }
                        });
                        let l = loss(&mm);
                        mm.visit_params(&g0, |k, p, _| {
                            if k == name {
                                p.iter_mut().zip(&u).for_each(|(p, u)| *p -= h * u);
                            }
                        });
                        l
                    };
                    let d1 = (f(h) - f(-h)) / (2.0 * h as f64);
                    let d2 = (f(h / 2.0) - f(-h / 2.0)) / h as f64;
                    (4.0 * d2 - d1) / 3.0
                })
                .collect();
            est.sort_by(f64::total_cmp);
            let num = (est[1] + est[2]) / 2.0;
            let gnorm = ga.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            let denom = ana.abs().max(0.1 * gnorm).max(1e-9);
            let (e, spread) = ((num - ana).abs() / denom, (est[3] - est[0]).abs() / denom);
            assert!(
                e < 1e-3 + spread,
                "{layout}: d{name}: rel err {e} (spread {spread}), numeric {num} analytic {ana}"
            );
        }
    }
}

/// `filled_state(n)` (decode-speed measurement without a prefill) holds what a real prefill
/// of n tokens keeps: all n keys for FA, the last W−1 for SWA, and continues at position n.
#[test]
fn filled_state_keeps_what_a_prefill_keeps() {
    use model::hybrid::LayerState;
    let m = HybridModel::init(config("fa,swa,gdn", 24, true), 5).unwrap();
    let n = 10;
    let mut real = m.new_state(1);
    m.forward(&tokens(n, 3), 1, &mut real, false).unwrap();
    let mut filled = m.filled_state(1, n);
    for (a, b) in real.iter().zip(&filled) {
        match (a, b) {
            (LayerState::Attention(a), LayerState::Attention(b)) => {
                assert_eq!((a.kept, a.pos), (b.kept, b.pos));
                // Both end at the same token and hold at least the kept ones (a window frees
                // whole blocks only, so a prefill may hold a few more).
                assert_eq!(a.kv[0].end(), b.kv[0].end());
                for c in [&a.kv[0], &b.kv[0]] {
                    assert!(c.end() - c.start() >= a.kept);
                }
            }
            (LayerState::Linear(_), LayerState::Linear(_)) => {}
            _ => panic!("state kinds differ"),
        }
    }
    // Steps after it run and keep advancing.
    for _ in 0..3 {
        let l = m.forward(&[1], 1, &mut filled, false).unwrap();
        assert!(l.iter().all(|x| x.is_finite()));
    }
    match &filled[0] {
        LayerState::Attention(a) => assert_eq!((a.kept, a.pos), (n + 3, n + 3)),
        _ => unreachable!(),
    }
}
