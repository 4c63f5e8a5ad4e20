//! The hybrid model on the GPU (model::hybrid::gpu) against the CPU model, which is its
//! specification: prefill logits of every position, then decode steps, for all five layer
//! types, batched, with and without attention's output gate. `#[ignore]`d: CI has no GPU.
mod common;
use common::rel_err;
use model::hybrid::config::LinearAttnType;
use model::hybrid::gpu::GpuHybrid;
use model::hybrid::{parse_layout, HybridConfig, HybridModel};

/// bf16 activations through six layers: max |Δlogit| / max |logit|.
const TOL: f32 = 5e-2;

fn config(layout: &str, gate: bool, (lh, lhv): (usize, usize)) -> HybridConfig {
    let (layer_types, lin) = parse_layout(layout).unwrap();
    HybridConfig {
        model_type: "hybrid".into(),
        vocab_size: 97,
        hidden_size: 128,
        intermediate_size: 96,
        num_hidden_layers: layer_types.len(),
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        partial_rotary_factor: 0.5,
        sliding_window: Some(9),
        attn_output_gate: gate,
        attention_bias: false,
        qk_norm: false,
        moe: None,
        mla: None,
        max_position_embeddings: 256,
        tie_word_embeddings: !gate,
        layer_types,
        linear_attn_type: Some(LinearAttnType::PerLayer(lin)),
        linear_num_key_heads: Some(lh),
        linear_num_value_heads: Some(lhv),
        linear_key_head_dim: Some(64),
        linear_value_head_dim: Some(64),
        linear_conv_kernel_dim: 4,
        linear_gate_rank: 16,
        linear_chunk_size: 64,
        bos_token_id: None,
        eos_token_id: None,
    }
}

/// Larger random weights than the init so that every path carries signal.
/// `heads`: linear key and value heads (GVA when they differ; GLA needs them equal).
fn model(layout: &str, gate: bool, heads: (usize, usize)) -> HybridModel {
    let mut m = HybridModel::init(config(layout, gate, heads), 5).unwrap();
    common::perturb(&mut m, 17);
    m
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut r = tensor::rng::SplitMix64::new(seed);
    (0..n).map(|_| r.below(97) as u32).collect()
}

fn check(layout: &str, gate: bool, heads: (usize, usize), b: usize, t: usize, steps: usize) {
    let cpu = model(layout, gate, heads);
    let gpu = GpuHybrid::new(&cpu, 0).unwrap();
    let prompt: Vec<u32> = (0..b).flat_map(|i| tokens(t, 3 + i as u64)).collect();
    let mut cs = cpu.new_state(b);
    let want = cpu.forward(&prompt, b, &mut cs, true).unwrap();
    let mut gs = gpu.new_state(b, t + steps).unwrap();
    let got = gpu
        .gpu
        .download(&gpu.forward(&prompt, &mut gs).unwrap())
        .unwrap();
    let e = rel_err(&want, &got);
    eprintln!("{layout} gate={gate} B={b}: prefill of {t}: rel err {e:.2e}");
    assert!(e < TOL, "prefill: {e}");
    for s in 0..steps {
        let next = tokens(b, 100 + s as u64);
        let want = cpu.forward(&next, b, &mut cs, true).unwrap();
        let got = gpu
            .gpu
            .download(&gpu.forward(&next, &mut gs).unwrap())
            .unwrap();
        let e = rel_err(&want, &got);
        eprintln!("  decode step {s}: rel err {e:.2e}");
        assert!(e < TOL, "decode step {s}: {e}");
    }
}

#[test]
#[ignore]
fn all_layer_types_prefill_and_decode_match_the_cpu() {
    check("fa,swa,gdn,kda,gla,fa", false, (2, 2), 1, 70, 4);
}

#[test]
#[ignore]
fn batched_sequences_and_the_output_gate_match_the_cpu() {
    check("gdn,fa,kda,swa", true, (1, 2), 2, 37, 3);
}

/// A state copied to another capacity (a prefix-cache checkpoint trimmed to its tokens, then
/// grown when a sequence resumes from it) continues exactly like the original: the same bits
/// for a prefill chunk and for decode steps, batched.
#[test]
#[ignore]
fn a_resized_state_continues_exactly() {
    let cpu = model("fa,swa,gdn,kda,gla", false, (2, 2));
    let gpu = GpuHybrid::new(&cpu, 0).unwrap();
    let b = 2;
    let prompt: Vec<u32> = (0..b).flat_map(|i| tokens(40, 7 + i as u64)).collect();
    let mut orig = gpu.new_state(b, 80).unwrap();
    gpu.forward(&prompt, &mut orig).unwrap();
    let trimmed = orig.resized(orig.len).unwrap();
    assert_eq!((trimmed.len, trimmed.capacity), (40, 40));
    let mut grown = trimmed.resized(64).unwrap();
    assert!(orig.resized(39).is_err(), "a copy cannot drop tokens");
    let chunk: Vec<u32> = (0..b).flat_map(|i| tokens(9, 50 + i as u64)).collect();
    for toks in [chunk, tokens(b, 60), tokens(b, 61)] {
        let want = gpu
            .gpu
            .download(&gpu.forward(&toks, &mut orig).unwrap())
            .unwrap();
        let got = gpu
            .gpu
            .download(&gpu.forward(&toks, &mut grown).unwrap())
            .unwrap();
        assert!(
            want.iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "the resized state's logits differ (max |Δ| {})",
            rel_err(&want, &got)
        );
    }
}

/// Prefill in chunks after earlier tokens (the engine's chunked prefill: flash attention over
/// cached keys at B = 1, with head dims 64 and 128), then a step, against the CPU.
#[test]
#[ignore]
fn chunked_prefill_over_cached_keys_matches_the_cpu() {
    for dh in [64, 128] {
        let mut cfg = config("fa,swa,gdn,fa", false, (2, 2));
        cfg.head_dim = dh;
        let mut cpu = HybridModel::init(cfg, 5).unwrap();
        let gr = cpu.zero_grads();
        let mut r = tensor::rng::SplitMix64::new(17);
        cpu.visit_params(&gr, |_, p, _| {
            p.iter_mut()
                .for_each(|x| *x += (r.uniform() as f32 - 0.5) * 0.06)
        });
        let gpu = GpuHybrid::new(&cpu, 0).unwrap();
        let mut cs = cpu.new_state(1);
        let mut gs = gpu.new_state(1, 256).unwrap();
        for (i, n) in [50usize, 37, 130, 1].into_iter().enumerate() {
            let toks = tokens(n, 40 + i as u64);
            let want = cpu.forward(&toks, 1, &mut cs, true).unwrap();
            let got = gpu
                .gpu
                .download(&gpu.forward(&toks, &mut gs).unwrap())
                .unwrap();
            let e = rel_err(&want, &got);
            eprintln!("head dim {dh}, chunk {i} of {n} tokens: rel err {e:.2e}");
            assert!(e < TOL, "head dim {dh}, chunk {i}: {e}");
        }
    }
}

/// Speculative verification on the GPU (batch 1): the logits of T verified tokens match T
/// decode steps, and committing any prefix leaves a state whose next steps match a state
/// that decoded only that prefix (attention cut back, recurrent lanes, conv histories).
#[test]
#[ignore]
fn verification_lanes_commit_any_prefix() {
    let cpu = model("fa,swa,gdn,kda", false, (2, 4));
    let gpu = GpuHybrid::new(&cpu, 0).unwrap();
    let v = 97;
    let mut base = gpu.new_state(1, 128).unwrap();
    gpu.forward(&tokens(37, 3), &mut base).unwrap();
    let (drafts, after) = (tokens(5, 4), tokens(3, 5));
    let steps = |st: &mut model::hybrid::gpu::GpuHybridState, toks: &[u32]| -> Vec<Vec<f32>> {
        toks.iter()
            .map(|&t| gpu.gpu.download(&gpu.forward(&[t], st).unwrap()).unwrap())
            .collect()
    };
    let stepped = steps(&mut base.resized(128).unwrap(), &drafts);
    // The rounding-only difference between T one-row steps and one T-row forward (bf16 GEMMs
    // of different shapes, flash attention against the decode kernel): the scale that the
    // verification's and the commit's errors are held to.
    let chunk = gpu
        .gpu
        .download(
            &gpu.forward(&drafts, &mut base.resized(128).unwrap())
                .unwrap(),
        )
        .unwrap();
    let rounding = stepped
        .iter()
        .enumerate()
        .map(|(j, w)| rel_err(w, &chunk[j * v..(j + 1) * v]))
        .fold(0f32, f32::max);
    let bound = (4.0 * rounding).max(1e-3);
    let mut worst = (0f32, 0f32);
    for keep in 0..=drafts.len() {
        let mut st = base.resized(128).unwrap();
        let (logits, lanes) = gpu.forward_lanes(&drafts, &mut st).unwrap();
        let logits = gpu.gpu.download(&logits).unwrap();
        for (j, want) in stepped.iter().enumerate() {
            let e = rel_err(want, &logits[j * v..(j + 1) * v]);
            assert!(
                e < bound,
                "verified token {j}: rel err {e} (rounding {rounding})"
            );
            worst.0 = worst.0.max(e);
        }
        gpu.commit(&mut st, lanes, keep).unwrap();
        assert_eq!(st.len, 37 + keep);
        let mut reference = base.resized(128).unwrap();
        steps(&mut reference, &drafts[..keep]);
        for (j, (a, b)) in steps(&mut st, &after)
            .iter()
            .zip(steps(&mut reference, &after))
            .enumerate()
        {
            let e = rel_err(&b, a);
            assert!(
                e < bound,
                "keep {keep}, step {j} after the commit: rel err {e} (rounding {rounding})"
            );
            worst.1 = worst.1.max(e);
        }
    }
    println!(
        "lanes: verified logits within {:.2e}, steps after a commit within {:.2e}; one T-row forward against T steps: {rounding:.2e}",
        worst.0, worst.1
    );
    let gla = GpuHybrid::new(&model("fa,gla", false, (2, 2)), 0).unwrap();
    let mut st = gla.new_state(1, 16).unwrap();
    let e = gla.forward_lanes(&[1, 2], &mut st).err().unwrap();
    assert!(e.to_string().contains("delta-rule"), "{e}");
}
