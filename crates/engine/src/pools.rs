//! The running sequences' state memory, one pool per lifetime class (research/serving.md: the
//! three classes of a hybrid's cache grow and die differently, and one shared budget lets the
//! fastest-growing one starve the others):
//! - `kv`: full-attention keys/values, growing with every token for the sequence's lifetime
//!   (paged, refcounted blocks: `mixers::paged_kv`);
//! - `window`: sliding-window keys/values, growing until the window is full, then constant
//!   (blocks leaving the window are freed);
//! - `recurrent`: linear mixers' recurrent and conv states, one fixed-size slot per sequence.
//!
//! Admission asks every pool whether the newcomer's state after its prefill fits; a step whose
//! growth would overflow a pool preempts the newest sequence.
use mixers::paged_kv::BLOCK_TOKENS;
use model::hybrid::{HybridModel, LayerState, Mixer};

/// A pool of sequence state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    Kv,
    Window,
    Recurrent,
}

impl Pool {
    pub const ALL: [Pool; 3] = [Pool::Kv, Pool::Window, Pool::Recurrent];

    pub fn name(self) -> &'static str {
        match self {
            Pool::Kv => "kv",
            Pool::Window => "window",
            Pool::Recurrent => "recurrent",
        }
    }

    fn of(mixer: &Mixer) -> Pool {
        match mixer {
            Mixer::Attention(a) if a.cfg.window.is_some() => Pool::Window,
            Mixer::Attention(_) => Pool::Kv,
            Mixer::Linear(_) => Pool::Recurrent,
        }
    }
}

/// Bytes per pool (also used for budgets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolBytes {
    pub kv: usize,
    pub window: usize,
    pub recurrent: usize,
}

impl PoolBytes {
    pub fn get(&self, p: Pool) -> usize {
        match p {
            Pool::Kv => self.kv,
            Pool::Window => self.window,
            Pool::Recurrent => self.recurrent,
        }
    }

    fn slot(&mut self, p: Pool) -> &mut usize {
        match p {
            Pool::Kv => &mut self.kv,
            Pool::Window => &mut self.window,
            Pool::Recurrent => &mut self.recurrent,
        }
    }

    pub fn total(&self) -> usize {
        self.kv + self.window + self.recurrent
    }

    /// The first pool where `self` exceeds `budget`, if any.
    pub fn over(&self, budget: &PoolBytes) -> Option<Pool> {
        Pool::ALL.into_iter().find(|&p| self.get(p) > budget.get(p))
    }
}

impl std::ops::Add for PoolBytes {
    type Output = PoolBytes;

    fn add(mut self, o: PoolBytes) -> PoolBytes {
        for p in Pool::ALL {
            *self.slot(p) += o.get(p);
        }
        self
    }
}

/// Per-layer byte counts of model `m`, summed by the pool each layer's mixer belongs to.
pub fn by_pool(m: &HybridModel, layer_bytes: impl IntoIterator<Item = usize>) -> PoolBytes {
    let mut out = PoolBytes::default();
    for (b, bytes) in m.blocks.iter().zip(layer_bytes) {
        *out.slot(Pool::of(&b.mixer)) += bytes;
    }
    out
}

/// Bytes a sequence's states hold, by pool.
pub fn held(m: &HybridModel, states: &[LayerState]) -> PoolBytes {
    by_pool(
        m,
        states
            .iter()
            .map(|s| crate::prefix::state_bytes(std::slice::from_ref(s))),
    )
}

/// Bytes a sequence's states will hold after `n` tokens (f32 caches), by pool: an upper
/// bound. A window frees whole blocks, so it holds up to its last W − 1 tokens plus the rest
/// of the oldest block still in use.
pub fn after(m: &HybridModel, n: usize) -> PoolBytes {
    by_pool(
        m,
        m.blocks.iter().map(|b| match &b.mixer {
            Mixer::Attention(a) => {
                let per_token = a.cache_bytes(1, 4);
                let held = a.cfg.window.map_or(n, |w| n.min(w + BLOCK_TOKENS - 2));
                held * per_token
            }
            Mixer::Linear(l) => l.state_bytes(4),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_names_the_first_pool_past_its_budget() {
        let budget = PoolBytes {
            kv: 100,
            window: 10,
            recurrent: 5,
        };
        let a = PoolBytes {
            kv: 60,
            window: 10,
            recurrent: 5,
        };
        assert_eq!(a.over(&budget), None);
        assert_eq!((a + a).over(&budget), Some(Pool::Kv));
        let b = PoolBytes {
            kv: 0,
            window: 11,
            recurrent: 0,
        };
        assert_eq!(b.over(&budget), Some(Pool::Window));
        assert_eq!((a + b).total(), 60 + 21 + 5);
    }
}
