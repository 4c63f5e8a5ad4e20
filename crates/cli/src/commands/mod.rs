pub mod bench;
pub mod bench_step;
pub mod chat;
pub mod device;
pub mod generate;
pub mod inspect;
pub mod train_synthetic;

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use tensor::Device;

/// Options every model-running command shares.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A GGUF model file or a hybrid model folder (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu, cuda or cuda:N (default: cuda when a GPU is usable, else cpu).
    #[arg(long)]
    pub device: Option<Device>,
}

impl ModelArgs {
    pub fn model_path(&self) -> Result<PathBuf> {
        match &self.model {
            Some(p) => Ok(p.clone()),
            None => {
                let p = model::fetch::default_model_path();
                if !p.exists() {
                    bail!("no --model given and the default model is not fetched yet: run `hybrid fetch` (expected at {})", p.display());
                }
                Ok(p)
            }
        }
    }

    pub fn device(&self) -> Result<Device> {
        match self.device {
            // Models run on the CPU until their CUDA ops land, so the default stays CPU.
            None | Some(Device::Cpu) => Ok(Device::Cpu),
            Some(d @ Device::Cuda(n)) => {
                // Say precisely what is missing when there is no usable GPU at all.
                tensor::cuda::Gpu::open(n)?;
                bail!("device {d} was found, but running models on CUDA is not implemented yet (use --device cpu)")
            }
        }
    }

    pub fn load(&self) -> Result<model::LoadedModel> {
        self.device()?;
        model::LoadedModel::load(&self.model_path()?)
    }
}
