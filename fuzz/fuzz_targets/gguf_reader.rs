//! A GGUF file's bytes through the reader, then through everything that loading a GGUF model
//! does with what it read: every tensor dequantised, and the Llama model built from the
//! metadata and tensors (`LoadedModel::load` without the file system).
#![no_main]
use libfuzzer_sys::fuzz_target;
use model::gguf::Gguf;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = g.data_end();
    for key in &g.keys {
        let _ = (g.get_u64(key), g.get_f64(key), g.get_str(key));
    }
    for t in &g.tensors {
        let _ = g.tensor_f32(&t.name);
    }
    let _ = model::Llama::from_gguf(&g);
});
