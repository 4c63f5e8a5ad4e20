//! Counters and gauges the engine publishes, rendered in Prometheus' text format by
//! [`Metrics::prometheus`] (a handful of numbers: no metrics crate needed).
use crate::pools::{Pool, PoolBytes};
use model::hybrid::{HybridModel, Mixer};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub prefilled_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub cancelled: AtomicU64,
    /// Sequences preempted for state memory (recomputed when they resume).
    pub preempted: AtomicU64,
    /// Prompts that resumed from a checkpoint.
    pub hits: AtomicU64,
    /// Prompts whose shared prefix went beyond the checkpoint they resumed from (an FA-only
    /// cache would have hit more).
    pub hits_clamped: AtomicU64,
    pub stored: AtomicU64,
    pub evicted: AtomicU64,
    pub checkpoints: AtomicU64,
    pub cache_bytes: AtomicU64,
    /// Bytes of the running sequences' states.
    pub state_bytes: AtomicU64,
    pub waiting: AtomicU64,
    /// State bytes the waiting requests will need (the budget [`crate::Engine::submit`]
    /// refuses past), and the requests it refused.
    pub queued_bytes: AtomicU64,
    pub overloaded: AtomicU64,
    pub running: AtomicU64,
    /// Cached tokens by layer type ("full_attention", "sliding_attention", "linear_attention"):
    /// every layer of a hit resumes at the same length.
    hit_tokens_by_type: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Per pool (kv, window, recurrent; see [`crate::pools`]): bytes held by the running
    /// sequences, the budget, admissions that waited for it, preemptions it caused.
    pool_held: [AtomicU64; 3],
    pool_budget: [AtomicU64; 3],
    pool_waits: [AtomicU64; 3],
    pool_preempted: [AtomicU64; 3],
    /// Speculative decoding: verifications, draft tokens proposed and accepted.
    pub spec_verifications: AtomicU64,
    pub spec_draft_tokens: AtomicU64,
    pub spec_accepted_tokens: AtomicU64,
    /// Verifications by number of accepted drafts (index = accepted).
    spec_accepted_length: Mutex<Vec<u64>>,
}

fn index(p: Pool) -> usize {
    match p {
        Pool::Kv => 0,
        Pool::Window => 1,
        Pool::Recurrent => 2,
    }
}

impl Metrics {
    pub fn set_pools(&self, held: &PoolBytes, budget: &PoolBytes) {
        for p in Pool::ALL {
            self.pool_held[index(p)].store(held.get(p) as u64, Ordering::Relaxed);
            self.pool_budget[index(p)].store(budget.get(p) as u64, Ordering::Relaxed);
        }
    }

    /// An admission that waited because `p` had no room.
    pub fn note_admission_wait(&self, p: Pool) {
        self.pool_waits[index(p)].fetch_add(1, Ordering::Relaxed);
    }

    /// A sequence preempted because `p` would have overflowed.
    pub fn note_preempted(&self, p: Pool) {
        self.preempted.fetch_add(1, Ordering::Relaxed);
        self.pool_preempted[index(p)].fetch_add(1, Ordering::Relaxed);
    }

    /// A verification of `drafted` draft tokens of which the first `accepted` were kept.
    pub fn record_verification(&self, drafted: usize, accepted: usize) {
        self.spec_verifications.fetch_add(1, Ordering::Relaxed);
        self.spec_draft_tokens
            .fetch_add(drafted as u64, Ordering::Relaxed);
        self.spec_accepted_tokens
            .fetch_add(accepted as u64, Ordering::Relaxed);
        let mut h = self.spec_accepted_length.lock().expect("metrics lock");
        if h.len() <= accepted {
            h.resize(accepted + 1, 0);
        }
        h[accepted] += 1;
    }

    /// Verifications by number of accepted drafts (index = accepted).
    pub fn accepted_lengths(&self) -> Vec<u64> {
        self.spec_accepted_length
            .lock()
            .expect("metrics lock")
            .clone()
    }

    pub fn record_hit(&self, m: &HybridModel, cached: usize) {
        if cached == 0 {
            return;
        }
        let mut by = self.hit_tokens_by_type.lock().expect("metrics lock");
        for b in &m.blocks {
            let kind = match &b.mixer {
                Mixer::Attention(a) if a.cfg.window.is_some() => "sliding_attention",
                Mixer::Attention(_) => "full_attention",
                Mixer::Linear(_) => "linear_attention",
            };
            *by.entry(kind.to_string()).or_default() += cached as u64;
        }
    }

    pub fn prometheus(&self, model: &str) -> String {
        let mut s = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counters = [
            ("hybrid_requests_total", "Requests received.", get(&self.requests)),
            ("hybrid_prompt_tokens_total", "Prompt tokens of admitted requests.", get(&self.prompt_tokens)),
            ("hybrid_cached_tokens_total", "Prompt tokens served from the prefix cache.", get(&self.cached_tokens)),
            ("hybrid_prefilled_tokens_total", "Prompt tokens run through the model.", get(&self.prefilled_tokens)),
            ("hybrid_generated_tokens_total", "Generated tokens.", get(&self.generated_tokens)),
            ("hybrid_cancelled_total", "Sequences cancelled by a client disconnect.", get(&self.cancelled)),
            ("hybrid_overloaded_total", "Requests refused with 503 at the memory budget.", get(&self.overloaded)),
            ("hybrid_preempted_total", "Sequences preempted for state memory (recomputed on resume).", get(&self.preempted)),
            ("hybrid_prefix_hits_total", "Prompts resumed from a checkpoint.", get(&self.hits)),
            ("hybrid_prefix_hits_clamped_total", "Prompts whose shared prefix extended past the deepest checkpoint (a state was missing there).", get(&self.hits_clamped)),
            ("hybrid_checkpoints_stored_total", "Checkpoints stored.", get(&self.stored)),
            ("hybrid_checkpoints_evicted_total", "Checkpoints evicted.", get(&self.evicted)),
            ("hybrid_spec_verifications_total", "Speculative verifications (one forward over a token and its drafts).", get(&self.spec_verifications)),
            ("hybrid_spec_draft_tokens_total", "Draft tokens proposed.", get(&self.spec_draft_tokens)),
            ("hybrid_spec_accepted_tokens_total", "Draft tokens accepted (acceptance rate = accepted / draft).", get(&self.spec_accepted_tokens)),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{model=\"{model}\"}} {v}"
            );
        }
        let gauges = [
            (
                "hybrid_checkpoints",
                "Checkpoints in the prefix cache.",
                get(&self.checkpoints),
            ),
            (
                "hybrid_prefix_cache_bytes",
                "Bytes held by the prefix cache's checkpoints.",
                get(&self.cache_bytes),
            ),
            (
                "hybrid_running_state_bytes",
                "Bytes of the running sequences' states (KV, windows, recurrent).",
                get(&self.state_bytes),
            ),
            (
                "hybrid_queue_waiting",
                "Requests waiting for a slot.",
                get(&self.waiting),
            ),
            (
                "hybrid_queued_state_bytes",
                "State bytes the waiting requests will need (refused past the pools' total).",
                get(&self.queued_bytes),
            ),
            ("hybrid_running", "Sequences running.", get(&self.running)),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{model=\"{model}\"}} {v}"
            );
        }
        let per_pool = [
            (
                "hybrid_pool_bytes",
                "gauge",
                "Bytes of the running sequences' states in each pool.",
                &self.pool_held,
            ),
            (
                "hybrid_pool_budget_bytes",
                "gauge",
                "Each pool's byte budget.",
                &self.pool_budget,
            ),
            (
                "hybrid_pool_admission_waits_total",
                "counter",
                "Admissions that waited for room in each pool.",
                &self.pool_waits,
            ),
            (
                "hybrid_pool_preempted_total",
                "counter",
                "Sequences preempted because each pool would have overflowed.",
                &self.pool_preempted,
            ),
        ];
        for (name, kind, help, values) in per_pool {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for p in Pool::ALL {
                let v = get(&values[index(p)]);
                let _ = writeln!(s, "{name}{{model=\"{model}\",pool=\"{}\"}} {v}", p.name());
            }
        }
        let name = "hybrid_spec_accepted_length_total";
        let _ = writeln!(s, "# HELP {name} Verifications by the number of drafts they accepted.\n# TYPE {name} counter");
        for (n, v) in self.accepted_lengths().iter().enumerate() {
            let _ = writeln!(s, "{name}{{model=\"{model}\",accepted=\"{n}\"}} {v}");
        }
        let name = "hybrid_cached_tokens_by_layer_type_total";
        let _ = writeln!(s, "# HELP {name} Cached tokens summed over the layers of each type.\n# TYPE {name} counter");
        for (k, v) in self.hit_tokens_by_type.lock().expect("metrics lock").iter() {
            let _ = writeln!(s, "{name}{{model=\"{model}\",layer_type=\"{k}\"}} {v}");
        }
        s
    }
}
