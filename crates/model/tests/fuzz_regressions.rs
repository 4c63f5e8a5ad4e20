//! Inputs that crashed, hung or exhausted memory in the readers (found by the fuzz targets of
//! fuzz/, or while writing them): each must now give an error naming the problem. The files
//! under fixtures/fuzz-regressions/<target>/ are fuzzer inputs kept as they were found.
mod common;
#[path = "common/gguf_writer.rs"]
mod gguf_writer;

use gguf_writer::GgufWriter;
use model::bundle::model_from_bytes;
use model::gguf::Gguf;
use model::{ChatTemplate, Llama, Message, Tokenizer};
use serde_json::json;
use std::path::PathBuf;
use tensor::quant::GgmlType;

/// A kept fuzzer input of `target` by file name.
fn regression_input(target: &str, name: &str) -> Vec<u8> {
    regression_inputs(target)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no input {target}/{name}"))
        .1
}

fn regression_inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz-regressions")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

fn assert_err<T>(r: anyhow::Result<T>, want: &str) {
    match r {
        Ok(_) => panic!("expected an error containing '{want}'"),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(e.contains(want), "expected '{want}' in: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizers

/// Every kept tokenizer input (`J` + tokenizer.json) is refused at load.
#[test]
fn kept_tokenizer_inputs_are_errors() {
    for (name, input) in regression_inputs("tokenizer_load") {
        let r = Tokenizer::from_json_bytes(&input[1..], Some(1), Some(2), false);
        assert!(r.is_err(), "{name}");
    }
}

/// tokenizers 0.22 `expect`s its decoder's JSON to parse: a tokenizer.json with a syntax
/// error inside "decoder" (here an invalid UTF-8 byte in a key) panicked while loading.
#[test]
fn tokenizer_json_with_a_syntax_error_in_the_decoder_is_an_error() {
    let input = regression_input("tokenizer_load", "decoder-syntax-error");
    assert_err(
        Tokenizer::from_json_bytes(&input[1..], None, None, false),
        "not valid JSON",
    );
    let cut = br#"{"version":"1.0","model":{"type":"WordLevel","vocab":{},"unk_token":"x"},"decoder":{"type":"Fuse""#;
    assert_err(
        Tokenizer::from_json_bytes(cut, None, None, false),
        "not valid JSON",
    );
}

/// tokenizers 0.22's Strip decoder with `stop: 1` indexed before the start of a token it
/// had stripped to nothing: decoding panicked.
#[test]
fn tokenizer_json_with_a_strip_decoder_from_the_end_is_an_error() {
    let input = regression_input("tokenizer_load", "strip-decoder-stop");
    assert_err(
        Tokenizer::from_json_bytes(&input[1..], None, None, false),
        "Strip decoder",
    );
}

/// A SentencePiece vocabulary whose unknown-token id is past its end indexed out of bounds.
#[test]
fn gguf_unknown_token_id_outside_the_vocabulary_is_an_error() {
    let mut w = GgufWriter::default();
    let tokens: Vec<String> = ["<unk>", "a", "b", "ab"].map(String::from).to_vec();
    w.str("tokenizer.ggml.model", "llama")
        .strs("tokenizer.ggml.tokens", &tokens)
        .f32s("tokenizer.ggml.scores", &[0.0, -1.0, -1.0, -0.5])
        .u32("tokenizer.ggml.unknown_token_id", 1000);
    let g = Gguf::from_bytes(w.finish()).unwrap();
    assert_err(Tokenizer::from_gguf(&g), "outside the vocabulary");
}

// ---------------------------------------------------------------------------------------------
// GGUF models

/// A one-layer Llama GGUF of width `d` with `key_length` and `block_count` as given.
fn tiny_llama(d: usize, key_length: u32, block_count: u64) -> Vec<u8> {
    let (heads, ffn, vocab) = (2u32, 4usize, 8usize);
    let hd = key_length as usize;
    let mut w = GgufWriter::default();
    w.str("general.architecture", "llama")
        .u32("llama.embedding_length", d as u32)
        .u32("llama.attention.head_count", heads)
        .u32("llama.attention.key_length", key_length)
        .u32("llama.rope.dimension_count", 0)
        .u64("llama.block_count", block_count)
        .u32("llama.feed_forward_length", ffn as u32);
    let q = heads as usize * hd;
    for (name, dims) in [
        ("token_embd.weight", vec![d, vocab]),
        ("output_norm.weight", vec![d]),
        ("blk.0.attn_norm.weight", vec![d]),
        ("blk.0.attn_q.weight", vec![d, q]),
        ("blk.0.attn_k.weight", vec![d, q]),
        ("blk.0.attn_v.weight", vec![d, q]),
        ("blk.0.attn_output.weight", vec![q, d]),
        ("blk.0.ffn_norm.weight", vec![d]),
        ("blk.0.ffn_gate.weight", vec![d, ffn]),
        ("blk.0.ffn_up.weight", vec![d, ffn]),
        ("blk.0.ffn_down.weight", vec![ffn, d]),
    ] {
        w.tensor(name, &dims, GgmlType::F32, 0);
    }
    w.finish()
}

#[test]
fn tiny_llama_gguf_loads() {
    let g = Gguf::from_bytes(tiny_llama(4, 2, 1)).unwrap();
    Llama::from_gguf(&g).unwrap();
}

/// Q/K rows are un-permuted in pairs: a head of width 1 divided by zero.
#[test]
fn gguf_llama_head_dim_of_one_is_an_error() {
    let g = Gguf::from_bytes(tiny_llama(4, 1, 1)).unwrap();
    assert_err(Llama::from_gguf(&g), "head dim 1");
}

/// A model of width 0 whose heads are still 2 wide (`key_length`): un-permuting Q/K rows of
/// no columns split them into chunks of zero.
#[test]
fn gguf_llama_of_width_zero_is_an_error() {
    let g = Gguf::from_bytes(tiny_llama(0, 2, 1)).unwrap();
    assert_err(Llama::from_gguf(&g), "inconsistent head counts");
}

/// The block count is metadata: it reserved memory for that many layers before any was read.
#[test]
fn gguf_llama_block_count_beyond_the_tensors_is_an_error() {
    let g = Gguf::from_bytes(tiny_llama(4, 2, 1 << 60)).unwrap();
    assert_err(Llama::from_gguf(&g), "blk.1.attn_norm.weight");
}

/// A file that ends before its tensor data's alignment padding, with an empty tensor: the
/// data section started past the end, and reading the tensor sliced out of range.
#[test]
fn gguf_whose_data_starts_past_the_end_is_an_error() {
    let input = regression_input("gguf_reader", "data-start-past-the-end");
    assert_err(Gguf::from_bytes(input), "tensor data starts at offset");
}

/// An array's claimed length is checked against its element type's size: a length that the
/// bytes left hold as 1-byte items but not as 8-byte ones is refused before allocating.
#[test]
fn gguf_array_longer_than_the_file_is_an_error() {
    let mut w = GgufWriter::default();
    w.u32("x", 1);
    let mut bytes = w.finish();
    // Replace the u32 value by an array of u64 (type 10) claiming 64 items; 0 bytes follow.
    let n = bytes.len();
    bytes.truncate(n - 8); // value type (4) and value (4)
    bytes.extend(9u32.to_le_bytes());
    bytes.extend(10u32.to_le_bytes());
    bytes.extend(64u64.to_le_bytes());
    bytes.extend([0u8; 100]);
    assert_err(Gguf::from_bytes(bytes), "cannot fit");
}

// ---------------------------------------------------------------------------------------------
// Checkpoints (config.json + safetensors)

fn empty_safetensors() -> Vec<u8> {
    safetensors::serialize(
        Vec::<(String, safetensors::tensor::TensorView)>::new(),
        None,
    )
    .unwrap()
}

/// A hybrid config.json of one attention layer with `vocab` tokens.
fn hybrid_config(vocab: usize) -> String {
    let c = model::hybrid::HybridConfig {
        vocab_size: vocab,
        ..model::hybrid::HybridConfig::small("fa", 8).unwrap()
    };
    serde_json::to_string(&c).unwrap()
}

/// The model was initialised (allocated) from config.json before the tensors were compared:
/// a config claiming a 4-trillion-value embedding ran out of memory.
#[test]
fn config_claiming_more_than_its_checkpoint_is_an_error() {
    assert_err(
        model_from_bytes(&hybrid_config(1 << 37), &empty_safetensors()),
        "but the checkpoint holds 0",
    );
}

/// A rotated share above 1 gave RoPE more dimensions than the head has: an assertion
/// failed while the model was built.
#[test]
fn config_partial_rotary_factor_above_one_is_an_error() {
    let input = regression_input("safetensors_config", "partial-rotary-factor-above-one");
    let nul = input.iter().position(|&b| b == 0).unwrap();
    let config = std::str::from_utf8(&input[..nul]).unwrap();
    assert_err(
        model_from_bytes(config, &input[nul + 1..]),
        "partial_rotary_factor 2 is not between 0 and 1",
    );
}

/// An MLA head is nope + rope wide: the sum of two config numbers overflowed while the
/// layers were read.
#[test]
fn config_mla_head_that_overflows_is_an_error() {
    let mut c: serde_json::Value = serde_json::from_str(&hybrid_config(8)).unwrap();
    c["mla"] = json!({"kv_lora_rank": 2, "qk_nope_head_dim": usize::MAX,
        "qk_rope_head_dim": 2, "v_head_dim": 2});
    assert_err(
        model_from_bytes(&c.to_string(), &empty_safetensors()),
        "overflows",
    );
}

/// Sizes whose products overflow panicked (debug) or wrapped (release) in the init.
#[test]
fn config_sizes_that_overflow_are_an_error() {
    assert_err(
        model_from_bytes(&hybrid_config(usize::MAX / 4), &empty_safetensors()),
        "overflow",
    );
}

fn hf(model_type: &str, extra: serde_json::Value) -> String {
    let mut v = json!({
        "model_type": model_type, "vocab_size": 8, "hidden_size": 4, "intermediate_size": 4,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 16,
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

/// The per-layer lists are built from num_hidden_layers before any tensor is read: a
/// trillion layers ran out of memory.
#[test]
fn hf_config_with_too_many_layers_is_an_error() {
    let st = empty_safetensors();
    assert_err(
        model_from_bytes(&hf("llama", json!({"num_hidden_layers": 1u64 << 40})), &st),
        "num_hidden_layers",
    );
    let next = json!({"num_hidden_layers": 1u64 << 40, "linear_num_key_heads": 1,
        "linear_num_value_heads": 1, "linear_key_head_dim": 2, "linear_value_head_dim": 2});
    assert_err(
        model_from_bytes(&hf("qwen3_next", next), &st),
        "num_hidden_layers",
    );
}

fn qwen3_next(extra: serde_json::Value) -> String {
    let mut v = json!({"layer_types": ["linear_attention"], "linear_num_key_heads": 1,
        "linear_num_value_heads": 1, "linear_key_head_dim": 2, "linear_value_head_dim": 2});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    hf("qwen3_next", v)
}

/// Zero head sizes make the packed projections empty for any head count, and the split
/// looped over a head count only config.json bounded.
#[test]
fn qwen3_next_zero_head_sizes_are_an_error() {
    let c = qwen3_next(
        json!({"linear_key_head_dim": 0, "linear_num_key_heads": 1u64 << 50,
        "linear_num_value_heads": 1u64 << 50}),
    );
    assert_err(
        model_from_bytes(&c, &empty_safetensors()),
        "'linear_key_head_dim' must be at least 1",
    );
}

/// The packed projections' sizes are products of config.json's numbers.
#[test]
fn qwen3_next_sizes_that_overflow_are_an_error() {
    let c = qwen3_next(json!({"linear_key_head_dim": 1u64 << 63}));
    let norms = [
        "model.norm.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
    ];
    let data = [0u8; 16];
    let views: Vec<(String, safetensors::tensor::TensorView)> = norms
        .iter()
        .map(|n| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data);
            (n.to_string(), v.unwrap())
        })
        .collect();
    let st = safetensors::serialize(views, None).unwrap();
    assert_err(model_from_bytes(&c, &st), "overflow");
}

/// Kimi's zero gate bias was as wide as config.json said (heads × head size), allocated
/// before any tensor was compared.
#[test]
fn kimi_gate_bias_wider_than_its_weight_is_an_error() {
    let c = hf(
        "kimi_linear",
        json!({"layer_types": ["linear_attention"], "kv_lora_rank": 2, "qk_nope_head_dim": 2,
            "qk_rope_head_dim": 2, "v_head_dim": 2,
            "linear_attn_config": {"num_heads": 1u64 << 20, "head_dim": 1u64 << 20}}),
    );
    assert_err(
        model_from_bytes(&c, &empty_safetensors()),
        "g_b_proj.weight' is missing",
    );
}

// ---------------------------------------------------------------------------------------------
// Chat templates

/// minijinja 2.24 divides by the argument count of `loop.cycle()`: called without arguments
/// it panicked inside the render.
#[test]
fn chat_template_whose_renderer_panics_is_an_error() {
    let input = regression_input("chat_template", "loop-cycle-without-arguments");
    let nul = input.iter().position(|&b| b == 0).unwrap();
    let t = ChatTemplate::new(std::str::from_utf8(&input[..nul]).unwrap(), "<s>", "</s>").unwrap();
    let msgs = [Message::new("user", "hi"), Message::new("assistant", "yes")];
    assert_err(t.render(&msgs, true), "the renderer panicked");
}

/// Two nested 100 000-item loops ran for hours; the render's fuel ends them.
#[test]
fn chat_template_that_runs_too_long_is_an_error() {
    let src = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    assert_err(t.render(&[Message::new("user", "hi")], true), "fuel");
}
