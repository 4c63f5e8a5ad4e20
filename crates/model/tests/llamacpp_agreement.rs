//! Agreement with llama.cpp on the same GGUF (SmolLM2-135M-Instruct Q4_1), against fixtures
//! written by scripts/make-llamacpp-fixtures.py with llama-cpp-python 0.3.36.
mod common;

use safetensors::SafeTensors;
use serde_json::Value;

fn read_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(common::fixture(name)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn tokenizer_matches_llamacpp_ids_exactly() {
    let m = common::smollm2();
    let cases = read_json("llamacpp_tokens.json");
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 20);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["ids"]);
        let got = m.tokenizer.encode(text, true).unwrap();
        assert_eq!(got, want, "token ids differ for {text:?}");
        assert_eq!(
            m.tokenizer.decode_with_special(&got).unwrap(),
            text,
            "decode does not round-trip"
        );
    }
}

fn tensor_i32(st: &SafeTensors, name: &str) -> (Vec<i32>, Vec<usize>) {
    let t = st.tensor(name).unwrap();
    (
        t.data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        t.shape().to_vec(),
    )
}

fn tensor_f32(st: &SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// llama.cpp's top-256 log-probs per position, from one of the two fixture files.
struct RefLogits {
    ids: Vec<i32>,
    logprobs: Vec<f32>,
    text_index: Vec<i32>,
    n: usize,
    k: usize,
}

fn ref_logits(name: &str) -> RefLogits {
    let bytes = std::fs::read(common::fixture(name)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (ids, shape) = tensor_i32(&st, "top_ids");
    let (text_index, _) = tensor_i32(&st, "text_index");
    RefLogits {
        ids,
        logprobs: tensor_f32(&st, "top_logprobs"),
        text_index,
        n: shape[0],
        k: shape[1],
    }
}

/// Teacher forcing over every fixture text (589 positions), against llama.cpp's batch path.
///
/// KL(llama.cpp || ours) is computed over llama.cpp's top-256 tokens plus one bucket for the
/// rest of the vocabulary (a coarsening: it can only under-state the KL, by at most the
/// divergence inside the remainder, whose mass is printed).
///
/// Argmax agreement is compared with llama.cpp's agreement with itself: its one-token
/// decode path and its batch path differ in summation order, and on this 4-bit model such
/// ulp-level differences flip near-tied argmaxes (measured: ~97% self-agreement). We require
/// agreement no worse than llama.cpp's own minus one point, and report the absolute figure.
#[test]
fn teacher_forcing_agrees_with_llamacpp() {
    let m = common::smollm2();
    let batch = ref_logits("llamacpp_logits.safetensors");
    let decode = ref_logits("llamacpp_logits_decode.safetensors");
    let (n, k) = (batch.n, batch.k);
    assert!(n >= 500, "the fixture must cover at least 500 positions");
    assert_eq!(decode.n, n);
    let self_agree = (0..n)
        .filter(|&p| batch.ids[p * k] == decode.ids[p * k])
        .count() as f64
        / n as f64;
    let texts = read_json("llamacpp_tokens.json");
    let (mut agree, mut kl_sum, mut rest_mass) = (0usize, 0f64, 0f64);
    let mut pos = 0;
    let n_texts = *batch.text_index.iter().max().unwrap() as usize + 1;
    for ti in 0..n_texts {
        let tokens = ids(&texts[ti]["ids"]);
        let mut cache = m.model.new_cache();
        let logits = m.model.forward(&tokens, &mut cache, true).unwrap();
        let v = m.model.config.vocab_size;
        for row in logits.chunks_exact(v) {
            assert_eq!(batch.text_index[pos] as usize, ti);
            let ours = tensor::cpu::log_softmax(row);
            let ref_ids = &batch.ids[pos * k..(pos + 1) * k];
            let ref_lp = &batch.logprobs[pos * k..(pos + 1) * k];
            if model::sampling::argmax(row) == ref_ids[0] as u32 {
                agree += 1;
            }
            let (mut kl, mut p_top, mut q_top) = (0f64, 0f64, 0f64);
            for (&id, &lp) in ref_ids.iter().zip(ref_lp) {
                let (lp, lq) = (lp as f64, ours[id as usize] as f64);
                kl += lp.exp() * (lp - lq);
                p_top += lp.exp();
                q_top += lq.exp();
            }
            let (pr, qr) = ((1.0 - p_top).max(1e-12), (1.0 - q_top).max(1e-12));
            kl += pr * (pr / qr).ln();
            kl_sum += kl;
            rest_mass += pr;
            pos += 1;
        }
    }
    assert_eq!(pos, n);
    let agreement = agree as f64 / n as f64;
    let mean_kl = kl_sum / n as f64;
    println!(
        "positions {n}: argmax agreement {agreement:.4} (llama.cpp decode vs batch: {self_agree:.4}), mean KL {mean_kl:.5} nats, mean remainder mass {:.4}",
        rest_mass / n as f64
    );
    assert!(mean_kl < 0.02, "mean KL {mean_kl:.5} >= 0.02");
    // The bar. Ours reproduces llama.cpp's batch path bit for bit (100% measured), more
    // than llama.cpp's own decode path agrees with it.
    assert!(
        agreement >= 0.98,
        "argmax agreement {agreement:.4} < 0.98 (llama.cpp decode vs batch: {self_agree:.4})"
    );
}

/// Greedy 32-token continuations of 5 chat prompts, through the chat template, against
/// llama.cpp's decode path (batch prefill, then one token at a time, as ours generates): at
/// least 4 of 5 identical, and each at least as long as llama.cpp's own batch path agrees
/// with its decode path (the fixture records both of llama.cpp's runs).
#[test]
fn greedy_chat_continuations_match_llamacpp() {
    let m = common::smollm2();
    let cases = read_json("llamacpp_greedy.json");
    let opts = model::GenerateOptions {
        max_tokens: 32,
        sampling: Default::default(),
        stop: vec![],
    };
    let prefix = |a: &[u32], b: &[u32]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (mut same, mut self_same) = (0, 0);
    for c in cases.as_array().unwrap() {
        let prompt = m
            .prompt_tokens(c["prompt"].as_str().unwrap(), true)
            .unwrap();
        assert_eq!(
            prompt,
            ids(&c["prompt_tokens"]),
            "chat template + tokenizer differ from llama.cpp's prompt"
        );
        let g = model::generate(&m, &prompt, &opts, |_| {}).unwrap();
        let want = ids(&c["tokens"]);
        let other = ids(&c["tokens_batch_path"]);
        let (ours, theirs) = (prefix(&g.tokens, &want), prefix(&other, &want));
        println!("{:?}: ours identical for {ours} of {} tokens, llama.cpp's batch path for {theirs}\n  ours:      {:?}\n  llama.cpp: {:?}", c["prompt"], want.len(), g.text, c["text"]);
        same += usize::from(g.tokens == want);
        self_same += usize::from(other == want);
        assert!(
            ours >= theirs.min(want.len()),
            "diverged from llama.cpp after {ours} tokens"
        );
    }
    println!("identical continuations: ours {same} of 5, llama.cpp batch path vs decode path {self_same} of 5");
    assert!(
        same >= self_same.max(4),
        "only {same} of 5 greedy continuations are identical to llama.cpp's"
    );
}
