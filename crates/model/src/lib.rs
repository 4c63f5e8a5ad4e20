//! `model`: everything between weights on disk and tokens out — GGUF reading, the Llama
//! architecture, tokenizers, chat templates, sampling and the generation loop.

pub mod bundle;
pub mod chat;
pub mod fetch;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod hf_export;
pub mod hybrid;
pub mod llama;
pub mod llama_gpu;
pub mod llama_gpu_gguf;
pub mod sampling;
pub mod tokenizer;

pub use bundle::{AnyModel, GpuWeights, HybridBundle, Runner};
pub use chat::{ChatTemplate, Message, ThinkHistory};
pub use generate::{
    generate, generate_gpu, generate_with, prompt_tokens, GenerateOptions, Generation, LoadedModel,
    TextStream,
};
pub use llama::{KvCache, Llama, LlamaConfig};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::Tokenizer;
