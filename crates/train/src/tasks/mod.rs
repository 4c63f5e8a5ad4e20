//! Synthetic tasks that probe recall: MQAR (Zoology) and passkey retrieval (Landmark Attention).
//!
//! Each generator is deterministic in its seed on every platform (`rng::SplitMix64`) and returns
//! row-major `inputs` [B, N] with next-token `labels` [B, N], -100 where unsupervised, ready for
//! `loss::cross_entropy`.

pub mod mqar;
pub mod passkey;
pub mod rng;
