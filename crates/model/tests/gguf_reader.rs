//! The GGUF reader against files written by llama.cpp's `gguf` Python package
//! (scripts/make-gguf-fixtures.py): metadata of every value type, dequantisation of every
//! supported type, and hostile inputs (truncation at every length, corrupted bytes).
mod common;

use model::gguf::{Gguf, Value};
use safetensors::SafeTensors;

fn quants() -> Gguf {
    Gguf::open(&common::fixture("quants.gguf")).expect("fixture opens")
}

#[test]
fn reads_metadata_of_every_value_type() {
    let g = quants();
    assert_eq!(g.version, 3);
    assert_eq!(g.get("test.u8"), Some(&Value::U8(200)));
    assert_eq!(g.get("test.i8"), Some(&Value::I8(-100)));
    assert_eq!(g.get("test.u16"), Some(&Value::U16(60000)));
    assert_eq!(g.get("test.i16"), Some(&Value::I16(-30000)));
    assert_eq!(g.get("test.u32"), Some(&Value::U32(4_000_000_000)));
    assert_eq!(g.get("test.i32"), Some(&Value::I32(-2_000_000_000)));
    assert_eq!(g.get("test.f32"), Some(&Value::F32(1.5)));
    assert_eq!(g.get("test.bool"), Some(&Value::Bool(true)));
    assert_eq!(g.get("test.string"), Some(&Value::String("héllo".into())));
    assert_eq!(g.get("test.u64"), Some(&Value::U64(1 << 60)));
    assert_eq!(g.get("test.i64"), Some(&Value::I64(-(1 << 60))));
    assert_eq!(g.get("test.f64"), Some(&Value::F64(2.25)));
    let arr = g.get("test.array").and_then(Value::as_array).unwrap();
    assert_eq!(
        arr.iter().map(|v| v.as_u64().unwrap()).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let strs = g.get("test.strings").and_then(Value::as_array).unwrap();
    assert_eq!(
        strs.iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>(),
        vec!["a", "bc"]
    );
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
}

#[test]
fn dequantises_every_supported_type_like_ggml() {
    let g = quants();
    let bytes = std::fs::read(common::fixture("quants_expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let names = [
        "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k",
    ];
    for name in names {
        let want: Vec<f32> = st
            .tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let (got, dims) = g.tensor_f32(name).unwrap();
        assert_eq!(dims, vec![512, 4], "{name}");
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * scale,
                "{name}[{i}]: ours {a}, ggml {b}"
            );
        }
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let full = std::fs::read(common::fixture("quants.gguf")).unwrap();
    let end = quants().data_end(); // bytes after this are alignment padding
    let dir = std::env::temp_dir().join(format!("hybrid-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.gguf");
    // Every length through the header and metadata, then a stride through the data.
    let lens: Vec<usize> = (0..2048)
        .chain((2048..end).step_by(97))
        .chain([end - 1])
        .collect();
    for n in lens {
        std::fs::write(&path, &full[..n]).unwrap();
        let e = match Gguf::open(&path) {
            Ok(_) => panic!("a file cut to {n} of {} bytes opened", full.len()),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains("truncated") || e.contains("magic") || e.contains("corrupt"),
            "{n}: {e}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupted_bytes_never_panic() {
    let full = std::fs::read(common::fixture("quants.gguf")).unwrap();
    let dir = std::env::temp_dir().join(format!("hybrid-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.gguf");
    let mut r = tensor::rng::SplitMix64::new(12345);
    let mut errors = 0;
    for _ in 0..400 {
        let mut b = full.clone();
        for _ in 0..4 {
            // Header and metadata are where corruption changes control flow.
            let at = r.below(1500) as usize;
            b[at] ^= 1 << r.below(8);
        }
        std::fs::write(&path, &b).unwrap();
        if let Ok(g) = Gguf::open(&path) {
            for t in &g.tensors {
                let _ = g.tensor_f32(&t.name);
            }
        } else {
            errors += 1;
        }
    }
    assert!(errors > 0, "no corruption was detected at all");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn non_gguf_and_unknown_architecture_are_named() {
    let e = format!(
        "{:#}",
        Gguf::open(&common::fixture("llamacpp_tokens.json"))
            .err()
            .unwrap()
    );
    assert!(e.contains("GGUF magic"), "{e}");
    let e = format!(
        "{:#}",
        model::LoadedModel::load(&common::fixture("unknown_arch.gguf"))
            .err()
            .unwrap()
    );
    assert!(e.contains("architecture 'mamba9' is not supported"), "{e}");
    let e = format!(
        "{:#}",
        model::LoadedModel::load(&common::fixture("no-such-file.gguf"))
            .err()
            .unwrap()
    );
    assert!(e.contains("does not exist"), "{e}");
}
