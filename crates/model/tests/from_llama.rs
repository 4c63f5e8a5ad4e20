//! The conversion teacher: a Llama GGUF model as an all-full-attention hybrid model (f32
//! weights) computes what the Llama model computes. The Llama CPU path rounds like llama.cpp
//! (8-bit activations into quantized dot products, f16 KV), the hybrid path is plain f32, so
//! they agree to quantization noise, not bit for bit.
mod common;

use model::gguf::Gguf;
use model::hybrid::HybridModel;
use model::llama::Llama;

fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

/// Mean KL(p ‖ q) over rows of logits, and the share of rows whose argmax agrees.
fn compare(p: &[f32], q: &[f32], v: usize) -> (f64, f64) {
    let (mut kl, mut agree) = (0.0, 0usize);
    let rows = p.len() / v;
    for (a, b) in p.chunks_exact(v).zip(q.chunks_exact(v)) {
        let lse = |x: &[f32]| {
            let m = x.iter().fold(f32::NEG_INFINITY, |s, &y| s.max(y)) as f64;
            m + x.iter().map(|&y| (y as f64 - m).exp()).sum::<f64>().ln()
        };
        let (la, lb) = (lse(a), lse(b));
        kl += a
            .iter()
            .zip(b)
            .map(|(&x, &y)| {
                let lx = x as f64 - la;
                lx.exp() * (lx - (y as f64 - lb))
            })
            .sum::<f64>();
        agree += (argmax(a) == argmax(b)) as usize;
    }
    (kl / rows as f64, agree as f64 / rows as f64)
}

#[test]
fn tiny_llama_as_a_hybrid_teacher_computes_the_same_logits() {
    let g = Gguf::open(&common::fixture("tiny-llama.gguf")).unwrap();
    let l = Llama::from_gguf(&g).unwrap();
    let h = HybridModel::from_llama(&l).unwrap();
    assert_eq!(h.config.layer_names().unwrap().len(), l.config.n_layers);
    let v = l.config.vocab_size;
    let toks: Vec<u32> = (0..40).map(|i| ((i * 37 + i * i) % v) as u32).collect();
    let want = l.forward(&toks, &mut l.new_cache(), true).unwrap();
    let got = h.forward(&toks, 1, &mut h.new_state(1), true).unwrap();
    let (kl, agree) = compare(&want, &got, v);
    assert!(
        kl < 1e-3 && agree >= 0.95,
        "KL {kl}, argmax agreement {agree}"
    );
}

#[test]
fn smollm2_as_a_hybrid_teacher_computes_the_same_logits() {
    let m = common::smollm2();
    let h = HybridModel::from_llama(&m.model).unwrap();
    let toks = m
        .tokenizer
        .encode(
            "The quick brown fox jumps over the lazy dog. Then it ran into the forest, where",
            true,
        )
        .unwrap();
    let v = m.model.config.vocab_size;
    let want = m
        .model
        .forward(&toks, &mut m.model.new_cache(), true)
        .unwrap();
    let got = h.forward(&toks, 1, &mut h.new_state(1), true).unwrap();
    let (kl, agree) = compare(&want, &got, v);
    // 4-bit weights with 8-bit activations against f32 activations (see the llama.cpp agreement).
    assert!(
        kl < 0.02 && agree >= 0.9,
        "KL {kl}, argmax agreement {agree}"
    );
}
