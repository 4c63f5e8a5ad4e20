//! `hybrid export`: a model (GGUF file, hybrid folder or Hugging Face folder) written as a
//! transformers checkpoint of the nearest architecture that reads it exactly
//! ([`model::hf_export`]); models with linear layers are refused with the reason.
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// GGUF file, hybrid folder or Hugging Face folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Output folder (config.json, model.safetensors, tokenizer files).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let any = model::AnyModel::load(&a.model)?;
    let (m, tokenizer, template) = match &any {
        model::AnyModel::Gguf(g) => (
            model::hybrid::HybridModel::from_llama(&g.model)?,
            &g.tokenizer,
            g.template.as_ref(),
        ),
        model::AnyModel::Hybrid(h) => (h.model.clone_model(), &h.tokenizer, h.template.as_ref()),
    };
    let kind = model::hf_export::export(&m, tokenizer, template, &a.out)?;
    eprintln!(
        "wrote {} as a transformers '{kind}' checkpoint",
        a.out.display()
    );
    Ok(())
}
