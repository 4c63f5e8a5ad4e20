//! The fuzz targets' seed corpora (fuzz/corpus/<target>/): small valid inputs of every kind
//! each target reads, built here with the project's own types so that they stay valid as the
//! formats evolve. The test checks that every seed loads; with `HYBRID_WRITE_FUZZ_SEEDS=1` it
//! also (re)writes the corpus files (`scripts/fuzz` does not need them rewritten).
mod common;
#[path = "common/gguf_writer.rs"]
mod gguf_writer;

use gguf_writer::{GgufWriter, ALIGN};
use model::bundle::model_from_bytes;
use model::gguf::Gguf;
use model::hybrid::HybridModel;
use model::{ChatTemplate, Message, Tokenizer};
use serde_json::{json, Value};
use std::path::PathBuf;
use tensor::quant::GgmlType;

/// The largest seed committed: libFuzzer's inputs stay small, and so does the repository.
const MAX_SEED_BYTES: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// GGUF

/// GPT-2's byte-to-character map (printable bytes stand for themselves, the rest are moved
/// past 255), which byte-level BPE vocabularies are written in.
fn byte_level_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

/// A byte-level BPE vocabulary (every byte, a few merges, two control tokens).
fn gpt2_tokenizer(w: &mut GgufWriter, pre: &str) {
    let mut tokens: Vec<String> = byte_level_chars().iter().map(char::to_string).collect();
    let merges = [
        "Ġ t", "h e", "Ġt he", "l l", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
    ];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    tokens.extend(["<|im_start|>".into(), "<|im_end|>".into()]);
    let mut types = vec![1; tokens.len()];
    let n = types.len();
    types[n - 2..].fill(3);
    w.str("tokenizer.ggml.model", "gpt2")
        .str("tokenizer.ggml.pre", pre)
        .strs("tokenizer.ggml.tokens", &tokens)
        .i32s("tokenizer.ggml.token_type", &types)
        .strs("tokenizer.ggml.merges", &merges.map(String::from))
        .u32("tokenizer.ggml.bos_token_id", 0)
        .u32("tokenizer.ggml.eos_token_id", n as u32 - 1)
        .bool("tokenizer.ggml.add_bos_token", false);
}

/// A SentencePiece vocabulary (unknown, BOS, EOS, byte pieces, scored pieces).
fn sentencepiece_tokenizer(w: &mut GgufWriter, add_space_prefix: bool) {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for p in [
        "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "▁he", "▁hello", "▁world",
    ] {
        tokens.push(p.into());
        types.push(1);
    }
    let scores: Vec<f32> = (0..tokens.len()).map(|i| -(i as f32) / 10.0).collect();
    w.str("tokenizer.ggml.model", "llama")
        .strs("tokenizer.ggml.tokens", &tokens)
        .f32s("tokenizer.ggml.scores", &scores)
        .i32s("tokenizer.ggml.token_type", &types)
        .u32("tokenizer.ggml.unknown_token_id", 0)
        .u32("tokenizer.ggml.bos_token_id", 1)
        .u32("tokenizer.ggml.eos_token_id", 2)
        .bool("tokenizer.ggml.add_space_prefix", add_space_prefix);
}

/// A one-layer Llama GGUF (width 32, so the quantised types' 32-value blocks fit) with a
/// tokenizer and a chat template.
fn llama_gguf() -> Vec<u8> {
    let (d, heads, kv, ffn, vocab) = (32usize, 4u32, 2u32, 32usize, 32usize);
    let hd = d / heads as usize;
    let mut w = GgufWriter::default();
    w.str("general.architecture", "llama")
        .u32("general.alignment", ALIGN as u32)
        .u32("llama.embedding_length", d as u32)
        .u32("llama.attention.head_count", heads)
        .u32("llama.attention.head_count_kv", kv)
        .u32("llama.block_count", 1)
        .u32("llama.feed_forward_length", ffn as u32)
        .u32("llama.context_length", 64)
        .u32("llama.rope.dimension_count", hd as u32)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .f32("llama.rope.freq_base", 10000.0)
        .str("tokenizer.chat_template", CHATML);
    gpt2_tokenizer(&mut w, "qwen2");
    let kvd = kv as usize * hd;
    w.tensor("token_embd.weight", &[d, vocab], GgmlType::F16, 1)
        .tensor("output_norm.weight", &[d], GgmlType::F32, 0)
        .tensor("output.weight", &[d, vocab], GgmlType::BF16, 30)
        .tensor("blk.0.attn_norm.weight", &[d], GgmlType::F32, 0)
        .tensor("blk.0.attn_q.weight", &[d, d], GgmlType::Q8_0, 8)
        .tensor("blk.0.attn_k.weight", &[d, kvd], GgmlType::Q4_0, 2)
        .tensor("blk.0.attn_v.weight", &[d, kvd], GgmlType::Q4_1, 3)
        .tensor("blk.0.attn_output.weight", &[d, d], GgmlType::F32, 0)
        .tensor("blk.0.ffn_norm.weight", &[d], GgmlType::F32, 0)
        .tensor("blk.0.ffn_gate.weight", &[d, ffn], GgmlType::Q8_0, 8)
        .tensor("blk.0.ffn_up.weight", &[d, ffn], GgmlType::F16, 1)
        .tensor("blk.0.ffn_down.weight", &[ffn, d], GgmlType::F32, 0);
    w.finish()
}

/// A GGUF holding only tokenizer metadata (what the tokenizer target reads).
fn tokenizer_gguf(f: impl FnOnce(&mut GgufWriter)) -> Vec<u8> {
    let mut w = GgufWriter::default();
    f(&mut w);
    w.finish()
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: config.json + safetensors

/// `tensors` as safetensors bytes; every value 0.01 in the dtype given.
fn safetensors_bytes(tensors: &[(String, Vec<usize>)], dtype: safetensors::Dtype) -> Vec<u8> {
    use safetensors::tensor::TensorView;
    let value: Vec<u8> = match dtype {
        safetensors::Dtype::F32 => 0.01f32.to_le_bytes().to_vec(),
        safetensors::Dtype::BF16 => half::bf16::from_f32(0.01).to_le_bytes().to_vec(),
        _ => half::f16::from_f32(0.01).to_le_bytes().to_vec(),
    };
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, s)| value.repeat(s.iter().product()))
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&data)
        .map(|((n, s), d)| (n.clone(), TensorView::new(dtype, s.clone(), d).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// One fuzz input of the checkpoint target: config.json, NUL, model.safetensors.
fn checkpoint_input(config: &str, st: &[u8]) -> Vec<u8> {
    [config.as_bytes(), &[0], st].concat()
}

/// Names and shapes of the model a config describes, as our loader names them.
fn our_tensors(config: &model::hybrid::HybridConfig) -> Vec<(String, Vec<usize>)> {
    HybridModel::init(config.clone(), 0)
        .unwrap()
        .named_params()
        .map
        .into_iter()
        .map(|(k, p)| (k, p.shape))
        .collect()
}

/// A tiny model of every layer kind in our own folder format.
fn hybrid_checkpoint() -> Vec<u8> {
    let c = model::hybrid::HybridConfig {
        hidden_size: 8,
        intermediate_size: 8,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 4,
        linear_num_key_heads: Some(1),
        linear_num_value_heads: Some(1),
        linear_key_head_dim: Some(4),
        linear_value_head_dim: Some(4),
        linear_gate_rank: 2,
        ..model::hybrid::HybridConfig::small("fa,swa,gdn,kda,gla", 8).unwrap()
    };
    let config = serde_json::to_string(&c).unwrap();
    let st = safetensors_bytes(&our_tensors(&c), safetensors::Dtype::F32);
    checkpoint_input(&config, &st)
}

/// The fields every tiny transformers config shares.
fn hf_base(model_type: &str, arch: &str, layers: usize) -> Value {
    json!({
        "architectures": [arch], "model_type": model_type, "hidden_act": "silu",
        "vocab_size": 16, "hidden_size": 8, "intermediate_size": 8,
        "num_hidden_layers": layers, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 4, "rms_norm_eps": 1e-6, "max_position_embeddings": 64,
        "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": [2, 3],
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    })
}

/// A transformers checkpoint of `config`: our tensors, renamed and packed by `to_hf` into the
/// family's own layout.
fn hf_checkpoint(
    config: &Value,
    dtype: safetensors::Dtype,
    to_hf: impl FnOnce(&model::hybrid::HybridConfig, &mut Vec<(String, Vec<usize>)>),
) -> Vec<u8> {
    let c = model::hf::hybrid_config(config).unwrap();
    let mut tensors = our_tensors(&c);
    to_hf(&c, &mut tensors);
    checkpoint_input(&config.to_string(), &safetensors_bytes(&tensors, dtype))
}

/// Qwen3-Next packs each GDN layer's q, k, v, z projections, b and a, and the three convs.
fn qwen3_next_layout(c: &model::hybrid::HybridConfig, t: &mut Vec<(String, Vec<usize>)>) {
    let (hk, hv) = (
        c.linear_num_key_heads.unwrap(),
        c.linear_num_value_heads.unwrap(),
    );
    let (dk, dv) = (
        c.linear_key_head_dim.unwrap(),
        c.linear_value_head_dim.unwrap(),
    );
    let (d, w) = (c.hidden_size, c.linear_conv_kernel_dim);
    for (i, kind) in c.layer_types.iter().enumerate() {
        if kind != "linear_attention" {
            continue;
        }
        let pre = format!("model.layers.{i}.linear_attn.");
        t.retain(|(n, _)| !n.starts_with(&pre));
        let r = hv / hk;
        t.extend([
            (
                format!("{pre}in_proj_qkvz.weight"),
                vec![hk * (2 * dk + 2 * r * dv), d],
            ),
            (format!("{pre}in_proj_ba.weight"), vec![2 * hv, d]),
            (
                format!("{pre}conv1d.weight"),
                vec![2 * hk * dk + hv * dv, 1, w],
            ),
            (format!("{pre}norm.weight"), vec![dv]),
            (format!("{pre}out_proj.weight"), vec![d, hv * dv]),
            (format!("{pre}A_log"), vec![hv]),
            (format!("{pre}dt_bias"), vec![hv]),
        ]);
    }
}

/// Kimi-Linear keeps KDA layers under `self_attn.` (without the gate bias) and names the MoE
/// `block_sparse_moe` with w1/w2/w3 experts.
fn kimi_layout(c: &model::hybrid::HybridConfig, t: &mut Vec<(String, Vec<usize>)>) {
    t.retain(|(n, _)| !n.ends_with("linear_attn.g_b_proj.bias"));
    for (name, _) in t.iter_mut() {
        let Some(rest) = name.strip_prefix("model.layers.") else {
            continue;
        };
        let (i, tail) = rest.split_once('.').unwrap();
        let sparse = c
            .moe
            .as_ref()
            .is_some_and(|m| m.sparse_layers[i.parse::<usize>().unwrap()]);
        let tail = if let Some(x) = tail.strip_prefix("linear_attn.") {
            format!("self_attn.{x}")
        } else if let Some(x) = tail.strip_prefix("mlp.").filter(|_| sparse) {
            let x = if x.starts_with("experts.") {
                x.replace("gate_proj", "w1")
                    .replace("down_proj", "w2")
                    .replace("up_proj", "w3")
            } else {
                x.replace("shared_expert.", "shared_experts.")
            };
            format!("block_sparse_moe.{x}")
        } else {
            continue;
        };
        *name = format!("model.layers.{i}.{tail}");
    }
}

fn checkpoint_seeds() -> Vec<(String, Vec<u8>)> {
    use safetensors::Dtype::{BF16, F16, F32};
    let mut qwen2 = hf_base("qwen2", "Qwen2ForCausalLM", 2);
    qwen2["layer_types"] = json!(["full_attention", "sliding_attention"]);
    qwen2["sliding_window"] = json!(4);
    qwen2["use_sliding_window"] = json!(true);
    let mut qwen3 = hf_base("qwen3", "Qwen3ForCausalLM", 1);
    qwen3["tie_word_embeddings"] = json!(true);
    let mut next = hf_base("qwen3_next", "Qwen3NextForCausalLM", 2);
    for (k, v) in [
        ("layer_types", json!(["linear_attention", "full_attention"])),
        ("linear_num_key_heads", json!(1)),
        ("linear_num_value_heads", json!(2)),
        ("linear_key_head_dim", json!(4)),
        ("linear_value_head_dim", json!(4)),
        ("linear_conv_kernel_dim", json!(2)),
        ("partial_rotary_factor", json!(0.5)),
        ("num_experts", json!(2)),
        ("num_experts_per_tok", json!(1)),
        ("moe_intermediate_size", json!(4)),
        ("shared_expert_intermediate_size", json!(4)),
        ("mlp_only_layers", json!([0])),
    ] {
        next[k] = v;
    }
    let mut kimi = hf_base("kimi_linear", "KimiLinearForCausalLM", 2);
    kimi.as_object_mut()
        .unwrap()
        .remove("max_position_embeddings");
    for (k, v) in [
        ("model_max_length", json!(64)),
        (
            "linear_attn_config",
            json!({"full_attn_layers": [2], "kda_layers": [1], "num_heads": 2, "head_dim": 4, "short_conv_kernel_size": 2}),
        ),
        ("kv_lora_rank", json!(4)),
        ("qk_nope_head_dim", json!(2)),
        ("qk_rope_head_dim", json!(2)),
        ("v_head_dim", json!(2)),
        ("q_lora_rank", Value::Null),
        ("num_experts", json!(2)),
        ("num_experts_per_token", json!(1)),
        ("moe_intermediate_size", json!(4)),
        ("num_shared_experts", json!(1)),
        ("first_k_dense_replace", json!(1)),
        ("moe_router_activation_func", json!("sigmoid")),
        ("routed_scaling_factor", json!(2.0)),
    ] {
        kimi[k] = v;
    }
    vec![
        ("hybrid".into(), hybrid_checkpoint()),
        (
            "llama".into(),
            hf_checkpoint(&hf_base("llama", "LlamaForCausalLM", 1), BF16, |_, _| {}),
        ),
        ("qwen2".into(), hf_checkpoint(&qwen2, F16, |_, _| {})),
        ("qwen3".into(), hf_checkpoint(&qwen3, F32, |_, _| {})),
        (
            "qwen3_next".into(),
            hf_checkpoint(&next, F32, qwen3_next_layout),
        ),
        ("kimi_linear".into(), hf_checkpoint(&kimi, F32, kimi_layout)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Tokenizers, templates, requests

/// A tokenizer.json exercising a normalizer, a regex split, a post-processor and WordPiece.
const WORDPIECE_JSON: &str = r###"{"version":"1.0","truncation":null,"padding":null,
"added_tokens":[{"id":0,"content":"[UNK]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
{"id":1,"content":"[CLS]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
{"id":2,"content":"[SEP]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
"normalizer":{"type":"Sequence","normalizers":[{"type":"NFKC"},{"type":"Lowercase"},{"type":"Replace","pattern":{"String":"  "},"content":" "}]},
"pre_tokenizer":{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\d+"},"behavior":"Isolated","invert":false},{"type":"Whitespace"}]},
"post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"[SEP]","type_id":0}}],
"pair":[{"Sequence":{"id":"A","type_id":0}},{"Sequence":{"id":"B","type_id":1}}],
"special_tokens":{"[CLS]":{"id":"[CLS]","ids":[1],"tokens":["[CLS]"]},"[SEP]":{"id":"[SEP]","ids":[2],"tokens":["[SEP]"]}}},
"decoder":{"type":"WordPiece","prefix":"##","cleanup":true},
"model":{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":100,
"vocab":{"[UNK]":0,"[CLS]":1,"[SEP]":2,"hello":3,"world":4,"##s":5,"12":6,"3":7,"h":8,"##e":9,"##llo":10}}}"###;

/// A Unigram tokenizer.json with a Metaspace pre-tokenizer and decoder.
const UNIGRAM_JSON: &str = r###"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":{"type":"Strip","strip_left":true,"strip_right":true},
"pre_tokenizer":{"type":"Metaspace","replacement":"▁","prepend_scheme":"always","split":true},
"post_processor":null,
"decoder":{"type":"Metaspace","replacement":"▁","prepend_scheme":"always","split":true},
"model":{"type":"Unigram","unk_id":0,"byte_fallback":false,
"vocab":[["<unk>",0.0],["▁",-1.0],["▁hello",-2.0],["▁world",-2.5],["h",-3.0],["e",-3.0],["l",-3.0],["o",-3.0],["w",-3.0],["r",-3.0],["d",-3.0]]}}"###;

fn tokenizer_seeds() -> Vec<(String, Vec<u8>)> {
    let gg = |name: &str, bytes: Vec<u8>| (name.to_string(), [b"G".as_slice(), &bytes].concat());
    let mut seeds = vec![
        gg(
            "gguf-gpt2-qwen2",
            tokenizer_gguf(|w| gpt2_tokenizer(w, "qwen2")),
        ),
        gg(
            "gguf-gpt2-llama3",
            tokenizer_gguf(|w| gpt2_tokenizer(w, "llama-bpe")),
        ),
        gg(
            "gguf-gpt2-smollm",
            tokenizer_gguf(|w| gpt2_tokenizer(w, "smollm")),
        ),
        gg(
            "gguf-gpt2-default",
            tokenizer_gguf(|w| gpt2_tokenizer(w, "gpt2")),
        ),
        gg(
            "gguf-spm",
            tokenizer_gguf(|w| sentencepiece_tokenizer(w, true)),
        ),
        gg(
            "gguf-spm-nospace",
            tokenizer_gguf(|w| sentencepiece_tokenizer(w, false)),
        ),
    ];
    // The GGUF tokenizers in Hugging Face's format, as `hybrid convert` writes them.
    for (name, bytes) in seeds.clone() {
        let t = Tokenizer::from_gguf(&Gguf::from_bytes(bytes[1..].to_vec()).unwrap()).unwrap();
        let json = t.inner.to_string(false).unwrap();
        seeds.push((
            name.replace("gguf-", "json-"),
            [b"J", json.as_bytes()].concat(),
        ));
    }
    let fixture =
        std::fs::read(common::fixture("hf-fixtures/llama/tokenizer.json")).expect("fixture");
    seeds.push((
        "json-wordlevel".into(),
        [b"J".as_slice(), &fixture].concat(),
    ));
    seeds.push((
        "json-wordpiece".into(),
        [b"J", WORDPIECE_JSON.as_bytes()].concat(),
    ));
    seeds.push((
        "json-unigram".into(),
        [b"J", UNIGRAM_JSON.as_bytes()].concat(),
    ));
    seeds
}

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Templates using what real ones use: a system prompt taken apart, `namespace`, loop
/// variables, filters, Python string methods, `raise_exception`, macros.
fn templates() -> Vec<(&'static str, String)> {
    let zephyr = Gguf::open(&common::fixture("tiny-llama.gguf"))
        .unwrap()
        .get_str("tokenizer.chat_template")
        .map(str::to_string)
        .unwrap_or_else(|_| CHATML.to_string());
    vec![
        ("chatml", CHATML.into()),
        ("zephyr", zephyr),
        ("fixture", "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}".into()),
        ("think-strip", "{%- for m in messages %}{%- if m.role == 'assistant' %}{%- set c = m.content.split('</think>')[-1].lstrip('\\n') %}<|im_start|>assistant\n{{ c }}<|im_end|>\n{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n<think>\n{%- endif %}".into()),
        ("llama3-like", "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content']|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set system = 'Today is ' + strftime_now('%d %b %Y') %}{%- endif %}<|start_header_id|>system<|end_header_id|>\n\n{{ system }}<|eot_id|>{%- for m in messages %}{%- if m.role not in ['user', 'assistant'] %}{{ raise_exception('roles must be user or assistant') }}{%- endif %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>{%- endfor %}{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}".into()),
        ("alternating", "{%- set ns = namespace(n=0, last='') %}{%- for m in messages %}{%- if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}{%- set ns.n = ns.n + 1 %}{%- if m.role == 'user' %}{{ '[INST] ' + m.content.strip() + ' [/INST]' }}{%- else %}{{ ' ' + m.content|replace('\\n', ' ') + eos_token }}{%- endif %}{%- endfor %}{{ ns.n|string }}".into()),
        ("macro-json", "{% macro turn(role, text) %}{{ role|upper }}: {{ text|tojson }}{% endmacro %}{% for m in messages|reverse %}{{ turn(m.role, m.content) }}{% if m.reasoning_content is defined and m.reasoning_content %} ({{ m.reasoning_content|length }}){% endif %}{% if not loop.last %}\n{% endif %}{% endfor %}{{ messages|map(attribute='role')|join(',') }}{% for i in range(3) %}{{ loop.cycle('a', 'b') }}{% endfor %}".into()),
    ]
}

fn chat_seeds() -> Vec<(String, Vec<u8>)> {
    let mut answer = Message::new("assistant", "<think>\nadd them\n</think>\n\n4");
    answer.reasoning_content = Some("2 + 2 = 4".into());
    let conversations = [
        serde_json::to_string(&[Message::new("user", "hi")]).unwrap(),
        serde_json::to_string(&[
            Message::new("system", "Be brief.  "),
            Message::new("user", "2+2?"),
            answer,
            Message::new("user", "and\n3+3?"),
        ])
        .unwrap(),
    ];
    let mut seeds = vec![];
    for (name, src) in templates() {
        for (i, msgs) in conversations.iter().enumerate() {
            let input = [src.as_bytes(), &[0], msgs.as_bytes()].concat();
            seeds.push((format!("{name}-{i}"), input));
        }
    }
    seeds
}

fn request_seeds() -> Vec<(String, Vec<u8>)> {
    let bodies = [
        (
            "chat",
            json!({"messages": [{"role": "user", "content": "Hi"}]}),
        ),
        (
            "chat-full",
            json!({"model": "hybrid-test", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4", "reasoning_content": "2 + 2"},
                {"role": "user", "content": "3+3?"}],
             "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
             "seed": 7, "stop": ["\n\n", "User:"], "stream": true,
             "stream_options": {"include_usage": true}, "n": 1, "user": "u1",
             "frequency_penalty": 0.0, "presence_penalty": 0.0, "ignore_eos": false}),
        ),
        (
            "chat-delethink",
            json!({"messages": [{"role": "user", "content": "Think."}], "max_completion_tokens": 64,
             "delethink": {"chunk": 64, "carryover": 16, "max_chunks": 3, "head": 8}}),
        ),
        (
            "completion",
            json!({"prompt": "Once upon a time", "max_tokens": 8}),
        ),
        (
            "completion-greedy",
            json!({"prompt": "x", "temperature": 0, "top_k": -1, "stop": "\n", "seed": 18446744073709551615u64}),
        ),
        (
            "completion-delethink",
            json!({"prompt": "Solve:", "delethink": {"chunk": 100, "carryover": 10, "max_chunks": 2}}),
        ),
    ];
    bodies
        .into_iter()
        .map(|(n, b)| (n.to_string(), b.to_string().into_bytes()))
        .collect()
}

// ---------------------------------------------------------------------------------------------

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Checks each seed's size and, when asked, writes them (replacing the target's old seeds).
fn keep(target: &str, seeds: &[(String, Vec<u8>)]) {
    for (name, bytes) in seeds {
        assert!(
            bytes.len() <= MAX_SEED_BYTES,
            "{target}/{name} is {} bytes",
            bytes.len()
        );
    }
    if std::env::var_os("HYBRID_WRITE_FUZZ_SEEDS").is_none() {
        return;
    }
    let dir = corpus_dir(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn gguf_seeds_load() {
    let quants = std::fs::read(common::fixture("quants.gguf")).unwrap();
    let unknown = std::fs::read(common::fixture("unknown_arch.gguf")).unwrap();
    let seeds = vec![
        ("llama".to_string(), llama_gguf()),
        ("quants".to_string(), quants),
        ("unknown-arch".to_string(), unknown),
    ];
    let g = Gguf::from_bytes(seeds[0].1.clone()).unwrap();
    model::Llama::from_gguf(&g).unwrap();
    Tokenizer::from_gguf(&g).unwrap();
    for (_, bytes) in &seeds {
        let g = Gguf::from_bytes(bytes.clone()).unwrap();
        for t in &g.tensors {
            g.tensor_f32(&t.name).unwrap();
        }
    }
    keep("gguf_reader", &seeds);
}

#[test]
fn checkpoint_seeds_load() {
    let seeds = checkpoint_seeds();
    for (name, input) in &seeds {
        let nul = input.iter().position(|&b| b == 0).unwrap();
        let config = std::str::from_utf8(&input[..nul]).unwrap();
        if let Err(e) = model_from_bytes(config, &input[nul + 1..]) {
            panic!("{name}: {e:#}");
        }
    }
    keep("safetensors_config", &seeds);
}

#[test]
fn tokenizer_seeds_load() {
    let seeds = tokenizer_seeds();
    for (name, input) in &seeds {
        let t = match input[0] {
            b'G' => Tokenizer::from_gguf(&Gguf::from_bytes(input[1..].to_vec()).unwrap()),
            _ => Tokenizer::from_json_bytes(&input[1..], Some(1), Some(2), false),
        };
        let t = t.unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let ids = t
            .encode("hello world 123", true)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(!ids.is_empty(), "{name}");
        t.decode(&ids).unwrap();
    }
    keep("tokenizer_load", &seeds);
}

#[test]
fn chat_seeds_render() {
    let seeds = chat_seeds();
    for (name, input) in &seeds {
        let nul = input.iter().position(|&b| b == 0).unwrap();
        let t = ChatTemplate::new(std::str::from_utf8(&input[..nul]).unwrap(), "<s>", "</s>")
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let msgs: Vec<Message> = serde_json::from_slice(&input[nul + 1..]).unwrap();
        // Some templates refuse some conversations on purpose (`raise_exception`).
        if let Err(e) = t.render_thinking(&msgs, true, t.think_history()) {
            assert!(e.to_string().contains("must"), "{name}: {e:#}");
        }
    }
    keep("chat_template", &seeds);
}

#[test]
fn request_seeds_parse() {
    let seeds = request_seeds();
    for (name, body) in &seeds {
        let v: Value = serde_json::from_slice(body).unwrap();
        assert!(
            v.get("messages").is_some() || v.get("prompt").is_some(),
            "{name}"
        );
    }
    keep("request_parser", &seeds);
}
