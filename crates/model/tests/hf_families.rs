//! Hugging Face checkpoint folders against transformers: for each family, a tiny random
//! checkpoint and transformers 5.17's f32 logits (tests/fixtures/hf-fixtures, made by
//! scripts/make-hf-fixtures.py on the GPU machine). Our logits must match within 1e-3 of the
//! largest logit, over one prefill of all tokens and step by step after a shorter prefill.
//! Llama's weights are sharded with an index file, Qwen2's are bf16 (q/k/v biases), Qwen3's
//! tie the embeddings (q/k norms); Qwen3-Next has two GDN layers (packed projections, GVA),
//! two gated attention layers with partial RoPE, zero-centred norms, and a dense MLP followed
//! by three mixture-of-experts MLPs with a gated shared expert.
use model::AnyModel;
use std::path::PathBuf;

fn dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf-fixtures")
        .join(family)
}

struct Fixture {
    ids: Vec<u32>,
    prefill: Vec<f32>,
    decode: Vec<f32>,
    split: usize,
}

fn fixture(family: &str) -> Fixture {
    let bytes = std::fs::read(dir(family).join("fixture.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let i64s = |n: &str| -> Vec<i64> {
        st.tensor(n)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let f32s = |n: &str| -> Vec<f32> {
        st.tensor(n)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    Fixture {
        ids: i64s("input_ids").iter().map(|&x| x as u32).collect(),
        prefill: f32s("prefill_logits"),
        decode: f32s("decode_logits"),
        split: i64s("split")[0] as usize,
    }
}

fn rel(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn matches_transformers(family: &str) {
    let f = fixture(family);
    let AnyModel::Hybrid(h) = AnyModel::load(&dir(family)).unwrap() else {
        panic!("a folder loads as a hybrid bundle");
    };
    let m = &h.model;
    let mut st = m.new_state(1);
    let prefill = m.forward(&f.ids, 1, &mut st, true).unwrap();
    let e = rel(&prefill, &f.prefill);
    assert!(e < 1e-3, "{family}: prefill logits off by {e}");
    let mut st = m.new_state(1);
    m.forward(&f.ids[..f.split], 1, &mut st, false).unwrap();
    let mut steps = vec![];
    for &t in &f.ids[f.split..] {
        steps.extend(m.forward(&[t], 1, &mut st, false).unwrap());
    }
    let d = rel(&steps, &f.decode);
    assert!(d < 1e-3, "{family}: decode logits off by {d}");
    println!("{family}: prefill {e:.1e}, decode {d:.1e} of the largest logit");
    // The folder's tokenizer and chat template came along.
    let t = h.template.as_ref().expect("the chat template");
    let msg = [model::Message {
        role: "user".into(),
        content: "t5 t6".into(),
        reasoning_content: None,
    }];
    let text = t.render(&msg, true).unwrap();
    assert!(text.contains("t5 t6"), "{text}");
    assert_eq!(h.tokenizer.encode("t5 t6", false).unwrap(), vec![5, 6]);
}

#[test]
fn llama_sharded_f32_matches_transformers() {
    matches_transformers("llama");
}

#[test]
fn qwen2_bf16_with_biases_matches_transformers() {
    matches_transformers("qwen2");
}

#[test]
fn qwen3_tied_with_qk_norms_matches_transformers() {
    matches_transformers("qwen3");
}

#[test]
fn qwen3_next_gdn_gated_attention_moe_matches_transformers() {
    matches_transformers("qwen3_next");
}

#[test]
fn kimi_linear_kda_mla_sigmoid_moe_matches_transformers() {
    matches_transformers("kimi_linear");
}

/// Wrong or unsupported config fields are named.
#[test]
fn bad_configs_name_the_field() {
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir("llama").join("config.json")).unwrap())
            .unwrap();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "hidden_size",
            serde_json::Value::Null,
            "'hidden_size' is missing",
        ),
        (
            "hidden_size",
            "64".into(),
            "'hidden_size' must be a non-negative integer",
        ),
        (
            "hidden_act",
            "gelu".into(),
            "hidden_act 'gelu' is not supported",
        ),
        (
            "rope_parameters",
            serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0}),
            "rope_type 'llama3' is not supported",
        ),
        (
            "num_key_value_heads",
            3.into(),
            "num_key_value_heads 3 does not divide",
        ),
        (
            "layer_types",
            serde_json::json!(["full_attention"]),
            "layer_types has 1 entries",
        ),
        ("model_type", "mamba".into(), "model_type 'mamba'"),
    ];
    for (field, value, want) in cases {
        let mut v = base.clone();
        if value.is_null() {
            v.as_object_mut().unwrap().remove(field);
        } else {
            v[field] = value;
        }
        let e = match model::hf::hybrid_config(&v) {
            Ok(_) => panic!("{field}: accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains(want), "{field}: {e}");
    }
}

/// A checkpoint with a tensor the model does not use is refused, naming the tensor.
#[test]
fn leftover_tensors_are_named() {
    let tmp = std::env::temp_dir().join(format!("hf-leftover-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(dir("qwen3").join(f), tmp.join(f)).unwrap();
    }
    let bytes = std::fs::read(dir("qwen3").join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    let extra = [0u8; 16];
    views.push((
        "model.layers.0.mlp.experts.0.up_proj.weight".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &extra).unwrap(),
    ));
    std::fs::write(
        tmp.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let e = format!("{:#}", AnyModel::load(&tmp).err().unwrap());
    assert!(
        e.contains("tensor 'model.layers.0.mlp.experts.0.up_proj.weight'")
            && e.contains("not part of this model"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Export: an all-FA model is written as Llama, one with sliding windows as Qwen2 (zero
/// biases), a model loaded from Qwen3 as Qwen3; each folder loads back through the
/// transformers path with the same logits, bit for bit; a model with GDN layers is refused
/// with the reason.
#[test]
fn exported_checkpoints_load_back_with_the_same_logits() {
    use model::hybrid::{HybridConfig, HybridModel};
    let qwen3 = match AnyModel::load(&dir("qwen3")).unwrap() {
        AnyModel::Hybrid(h) => h,
        _ => unreachable!(),
    };
    let small = |layout: &str| {
        let c = HybridConfig {
            max_position_embeddings: 128,
            ..HybridConfig::small(layout, 256).unwrap()
        };
        HybridModel::init(c, 4).unwrap()
    };
    let ids: Vec<u32> = (0..40).map(|i| (i * 37 % 250 + 3) as u32).collect();
    let cases = [
        (small("fa,fa"), "llama"),
        (small("fa,swa,fa"), "qwen2"),
        (qwen3.model.clone_model(), "qwen3"),
    ];
    for (i, (m, want)) in cases.into_iter().enumerate() {
        let out = std::env::temp_dir().join(format!("hf-export-{}-{i}", std::process::id()));
        let kind =
            model::hf_export::export(&m, &qwen3.tokenizer, qwen3.template.as_ref(), &out).unwrap();
        assert_eq!(kind, want);
        let raw: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(raw["model_type"], want);
        let AnyModel::Hybrid(back) = AnyModel::load(&out).unwrap() else {
            unreachable!()
        };
        let logits = |m: &HybridModel| m.forward(&ids, 1, &mut m.new_state(1), true).unwrap();
        let (a, b) = (logits(&m), logits(&back.model));
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{want}: logits changed by the round trip"
        );
        assert!(back.template.is_some());
        match std::env::var_os("HYBRID_EXPORT_KEEP") {
            // For scripts/check-hf-export.py: the folder and our logits, for transformers.
            Some(keep) => {
                keep_for_transformers(&out, &std::path::PathBuf::from(keep), want, &ids, &a)
            }
            None => {
                let _ = std::fs::remove_dir_all(&out);
            }
        }
    }
    let e = model::hf_export::target(&small("fa,gdn"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 1 is GDN") && e.contains("Qwen3-Next"),
        "{e}"
    );
}

fn keep_for_transformers(
    out: &std::path::Path,
    keep: &std::path::Path,
    name: &str,
    ids: &[u32],
    logits: &[f32],
) {
    let to = keep.join(name);
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(keep).unwrap();
    std::fs::rename(out, &to).unwrap();
    let ids: Vec<u8> = ids.iter().flat_map(|&i| (i as i64).to_le_bytes()).collect();
    let lg: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let v = logits.len() / (ids.len() / 8);
    let views = vec![
        (
            "input_ids".to_string(),
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::I64,
                vec![ids.len() / 8],
                &ids,
            )
            .unwrap(),
        ),
        (
            "logits".to_string(),
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![ids.len() / 8, v],
                &lg,
            )
            .unwrap(),
        ),
    ];
    std::fs::write(
        to.join("ours.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
}
