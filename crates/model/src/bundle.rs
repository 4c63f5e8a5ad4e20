//! Any model the text commands (`generate`, `chat`, `bench decode`) can run: a GGUF
//! Llama-family file, or a hybrid folder as `hybrid convert` writes it (config.json +
//! model.safetensors + tokenizer.json + tokenizer_config.json with the chat template).
//! [`Runner`] holds the model on its device, so a chat keeps one GPU copy for every turn.
use crate::chat::ChatTemplate;
use crate::generate::{generate_with, GenerateOptions, Generation, LoadedModel};
use crate::hybrid::gpu::GpuHybrid;
use crate::hybrid::io::{add_safetensors, Tensors};
use crate::hybrid::{HybridConfig, HybridModel};
use crate::llama_gpu::GpuLlama;
use crate::llama_gpu_gguf::GpuLlamaGguf;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::path::Path;
use tensor::Device;

/// A hybrid folder's weights with its tokenizer and chat template.
pub struct HybridBundle {
    pub model: HybridModel,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
}

pub enum AnyModel {
    Gguf(LoadedModel),
    Hybrid(HybridBundle),
}

/// `tokenizer_config.json` fields a hybrid folder carries (Hugging Face's names).
#[derive(serde::Serialize, serde::Deserialize, Default)]
pub struct TokenizerConfig {
    #[serde(default)]
    pub chat_template: Option<String>,
    #[serde(default, deserialize_with = "token_text")]
    pub bos_token: Option<String>,
    #[serde(default, deserialize_with = "token_text")]
    pub eos_token: Option<String>,
    #[serde(default)]
    pub add_bos_token: Option<bool>,
}

/// A special token as tokenizer_config.json gives it: a string, or (older files) an object
/// with its `content`.
fn token_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<serde_json::Value> = serde::Deserialize::deserialize(d)?;
    Ok(match v {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    })
}

/// Writes a model folder's `tokenizer.json` and `tokenizer_config.json` (chat template, BOS
/// and EOS tokens, whether BOS is added), each through a temporary name and a rename.
pub fn write_tokenizer(dir: &Path, t: &Tokenizer, template: Option<&ChatTemplate>) -> Result<()> {
    let tmp = dir.join(".tokenizer.json.tmp");
    t.inner
        .save(&tmp, false)
        .map_err(|e| anyhow::anyhow!("cannot write the tokenizer: {e}"))?;
    std::fs::rename(&tmp, dir.join("tokenizer.json"))?;
    let text = |id: Option<u32>| id.and_then(|i| t.token_text(i));
    let tc = TokenizerConfig {
        chat_template: template.map(|t| t.source.clone()),
        bos_token: text(t.bos),
        eos_token: text(t.eos),
        add_bos_token: Some(t.add_bos),
    };
    let tmp = dir.join(".tokenizer_config.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&tc)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("tokenizer_config.json"))?;
    Ok(())
}

impl HybridBundle {
    /// Loads a folder written by `hybrid convert`, or a Hugging Face checkpoint folder of a
    /// mapped architecture ([`crate::hf`]): config.json, safetensors (sharded or not),
    /// tokenizer.json, and the chat template from tokenizer_config.json or
    /// chat_template.jinja.
    pub fn load(dir: &Path) -> Result<Self> {
        for f in ["config.json", "tokenizer.json"] {
            if !dir.join(f).exists() {
                bail!("{} is not a model folder: {f} is missing", dir.display());
            }
        }
        let cfg_path = dir.join("config.json");
        let raw: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("cannot read {}", cfg_path.display()))?,
        )
        .with_context(|| format!("{} is not valid JSON", cfg_path.display()))?;
        let model = if crate::hf::is_hf_config(&raw) {
            crate::hf::load(dir, &raw).with_context(|| format!("cannot load {}", dir.display()))?
        } else {
            HybridModel::load(dir)?
        };
        let tc_path = dir.join("tokenizer_config.json");
        let tc: TokenizerConfig = match std::fs::read_to_string(&tc_path) {
            Ok(s) => serde_json::from_str(&s)
                .with_context(|| format!("{} is not a tokenizer config", tc_path.display()))?,
            Err(_) => TokenizerConfig::default(),
        };
        let tokenizer = Tokenizer::from_file(
            &dir.join("tokenizer.json"),
            model.config.bos_token_id,
            model.config.eos_token_id,
            tc.add_bos_token.unwrap_or(false),
        )?;
        if tokenizer.vocab_size > model.config.vocab_size {
            bail!(
                "{}: the tokenizer has {} tokens but config.json's vocab_size is {}",
                dir.display(),
                tokenizer.vocab_size,
                model.config.vocab_size
            );
        }
        let jinja = std::fs::read_to_string(dir.join("chat_template.jinja")).ok();
        let template = match tc.chat_template.as_ref().or(jinja.as_ref()) {
            Some(src) => Some(ChatTemplate::new(
                src,
                tc.bos_token.as_deref().unwrap_or(""),
                tc.eos_token.as_deref().unwrap_or(""),
            )?),
            None => None,
        };
        Ok(HybridBundle {
            model,
            tokenizer,
            template,
        })
    }
}

/// The model of a folder held in memory: `config.json`'s text and one safetensors file's
/// bytes, through the steps [`HybridBundle::load`] takes after reading the files (fuzzing and
/// tests of hostile checkpoints use it).
pub fn model_from_bytes(config_json: &str, safetensors: &[u8]) -> Result<HybridModel> {
    let dir = Path::new("<memory>");
    let raw: serde_json::Value =
        serde_json::from_str(config_json).context("config.json is not valid JSON")?;
    let mut tensors = Tensors::new();
    if crate::hf::is_hf_config(&raw) {
        add_safetensors(&mut tensors, safetensors, &dir.join("model.safetensors"))?;
        crate::hf::from_tensors(dir, &raw, tensors)
    } else {
        let config = HybridConfig::from_json(config_json, &dir.join("config.json"))?;
        add_safetensors(&mut tensors, safetensors, &dir.join("model.safetensors"))?;
        HybridModel::from_tensors(dir, tensors, config, |_| Ok(()))
    }
}

impl AnyModel {
    /// A GGUF file or a hybrid folder.
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Ok(AnyModel::Hybrid(HybridBundle::load(path)?))
        } else {
            Ok(AnyModel::Gguf(LoadedModel::load(path)?))
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        match self {
            AnyModel::Gguf(m) => &m.tokenizer,
            AnyModel::Hybrid(h) => &h.tokenizer,
        }
    }

    pub fn template(&self) -> Option<&ChatTemplate> {
        match self {
            AnyModel::Gguf(m) => m.template.as_ref(),
            AnyModel::Hybrid(h) => h.template.as_ref(),
        }
    }

    pub fn context_length(&self) -> usize {
        match self {
            AnyModel::Gguf(m) => m.model.config.context_length,
            AnyModel::Hybrid(h) => h.model.config.max_position_embeddings,
        }
    }

    /// Prompt token ids: raw text (with BOS if the model wants it) or a one-turn chat.
    pub fn prompt_tokens(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        crate::generate::prompt_tokens(self.tokenizer(), self.template(), prompt, chat)
    }

    /// The model placed on `device` (a GPU copy is made once, here), GGUF weights as
    /// [`GpuWeights::Auto`] chooses.
    pub fn runner(&self, device: Device) -> Result<Runner<'_>> {
        self.runner_with(device, GpuWeights::Auto)
    }

    /// The model placed on `device`; `weights` says how a GGUF model runs on a GPU.
    pub fn runner_with(&self, device: Device, weights: GpuWeights) -> Result<Runner<'_>> {
        let on = match (self, device) {
            (_, Device::Cpu) => OnDevice::Cpu,
            (AnyModel::Gguf(m), Device::Cuda(n)) => {
                let quantized = match weights {
                    GpuWeights::Bf16 => false,
                    GpuWeights::Gguf => true,
                    GpuWeights::Auto => GpuLlamaGguf::unsupported(&m.model).is_none(),
                };
                if quantized {
                    OnDevice::LlamaGguf(Box::new(GpuLlamaGguf::new(&m.model, n)?))
                } else {
                    OnDevice::Llama(Box::new(GpuLlama::new(&m.model, n)?))
                }
            }
            (AnyModel::Hybrid(h), Device::Cuda(n)) => {
                OnDevice::Hybrid(Box::new(GpuHybrid::new(&h.model, n)?))
            }
        };
        Ok(Runner { model: self, on })
    }
}

/// How a GGUF model runs on a GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuWeights {
    /// `Gguf` when every weight type has a quantized GPU path, else `Bf16`.
    #[default]
    Auto,
    /// The file's own Q4_0/Q4_1/Q8_0 blocks with llama.cpp's CPU arithmetic: the same
    /// outputs as `--device cpu` (up to f32 summation order), 4/8-bit weights on the device.
    Gguf,
    /// Weights dequantised to bf16, bf16 activations, cuBLAS and flash kernels: the fast path
    /// for batches and long contexts, a slightly different model.
    Bf16,
}

enum OnDevice {
    Cpu,
    Llama(Box<GpuLlama>),
    LlamaGguf(Box<GpuLlamaGguf>),
    Hybrid(Box<GpuHybrid>),
}

/// Runs tokens after what it has seen; returns the last token's logits on the host.
type StepFn<'a> = Box<dyn FnMut(&[u32]) -> Result<Vec<f32>> + 'a>;

pub struct Runner<'a> {
    pub model: &'a AnyModel,
    on: OnDevice,
}

impl Runner<'_> {
    /// Generates after `prompt` (see [`generate_with`] for streaming and stop handling).
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        let tok = self.model.tokenizer();
        let ctx = self.model.context_length();
        let cap = (prompt.len() + opts.max_tokens + 1).min(ctx);
        // The forward of this device and model kind: the tokens after what it has seen, to
        // the last token's logits on the host.
        let forward: StepFn<'_> = match (&self.on, self.model) {
            (OnDevice::Cpu, AnyModel::Gguf(m)) => {
                let mut cache = m.model.new_cache();
                Box::new(move |t| m.model.forward(t, &mut cache, false))
            }
            (OnDevice::Cpu, AnyModel::Hybrid(h)) => {
                let mut st = h.model.new_state(1);
                Box::new(move |t| h.model.forward(t, 1, &mut st, false))
            }
            (OnDevice::Llama(g), _) => {
                let mut cache = g.new_cache(1, cap)?;
                let v = g.config.vocab_size;
                Box::new(move |t| {
                    let l = g.logits_to_host(&g.forward(t, &mut cache)?)?;
                    Ok(l[l.len() - v..].to_vec())
                })
            }
            (OnDevice::LlamaGguf(g), _) => {
                let mut cache = g.new_cache(1, cap)?;
                let v = g.config.vocab_size;
                Box::new(move |t| {
                    let l = g.logits_to_host(&g.forward(t, &mut cache)?)?;
                    Ok(l[l.len() - v..].to_vec())
                })
            }
            (OnDevice::Hybrid(g), _) => {
                let mut st = g.new_state(1, cap)?;
                let v = g.config.vocab_size;
                Box::new(move |t| {
                    let l: Vec<f32> = g.gpu.download(&g.forward(t, &mut st)?)?;
                    Ok(l[l.len() - v..].to_vec())
                })
            }
        };
        generate_with(tok, ctx, prompt, opts, forward, on_text)
    }
}
