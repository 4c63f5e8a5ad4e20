//! `mixers`: the token mixers of hybrid models, each with an executable specification
//! (`reference`, f64), a chunked/parallel form for prefill and training, a one-token `step`
//! for decode, and an explicit backward (the llm.c way: no autograd).
//!
//! - [`linear_core`]: the gated (delta-rule) linear recurrence behind GDN, KDA and GLA.
//! - [`attention_core`]: causal GQA softmax attention with an optional sliding window.
//! - [`attention`]: the FA / SWA layers; [`linear_mixer`]: the GDN / KDA / GLA layers.
//! - [`conv`], [`ops`]: short causal conv, norms and activations, each with its backward.
//! - [`mla`]: multi-head latent attention (inference), the attention layer's MLA form.
//! - [`paged_kv`]: refcounted key/value blocks of the inference caches.
//! - [`params`]: named parameters (checkpoint names) and dense linear layers.
#![allow(clippy::too_many_arguments)] // kernels take their shapes explicitly, llm.c style

pub mod attention;
pub mod attention_core;
pub mod conv;
pub mod linear_core;
pub mod linear_mixer;
pub mod mla;
pub mod ops;
pub mod paged_kv;
pub mod params;
