//! `tensor`: the numeric runtime of `hybrid`.
//!
//! A [`Tensor`] is a contiguous, row-major block of numbers with a [`DType`] and a [`Device`].
//! There are no strides and no views: every op writes a fresh contiguous result, which keeps the
//! CPU kernels (and the CUDA kernels of a later backend) simple loops over known shapes, the
//! llm.c way. Ops live in [`ops`] and dispatch on the device; the CPU implementations work on
//! plain slices in [`cpu`]. Quantized GGML weight blocks and their dot products are in [`quant`].
//!
//! Symbols used in shape comments: B batch, T time (tokens), D model width, H heads,
//! Hk key/value heads, Dh head dim, F feed-forward width, V vocabulary.

pub mod cpu;
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod error;
pub mod ops;
pub mod quant;
pub mod rng;
mod tensor;

pub use device::Device;
pub use dtype::DType;
pub use error::{Error, Result};
pub use tensor::{CpuStorage, Storage, Tensor};

/// Sets the number of CPU threads used by every parallel op (rayon's global pool).
/// Call once, before the first op; later calls are ignored.
pub fn init_threads(n: usize) {
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n.max(1))
        .build_global();
}

/// The number of threads the CPU ops run on.
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}

/// Runs `f` on a worker of the global pool, so that the serial parts of a forward pass and
/// the parallel ops share the pool's threads. Calling from outside the pool would add one
/// more runnable thread than there are cores, and the idle workers' yielding then steals
/// the serial parts' time (measured: 30% of decode time on 2 cores).
pub fn run_in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let mut out = None;
    rayon::scope(|s| s.spawn(|_| out = Some(f())));
    out.expect("the pool ran the closure")
}
