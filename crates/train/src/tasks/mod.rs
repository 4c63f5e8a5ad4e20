//! Synthetic tasks that probe recall: MQAR (Zoology) and passkey retrieval (Landmark Attention);
//! and a Markovian chain-of-thought task with its control (Delethink).
//!
//! Each generator is deterministic in its seed on every platform (`rng::SplitMix64`) and returns
//! row-major `inputs` [B, N] with next-token `labels` [B, N], -100 where unsupervised, ready for
//! `loss::cross_entropy`.

pub mod markov;
pub mod mqar;
pub mod passkey;
pub mod rng;
