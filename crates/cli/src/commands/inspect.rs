use super::ModelArgs;
use anyhow::Result;
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Context length at which to report cache bytes per sequence.
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InspectArgs) -> Result<()> {
    let path = a.model.model_path()?;
    if path.is_dir() {
        return inspect_hybrid(&path, &a);
    }
    let m = a.model.load()?;
    let c = &m.model.config;
    // KV bytes at the f16 precision llama.cpp and serving engines store (this CPU path uses f32).
    let kv_tok = c.kv_bytes_per_token(2);
    let j = serde_json::json!({
        "path": path.display().to_string(),
        "architecture": "llama",
        "config": c,
        "parameters": m.model.n_params(),
        "weight_bytes": m.model.weight_bytes(),
        "layers": (0..c.n_layers).map(|_| "full_attention").collect::<Vec<_>>(),
        "kv_bytes_per_token_f16": kv_tok,
        "context": a.context,
        "cache_bytes_per_sequence_f16": kv_tok * a.context,
        "vocab_size": m.tokenizer.vocab_size,
        "has_chat_template": m.template.is_some(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!("model       {}", path.display());
    println!(
        "arch        llama, {} layers, width {}, MLP {}",
        c.n_layers, c.hidden, c.ffn
    );
    println!(
        "attention   {} heads, {} kv heads, head dim {}, rope theta {} ({} dims)",
        c.n_heads, c.n_kv_heads, c.head_dim, c.rope_theta, c.rope_dims
    );
    println!(
        "vocab       {} ({} embeddings)",
        c.vocab_size,
        if c.tied_embeddings { "tied" } else { "untied" }
    );
    println!("context     {}", c.context_length);
    println!(
        "parameters  {:.1} M ({:.1} MiB of weights in memory)",
        m.model.n_params() as f64 / 1e6,
        m.model.weight_bytes() as f64 / (1 << 20) as f64
    );
    println!(
        "layers      {}",
        (0..c.n_layers)
            .map(|i| format!("{i}:FA"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "KV cache    {} bytes/token (f16); {:.1} MiB per sequence at {} tokens",
        kv_tok,
        (kv_tok * a.context) as f64 / (1 << 20) as f64,
        a.context
    );
    Ok(())
}

/// A hybrid model folder (config.json + model.safetensors): each layer's type and cache cost.
fn inspect_hybrid(path: &std::path::Path, a: &InspectArgs) -> Result<()> {
    use model::hybrid::{HybridModel, Mixer};
    let m = HybridModel::load(path)?;
    let c = &m.config;
    let names = c.layer_names()?;
    // Per layer: bytes that grow with every token (FA K/V), and bytes fixed per sequence
    // (SWA window K/V, recurrent state + conv history); K/V at 2 bytes, states at 4.
    let mut per_token = 0;
    let mut per_seq = 0;
    let layers: Vec<serde_json::Value> = m
        .blocks
        .iter()
        .zip(&names)
        .enumerate()
        .map(|(i, (b, name))| {
            let (tok, seq) = match &b.mixer {
                Mixer::Attention(at) if at.cfg.window.is_none() => (at.cache_bytes(1, 2), 0),
                Mixer::Attention(at) => (0, at.cache_bytes(a.context, 2)),
                Mixer::Linear(l) => (0, l.state_bytes(2)),
            };
            per_token += tok;
            per_seq += seq;
            serde_json::json!({"layer": i, "type": name, "cache_bytes_per_token": tok, "cache_bytes_per_sequence": seq})
        })
        .collect();
    let total = per_token * a.context + per_seq;
    let j = serde_json::json!({
        "path": path.display().to_string(),
        "architecture": "hybrid",
        "parameters": m.n_params(),
        "layers": layers,
        "cache_bytes_per_token": per_token,
        "cache_bytes_per_sequence_fixed": per_seq,
        "context": a.context,
        "cache_bytes_per_sequence": total,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!("model       {}", path.display());
    println!(
        "arch        hybrid, {} layers, width {}, MLP {}",
        c.num_hidden_layers, c.hidden_size, c.intermediate_size
    );
    println!("parameters  {:.2} M", m.n_params() as f64 / 1e6);
    println!(
        "layers      {}",
        names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{i}:{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("cache       {per_token} bytes/token (FA K/V, f16) + {per_seq} bytes/sequence (SWA windows, recurrent states)");
    println!(
        "            {:.2} MiB per sequence at {} tokens",
        total as f64 / (1 << 20) as f64,
        a.context
    );
    Ok(())
}
