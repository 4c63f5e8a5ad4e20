//! The task generators' RNG is the project's one SplitMix64 (see `tensor::rng`).
pub use tensor::rng::SplitMix64;
