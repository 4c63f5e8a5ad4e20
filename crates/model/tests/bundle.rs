//! A hybrid folder (what `hybrid convert` writes: config.json, model.safetensors,
//! tokenizer.json, tokenizer_config.json) loads as a model the text commands can run, and
//! generates what the in-memory model generates.
mod common;

use model::bundle::TokenizerConfig;
use model::hybrid::config::LinearAttnType;
use model::hybrid::{parse_layout, HybridConfig, HybridModel};
use model::{AnyModel, GenerateOptions, LoadedModel, SamplingParams};
use std::path::PathBuf;

fn argmax(x: &[f32]) -> u32 {
    x.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0 as u32
}

/// A small random hybrid (FA, SWA, GDN, KDA layers) with SmolLM2's vocabulary, saved as a
/// folder with SmolLM2's tokenizer and chat template; returns (folder, the model, SmolLM2).
fn hybrid_folder(tag: &str) -> (PathBuf, HybridModel, LoadedModel) {
    let lm = common::smollm2();
    // Head dims the GPU kernels take (attention 64/128, chunked linear value dims of 16s).
    let (layer_types, lin) = parse_layout("fa,swa,gdn,kda").unwrap();
    let config = HybridConfig {
        model_type: "hybrid".into(),
        vocab_size: lm.model.config.vocab_size,
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: layer_types.len(),
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        partial_rotary_factor: 1.0,
        sliding_window: Some(4),
        attn_output_gate: false,
        attention_bias: false,
        qk_norm: false,
        moe: None,
        mla: None,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        layer_types,
        linear_attn_type: Some(LinearAttnType::PerLayer(lin)),
        linear_num_key_heads: Some(2),
        linear_num_value_heads: Some(2),
        linear_key_head_dim: Some(32),
        linear_value_head_dim: Some(32),
        linear_conv_kernel_dim: 4,
        linear_gate_rank: 4,
        linear_chunk_size: 4,
        bos_token_id: lm.tokenizer.bos,
        eos_token_id: lm.tokenizer.eos,
    };
    let h = HybridModel::init(config, 11).unwrap();
    let dir = std::env::temp_dir().join(format!("hybrid-bundle-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    h.save(&dir).unwrap();
    lm.tokenizer
        .inner
        .save(dir.join("tokenizer.json"), false)
        .unwrap();
    let tc = TokenizerConfig {
        chat_template: lm.template.as_ref().map(|t| t.source.clone()),
        bos_token: lm.tokenizer.bos.and_then(|i| lm.tokenizer.token_text(i)),
        eos_token: lm.tokenizer.eos.and_then(|i| lm.tokenizer.token_text(i)),
        add_bos_token: Some(lm.tokenizer.add_bos),
    };
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string(&tc).unwrap(),
    )
    .unwrap();
    (dir, h, lm)
}

#[test]
fn a_hybrid_folder_generates_what_the_model_in_memory_generates() {
    let (dir, h, lm) = hybrid_folder("gen");
    let any = AnyModel::load(&dir).unwrap();
    assert!(matches!(any, AnyModel::Hybrid(_)));
    assert_eq!(any.context_length(), 256);
    // The folder's tokenizer and chat template are the GGUF's.
    let text = "hello world, 123";
    for chat in [false, true] {
        assert_eq!(
            any.prompt_tokens(text, chat).unwrap(),
            lm.prompt_tokens(text, chat).unwrap()
        );
    }
    let prompt = any.prompt_tokens(text, false).unwrap();
    let opts = GenerateOptions {
        max_tokens: 12,
        sampling: SamplingParams::default(),
        stop: vec![],
    };
    let g = any
        .runner(tensor::Device::Cpu)
        .unwrap()
        .generate(&prompt, &opts, |_| {})
        .unwrap();
    // Greedy by hand on the in-memory model, one token at a time after the prompt.
    let mut st = h.new_state(1);
    let mut logits = h.forward(&prompt, 1, &mut st, false).unwrap();
    let mut want = vec![];
    while want.len() < opts.max_tokens {
        let next = argmax(&logits);
        if lm.tokenizer.is_stop(next) {
            break;
        }
        want.push(next);
        logits = h.forward(&[next], 1, &mut st, false).unwrap();
    }
    assert!(!want.is_empty());
    assert_eq!(g.tokens, want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_folder_missing_a_file_is_named() {
    let (dir, _, _) = hybrid_folder("missing");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let e = AnyModel::load(&dir).err().expect("must fail").to_string();
    assert!(
        e.contains("not a model folder") && e.contains("tokenizer.json"),
        "{e}"
    );
    std::fs::write(dir.join("tokenizer.json"), "{ not json").unwrap();
    let e = format!("{:#}", AnyModel::load(&dir).err().expect("must fail"));
    assert!(e.contains("tokenizer.json"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// On the GPU (`--ignored`, run by scripts/gpu-check): the same folder generates through
/// `GpuHybrid`, and its greedy tokens follow the CPU's while the CPU's top two logits are
/// apart by more than bf16 noise.
#[test]
#[ignore]
fn a_hybrid_folder_generates_on_the_gpu() {
    let (dir, h, _) = hybrid_folder("gpu");
    let any = AnyModel::load(&dir).unwrap();
    let prompt = any.prompt_tokens("The capital of France is", true).unwrap();
    let opts = GenerateOptions {
        max_tokens: 8,
        sampling: SamplingParams::default(),
        stop: vec![],
    };
    let gpu = any
        .runner(tensor::Device::Cuda(0))
        .unwrap()
        .generate(&prompt, &opts, |_| {})
        .unwrap();
    let cpu = any
        .runner(tensor::Device::Cpu)
        .unwrap()
        .generate(&prompt, &opts, |_| {})
        .unwrap();
    assert!(!gpu.tokens.is_empty());
    // Where the CPU's decision is clear (margin > 0.05 of the logit scale), the GPU agrees.
    let mut st = h.new_state(1);
    let mut logits = h.forward(&prompt, 1, &mut st, false).unwrap();
    for (i, (&c, &g)) in cpu.tokens.iter().zip(&gpu.tokens).enumerate() {
        let mut sorted = logits.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let scale = sorted[0].abs().max(1.0);
        if (sorted[0] - sorted[1]) / scale > 0.05 {
            assert_eq!(c, g, "token {i}: cpu {c}, gpu {g}");
        } else {
            break; // a near tie may go either way, and everything after it with it
        }
        logits = h.forward(&[c], 1, &mut st, false).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
