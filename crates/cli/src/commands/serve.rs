//! `hybrid serve`: the OpenAI-compatible server (crates/server) over the engine
//! (crates/engine) for a GGUF model (served as the all-FA hybrid) or a hybrid folder.
use super::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ThinkArg {
    Auto,
    Keep,
    Strip,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Sequences running at once (more wait in the queue).
    #[arg(long, default_value_t = 8)]
    pub max_num_seqs: usize,
    /// Tokens per engine step, decode and prefill chunks together (chunked prefill).
    #[arg(long, default_value_t = 256)]
    pub max_batched_tokens: usize,
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub prefix_cache: OnOff,
    /// Memory for prefix-cache checkpoints, MiB.
    #[arg(long, default_value_t = 2048)]
    pub cache_mib: usize,
    /// Memory for the running sequences' full-attention keys/values, MiB. Each pool (this one,
    /// windows, recurrent states) has its own budget: admission waits for room in every pool,
    /// and growth past one preempts the newest sequence (recomputed on resume).
    #[arg(long, default_value_t = 4096)]
    pub max_kv_mib: usize,
    /// Memory for the running sequences' sliding-window keys/values, MiB.
    #[arg(long, default_value_t = 1024)]
    pub max_window_mib: usize,
    /// Memory for the running sequences' recurrent and conv states (one slot each), MiB.
    #[arg(long, default_value_t = 1024)]
    pub max_recurrent_mib: usize,
    /// What earlier assistant turns' thinking becomes in the rendered chat: keep every
    /// `<think>` block (MiniMax-M2 style; turns extend each other and hit the prefix cache),
    /// strip it (Qwen3 / DeepSeek-R1 style), or auto (what the chat template implies).
    #[arg(long, value_enum, default_value_t = ThinkArg::Auto)]
    pub think_history: ThinkArg,
    /// The model id clients name (default: the file or folder name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Speculative decoding: `ngram` (prompt lookup: drafts copied from the sequence's own
    /// earlier tokens) or `model:PATH` (a draft model with the same vocabulary, GGUF or hybrid
    /// folder). Greedy outputs are unchanged; sampled ones keep their distribution.
    #[arg(long)]
    pub speculative: Option<String>,
    /// Draft tokens checked per verification.
    #[arg(long, default_value_t = 4)]
    pub num_speculative_tokens: usize,
    /// Split the model over this many GPUs (Megatron-style tensor parallelism over NCCL):
    /// `--device cuda:N` and the next ones, each holding a slice of every layer's heads and of
    /// the MLP.
    #[arg(long, default_value_t = 1)]
    pub tensor_parallel: usize,
    /// Split-invariant GPU arithmetic: logits identical bit for bit at every tensor-parallel
    /// size (1, 2, 4, 8), so greedy replies do not change with the GPU count; slower (the
    /// projections run on the project's own GEMM instead of cuBLAS).
    #[arg(long)]
    pub split_invariant: bool,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let device = a.model.device()?;
    if matches!(a.model.gpu_weights, super::GpuWeightsArg::Gguf) {
        bail!("hybrid serve runs bf16 weights on the GPU (--gpu-weights gguf is the single-sequence reference path of generate and chat); drop --gpu-weights or use bf16");
    }
    let path = a.model.model_path()?;
    let name = a.served_model_name.clone().unwrap_or_else(|| {
        path.file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned())
    });
    let m = engine::ServeModel::load(&path, &name)?;
    let speculative = match &a.speculative {
        Some(s) => Some(engine::SpecConfig::parse(s, a.num_speculative_tokens)?),
        None => None,
    };
    let cfg = engine::EngineConfig {
        speculative,
        max_num_seqs: a.max_num_seqs,
        max_batched_tokens: a.max_batched_tokens,
        prefix_cache: a.prefix_cache == OnOff::On,
        cache_bytes: a.cache_mib << 20,
        pools: engine::PoolBytes {
            kv: a.max_kv_mib << 20,
            window: a.max_window_mib << 20,
            recurrent: a.max_recurrent_mib << 20,
        },
        device,
        tensor_parallel: a.tensor_parallel,
        split_invariant: a.split_invariant,
        ..Default::default()
    };
    let engine = engine::Engine::start(Arc::new(m), cfg)?;
    let mut state = server::AppState::new(engine);
    match a.think_history {
        ThinkArg::Auto => {}
        ThinkArg::Keep => state.think_history = model::ThinkHistory::Keep,
        ThinkArg::Strip => state.think_history = model::ThinkHistory::Strip,
    }
    let state = Arc::new(state);
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!(
            "serving '{name}' on {device}{} at http://{} (OpenAI API under /v1; Ctrl-C stops)",
            if a.tensor_parallel > 1 {
                format!(" with tensor parallelism over {} GPUs", a.tensor_parallel)
            } else {
                String::new()
            },
            listener.local_addr()?
        );
        server::serve(listener, state, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("the server failed")
    })
}
