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
