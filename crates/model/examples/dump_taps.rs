//! Writes every intermediate of the CPU Llama forward (llama.cpp's tensor names) for the given
//! token ids to a safetensors file, for `scripts/llamacpp-bisect.py` to compare bit by bit.
//! Usage: cargo run --release -p hybrid-model --example dump_taps -- OUT.safetensors 1,2,3 [MODEL]
use std::collections::BTreeMap;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 3,
        "usage: dump_taps OUT.safetensors ID,ID,... [MODEL.gguf]"
    );
    let tokens: Vec<u32> = args[2]
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let path = args
        .get(3)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(model::fetch::default_model_path);
    let g = model::gguf::Gguf::open(&path)?;
    let m = model::llama::Llama::from_gguf(&g)?;
    let mut taps: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // HYBRID_DUMP_PREFIX=N: the first N tokens run as one batch, the rest one at a time (the
    // decode path), and only the last call is dumped.
    let pre: usize = std::env::var("HYBRID_DUMP_PREFIX")
        .ok()
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(0);
    let mut cache = m.new_cache();
    let mut tokens = &tokens[..];
    if pre > 0 {
        m.forward(&tokens[..pre], &mut cache, false)?;
        for &x in &tokens[pre..tokens.len() - 1] {
            m.forward(&[x], &mut cache, false)?;
        }
        tokens = &tokens[tokens.len() - 1..];
    }
    m.forward_tapped(tokens, &mut cache, true, &mut |name, v| {
        taps.insert(
            name.to_string(),
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        );
    })?;
    let views: Vec<(String, safetensors::tensor::TensorView)> = taps
        .iter()
        .map(|(k, b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![b.len() / 4], b)
                    .unwrap();
            (k.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, std::path::Path::new(&args[1]))?;
    Ok(())
}
