//! A checkpoint folder in one input: `config.json`'s text, a NUL byte (JSON text cannot hold
//! one), then `model.safetensors`' bytes, loaded as `HybridBundle::load` loads a folder: a
//! transformers config mapped (and its tensors remapped) or a hybrid one, then every tensor
//! checked against the model it describes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (config, safetensors) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(config) = std::str::from_utf8(config) else {
        return;
    };
    let _ = model::bundle::model_from_bytes(config, safetensors);
});
