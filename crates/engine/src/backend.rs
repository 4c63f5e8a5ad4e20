//! Where the engine's sequences run: the CPU model (f32, paged key/value blocks shared between
//! checkpoints) or the GPU model (bf16 weights and caches on one device, checkpoints kept on
//! the device as whole copies). The scheduler, the pools and the prefix cache are the same for
//! both; only the state type and its byte accounting differ.
//!
//! Every sequence runs through the model on its own (batch 1), on either device, so a
//! sequence's tokens never depend on which others share its steps.
use crate::pools::{self, PoolBytes};
use anyhow::Result;
use model::hybrid::gpu_tp::{GpuTp, GpuTpState};
use model::hybrid::{HybridModel, LayerState};

/// A sequence's state as the prefix cache keeps it.
pub trait CacheState: Sized {
    /// Bytes outside shared key/value blocks.
    fn own_bytes(&self) -> usize;
    /// Key/value blocks that several states may share: (address, bytes), counted once.
    fn kv_blocks(&self) -> Vec<(usize, usize)>;
    /// An independent copy (a checkpoint taken, or a sequence resumed from one).
    fn duplicate(&self) -> Result<Self>;
}

pub trait Backend {
    type State: CacheState;
    /// The state before any token.
    fn new_state(&self) -> Result<Self::State>;
    /// Runs `tokens` of one sequence after what `state` holds; returns the last token's logits.
    fn forward(&self, tokens: &[u32], state: &mut Self::State) -> Result<Vec<f32>>;
    /// What a speculative verification keeps until its commit.
    type Lanes;
    /// Speculative verification: runs `tokens` after `state` and returns the logits of every
    /// token ([T, V], row-major) and the lanes [`Backend::commit`] needs.
    fn verify(&self, tokens: &[u32], state: &mut Self::State) -> Result<(Vec<f32>, Self::Lanes)>;
    /// Keeps the first `keep` tokens of the last verification (no token runs again).
    fn commit(&self, state: &mut Self::State, lanes: Self::Lanes, keep: usize) -> Result<()>;
    /// An independent copy of `state` with room for `more` tokens (a draft model's
    /// throw-away run ahead).
    fn fork(&self, state: &Self::State, more: usize) -> Result<Self::State>;
    /// Bytes a sequence's state holds, by pool.
    fn held(&self, state: &Self::State) -> PoolBytes;
    /// Bytes a sequence's state will hold after `n` tokens, by pool (an upper bound).
    fn after(&self, n: usize) -> PoolBytes;
}

impl CacheState for Vec<LayerState> {
    fn own_bytes(&self) -> usize {
        self.iter()
            .map(|s| match s {
                LayerState::Linear(l) => crate::prefix::linear_bytes(l),
                LayerState::Attention(_) => 0,
            })
            .sum()
    }
    fn kv_blocks(&self) -> Vec<(usize, usize)> {
        crate::prefix::kv_blocks(self)
    }
    /// Shares the key/value blocks (copy-on-write) and copies the recurrent states.
    fn duplicate(&self) -> Result<Self> {
        Ok(self.clone())
    }
}

pub struct CpuBackend<'a>(pub &'a HybridModel);

impl Backend for CpuBackend<'_> {
    type State = Vec<LayerState>;
    fn new_state(&self) -> Result<Self::State> {
        Ok(self.0.new_state(1))
    }
    fn forward(&self, tokens: &[u32], state: &mut Self::State) -> Result<Vec<f32>> {
        self.0.forward(tokens, 1, state, false)
    }
    type Lanes = model::hybrid::Lanes;
    fn verify(&self, tokens: &[u32], state: &mut Self::State) -> Result<(Vec<f32>, Self::Lanes)> {
        self.0.forward_lanes(tokens, state)
    }
    fn commit(&self, state: &mut Self::State, lanes: Self::Lanes, keep: usize) -> Result<()> {
        self.0.commit(state, lanes, keep)
    }
    fn fork(&self, state: &Self::State, _more: usize) -> Result<Self::State> {
        Ok(state.clone())
    }
    fn held(&self, state: &Self::State) -> PoolBytes {
        pools::held(self.0, state)
    }
    fn after(&self, n: usize) -> PoolBytes {
        pools::after(self.0, n)
    }
}

impl CacheState for GpuTpState {
    fn own_bytes(&self) -> usize {
        self.layer_bytes().iter().sum()
    }
    fn kv_blocks(&self) -> Vec<(usize, usize)> {
        vec![]
    }
    /// A device copy trimmed to the tokens it holds (it grows again when it runs on).
    fn duplicate(&self) -> Result<Self> {
        self.resized(self.len())
    }
}

/// GPU caches hold room for a multiple of this many tokens, grown (copied) to the next
/// multiple when a forward would overflow them: a sequence holds at most this many tokens of
/// room beyond its own, so the pools' prediction is exact.
const GPU_CACHE_STEP: usize = 256;

/// The room a GPU cache holding `n` tokens has.
fn gpu_room(n: usize) -> usize {
    n.div_ceil(GPU_CACHE_STEP) * GPU_CACHE_STEP
}

pub struct GpuBackend<'a> {
    pub cpu: &'a HybridModel,
    /// One device, or several with tensor parallelism.
    pub gpu: GpuTp,
}

impl Backend for GpuBackend<'_> {
    type State = GpuTpState;
    fn new_state(&self) -> Result<Self::State> {
        self.gpu.new_state(1, GPU_CACHE_STEP)
    }
    fn forward(&self, tokens: &[u32], state: &mut Self::State) -> Result<Vec<f32>> {
        let need = state.len() + tokens.len();
        if need > state.capacity() {
            *state = state.resized(gpu_room(need))?;
        }
        let logits = self.gpu.forward(tokens, state)?;
        let v = self.gpu.config.vocab_size;
        let last = tokens.len() * v;
        Ok(self.gpu.gpu().download_range(&logits, last - v..last)?)
    }
    type Lanes = model::hybrid::gpu_tp::GpuTpLanes;
    fn verify(&self, tokens: &[u32], state: &mut Self::State) -> Result<(Vec<f32>, Self::Lanes)> {
        let need = state.len() + tokens.len();
        if need > state.capacity() {
            *state = state.resized(gpu_room(need))?;
        }
        let (logits, lanes) = self.gpu.forward_lanes(tokens, state)?;
        Ok((self.gpu.gpu().download(&logits)?, lanes))
    }
    fn commit(&self, state: &mut Self::State, lanes: Self::Lanes, keep: usize) -> Result<()> {
        self.gpu.commit(state, lanes, keep)
    }
    fn fork(&self, state: &Self::State, more: usize) -> Result<Self::State> {
        state.resized(gpu_room(state.len() + more))
    }
    /// Allocated device bytes (a cache's room beyond its tokens counts too).
    fn held(&self, state: &Self::State) -> PoolBytes {
        pools::by_pool(self.cpu, state.layer_bytes())
    }
    /// bf16 keys/values; a window's cache is not trimmed on the GPU, so it grows like FA's.
    fn after(&self, n: usize) -> PoolBytes {
        pools::by_pool(
            self.cpu,
            self.cpu.blocks.iter().map(|b| match &b.mixer {
                model::hybrid::Mixer::Attention(a) => {
                    gpu_room(n) * a.cfg.n_kv_heads * a.cfg.head_dim * 2 * 2
                }
                model::hybrid::Mixer::Linear(l) => l.state_bytes(4),
            }),
        )
    }
}
