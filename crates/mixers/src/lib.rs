//! `mixers`: the token mixers of hybrid models, each as an executable specification
//! (`reference`, f64), a chunked/parallel form for prefill and training, a one-token `step`
//! for decode, and an explicit backward (the llm.c way: no autograd).
//!
//! - [`linear_core`]: the gated (delta-rule) linear recurrence behind GDN, KDA and GLA.
pub mod linear_core;
