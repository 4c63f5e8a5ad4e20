//! The serving engine (the serving issue): a step scheduler with chunked prefill over a
//! token budget, continuous batching, and a prefix cache whose hits are valid for hybrids
//! (recurrent states are checkpointed exactly where a hit may resume), and Delethink's bounded-context
//! reasoning loop.
pub mod backend;
pub mod delethink;
pub mod engine;
pub mod metrics;
pub mod pools;
pub mod prefix;
pub mod speculative;

pub use engine::{Engine, EngineConfig, Event, Overloaded, Request, ServeModel, Sink, Usage};
pub use pools::{Pool, PoolBytes};
pub use speculative::SpecConfig;
