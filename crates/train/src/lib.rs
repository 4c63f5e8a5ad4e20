//! Training primitives for converting full-attention models into hybrids.
//!
//! - `optim`: AdamW (decoupled weight decay, PyTorch semantics) and global grad-norm clipping.
//! - `schedule`: linear warmup + cosine decay learning rate.
//! - `loss`: cross-entropy, distillation KL and MSE, each returning its gradient.
//! - `tasks`: deterministic synthetic recall tasks (MQAR, passkey) and their metrics.
//!
//! CPU reference implementations on flat `f32` slices, in the llm.c style: explicit forward and
//! backward, no autograd, no framework. GPU kernels are checked against these.

pub mod budget;
pub mod corpus;
pub mod freeze;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod search;
pub mod supernet;
pub mod synthetic;
pub mod tasks;
pub mod transfer;
