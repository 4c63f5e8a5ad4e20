pub mod bench;
pub mod bench_agreement;
pub mod bench_attention;
pub mod bench_context;
pub mod bench_linear;
pub mod bench_linear_bwd;
pub mod bench_serve;
pub mod bench_spec;
pub mod bench_step;
pub mod bench_think;
pub mod bench_tp;
pub mod chat;
pub mod convert;
mod convert_plots;
mod convert_report;
pub mod cost;
pub mod device;
pub mod disk;
pub mod export;
pub mod generate;
pub mod inspect;
pub mod serve;
pub mod think;
pub mod train_markov;
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
    /// How a GGUF model runs on CUDA: `gguf` keeps the file's Q4_0/Q4_1/Q8_0 blocks and
    /// llama.cpp's CPU arithmetic (same outputs as --device cpu); `bf16` dequantises to bf16
    /// (the fast path for batches and long contexts); `auto` is gguf where every weight type
    /// allows it.
    #[arg(long, value_enum, default_value_t = GpuWeightsArg::Auto)]
    pub gpu_weights: GpuWeightsArg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum GpuWeightsArg {
    Auto,
    Gguf,
    Bf16,
}

impl GpuWeightsArg {
    pub fn get(self) -> model::GpuWeights {
        match self {
            GpuWeightsArg::Auto => model::GpuWeights::Auto,
            GpuWeightsArg::Gguf => model::GpuWeights::Gguf,
            GpuWeightsArg::Bf16 => model::GpuWeights::Bf16,
        }
    }
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

    /// The device asked for; by default CUDA when a GPU is usable here (driver, libraries and
    /// a device that opens), else the CPU. Asking for CUDA on a machine without a usable GPU
    /// is one sentence saying why.
    pub fn device(&self) -> Result<Device> {
        resolve_device(self.device)
    }

    pub fn load(&self) -> Result<model::LoadedModel> {
        model::LoadedModel::load(&self.model_path()?)
    }

    /// A GGUF file or a hybrid folder (what `hybrid convert` writes).
    pub fn load_any(&self) -> Result<model::AnyModel> {
        model::AnyModel::load(&self.model_path()?)
    }
}

/// Whether the default device should be CUDA: the driver and libraries load and GPU 0 opens.
fn gpu_usable() -> bool {
    tensor::cuda::libs::driver_present()
        && tensor::cuda::libs::ensure_loaded().is_ok()
        && tensor::cuda::Gpu::open(0).is_ok()
}

/// The device asked for, or by default CUDA when a GPU is usable here, else the CPU.
pub fn resolve_device(asked: Option<Device>) -> Result<Device> {
    match asked {
        Some(Device::Cpu) => Ok(Device::Cpu),
        Some(Device::Cuda(n)) => {
            tensor::cuda::libs::ensure_loaded().map_err(anyhow::Error::msg)?;
            Ok(Device::Cuda(n))
        }
        None => Ok(if gpu_usable() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
    }
}
