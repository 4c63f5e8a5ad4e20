//! Tensor-parallel slicing on the CPU: the shards of a model, run as ranks whose all-reduce is
//! a plain sum, give the unsplit model's logits (prefill and decode steps), for every layer
//! kind, grouped heads (GQA, GVA), gated attention, q/k/v biases and q/k norms, and head
//! counts that do not divide evenly. The GPU ranks (NCCL) are checked against the same
//! simulation in tests/hybrid_gpu_tp.rs.
use model::hybrid::tensor_parallel::{
    check, forward_simulated, mlp_split, mlp_unit_starts, shards, split,
};
use model::hybrid::{HybridConfig, HybridModel};

/// 6 query heads over 3 key/value heads, linear layers of 3 q/k heads over `v_heads` value
/// heads (GLA needs them equal); weights perturbed beyond the init (biases are zero at init).
fn model(layout: &str, v_heads: usize) -> HybridModel {
    let config = HybridConfig {
        num_attention_heads: 6,
        num_key_value_heads: 3,
        attn_output_gate: true,
        attention_bias: true,
        qk_norm: true,
        intermediate_size: 45,
        linear_num_key_heads: Some(3),
        linear_num_value_heads: Some(v_heads),
        ..HybridConfig::small(layout, 41).unwrap()
    };
    let mut m = HybridModel::init(config, 7).unwrap();
    let g = m.zero_grads();
    let mut r = tensor::rng::SplitMix64::new(9);
    m.visit_params(&g, |_, p, _| {
        p.iter_mut()
            .for_each(|x| *x += (r.uniform() as f32 - 0.5) * 0.3)
    });
    m
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn shards_summed_equal_the_whole_model() {
    // Every layer kind: GVA for the delta rules, equal heads for GLA.
    for (layout, v_heads) in [("fa,swa,gdn,kda", 6), ("gla,fa,gla", 3)] {
        eprintln!("{layout}");
        shards_match(&model(layout, v_heads));
    }
}

fn shards_match(m: &HybridModel) {
    let prompt: Vec<u32> = (0..2 * 23).map(|i| (i * 7 + i * i) % 41).collect();
    let mut whole = m.new_state(2);
    let want = m.forward(&prompt, 2, &mut whole, true).unwrap();
    for world in [1, 2, 3] {
        let parts = shards(m, world).unwrap();
        if world > 1 {
            // The slices really are slices: rank 0 holds fewer heads than the model.
            let a = &parts[0].blocks[0].mixer.params().map["q_proj.weight"];
            assert!(a.shape[0] < m.blocks[0].mixer.params().map["q_proj.weight"].shape[0]);
        }
        let mut states: Vec<_> = parts.iter().map(|s| s.new_state(2)).collect();
        let got = forward_simulated(&parts, &prompt, 2, &mut states).unwrap();
        let e = rel_err(&got, &want);
        assert!(e < 1e-5, "world {world}: prefill rel err {e}");
        // Decode steps continue from each rank's own caches.
        let mut whole_step = whole.clone();
        for step in 0..3u32 {
            let toks = [step * 5 % 41, step * 3 % 41];
            let want = m.forward(&toks, 2, &mut whole_step, true).unwrap();
            let got = forward_simulated(&parts, &toks, 2, &mut states).unwrap();
            let e = rel_err(&got, &want);
            assert!(e < 1e-5, "world {world}, step {step}: rel err {e}");
        }
    }
}

#[test]
fn uneven_splits_cover_every_unit_once() {
    for (n, world) in [(3, 2), (9, 2), (1536, 2), (7, 3), (8, 8)] {
        let mut next = 0;
        for r in 0..world {
            let s = split(n, r, world);
            assert_eq!(s.start, next, "{n} over {world}");
            assert!(!s.is_empty());
            next = s.end;
        }
        assert_eq!(next, n);
    }
}

/// The ranges of the tree that halves `a..b` (left half the floor): what split-invariant sums
/// add by.
fn tree_nodes(a: usize, b: usize, out: &mut Vec<(usize, usize)>) {
    out.push((a, b));
    if b - a > 1 {
        let mid = a + (b - a) / 2;
        tree_nodes(a, mid, out);
        tree_nodes(mid, b, out);
    }
}

#[test]
fn power_of_two_splits_are_nodes_of_the_summation_tree() {
    // A rank's units must be a whole subtree for its partial sum to be one the whole model
    // also forms; r·n/world is not for 8 ranks (11 units: rank 2 would hold 2..4, which
    // straddles the tree's 2..3 | 3..5 cut), so powers of two descend the tree instead.
    for n in 1..300 {
        let mut nodes = vec![];
        tree_nodes(0, n, &mut nodes);
        for world in [1, 2, 4, 8, 16].into_iter().filter(|&w| w <= n) {
            for r in 0..world {
                let s = split(n, r, world);
                assert!(
                    nodes.contains(&(s.start, s.end)),
                    "{n} over {world}: rank {r} holds {s:?}"
                );
                if world <= 4 {
                    // Where the two agree, the tree split is the familiar one.
                    assert_eq!(s, r * n / world..(r + 1) * n / world, "{n} over {world}");
                }
            }
        }
    }
    assert_eq!(split(11, 2, 8), 2..3);
}

#[test]
fn mlp_blocks_are_dealt_out_whole() {
    // 1536 hidden units (SmolLM2): 8 blocks of 192; two ranks hold 4 each.
    assert_eq!(mlp_split(1536, 1, 2), 768..1536);
    assert_eq!(
        mlp_unit_starts(1536, 0, 1),
        (0..=8).map(|i| i * 192).collect::<Vec<_>>()
    );
    assert_eq!(mlp_unit_starts(1536, 1, 2), vec![0, 192, 384, 576, 768]);
    // Uneven blocks (45 units: 5 or 6 each) keep their sizes in every split.
    let whole = mlp_unit_starts(45, 0, 1);
    for world in [2, 4, 8] {
        let mut next = 0;
        for r in 0..world {
            let s = mlp_split(45, r, world);
            assert_eq!(s.start, next);
            next = s.end;
            let starts = mlp_unit_starts(45, r, world);
            assert_eq!(*starts.last().unwrap(), s.len());
            // Rank r's blocks are the whole model's, shifted to its own first unit.
            for w in starts.windows(2) {
                let (a, b) = (w[0] + s.start, w[1] + s.start);
                assert!(whole.windows(2).any(|x| x == [a, b]), "{a}..{b}");
            }
        }
        assert_eq!(next, 45);
    }
    // 8 blocks: at most 8 ranks share the MLP.
    let m = model("gdn", 6);
    let e = check(&m, 16).unwrap_err().to_string();
    assert!(e.contains("blocks") || e.contains("q/k heads"), "{e}");
}

#[test]
fn too_many_ranks_are_refused_by_name() {
    let m = model("fa,gdn", 6);
    let e = check(&m, 4).unwrap_err().to_string();
    assert!(
        e.contains("layer 0 has 3") && e.contains("key/value heads"),
        "{e}"
    );
    assert!(check(&m, 0).is_err());
    assert!(check(&m, 3).is_ok());
}
