//! Tokenizer loading: the first byte picks the source, `G` a GGUF whose `tokenizer.ggml.*`
//! metadata describes it, anything else a Hugging Face `tokenizer.json`; the tokenizer built
//! then encodes and decodes a few texts, one of them the input's own tail.
#![no_main]
use libfuzzer_sys::fuzz_target;
use model::gguf::Gguf;
use model::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let tokenizer = if kind == b'G' {
        match Gguf::from_bytes(rest.to_vec()) {
            Ok(g) => Tokenizer::from_gguf(&g),
            Err(_) => return,
        }
    } else {
        Tokenizer::from_json_bytes(rest, Some(1), Some(2), kind & 1 == 1)
    };
    let Ok(t) = tokenizer else {
        return;
    };
    let tail = String::from_utf8_lossy(&rest[rest.len().saturating_sub(64)..]).into_owned();
    for text in ["Hello, world! 123 héllo\n\n  <|im_end|>", "", &tail] {
        for with_bos in [false, true] {
            if let Ok(ids) = t.encode(text, with_bos) {
                let _ = t.decode(&ids);
                let _ = t.decode_with_special(&ids);
                for &id in ids.iter().take(8) {
                    let _ = (t.token_text(id), t.is_stop(id));
                }
            }
        }
    }
    // Ids the vocabulary may not have.
    let _ = t.decode(&[0, 1, 2, u32::MAX, t.vocab_size as u32]);
});
