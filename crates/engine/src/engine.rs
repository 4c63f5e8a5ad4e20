//! The engine: one thread owns the model, the running sequences and the prefix cache, and
//! runs steps. Each step has a token budget shared by decode (one token per running sequence,
//! first) and prefill chunks (what is left, in arrival order): chunked prefill, so that a long
//! prompt does not stall the sequences that are decoding. A prefill chunk ends exactly at each
//! position where the sequence means to keep a checkpoint (its prompt's end, the start of the
//! assistant generation prompt, a divergence point from a cached prefix), since a recurrent
//! state exists only where the chunk ends.
//!
//! Every sequence runs through the model on its own (batch 1), so its outputs do not depend on
//! which others share its steps: batching changes throughput, never tokens.
use crate::backend::{Backend, CacheState, CpuBackend, GpuBackend};
use crate::metrics::Metrics;
use crate::pools::PoolBytes;
use crate::prefix::PrefixCache;
use crate::speculative::{DraftModel, Drafter, Method, NgramDrafter, SpecConfig};
use anyhow::{bail, Result};
use model::hybrid::gpu_tp::GpuTp;
use model::hybrid::HybridModel;
use model::{ChatTemplate, Sampler, SamplingParams, TextStream, Tokenizer};
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

/// The model an engine serves: any hybrid (an FA model is the all-FA hybrid).
pub struct ServeModel {
    pub name: String,
    pub model: HybridModel,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub context: usize,
}

impl ServeModel {
    /// A GGUF file (as the all-FA hybrid, weights dequantized to f32) or a hybrid folder.
    pub fn load(path: &std::path::Path, name: &str) -> Result<Self> {
        let any = model::AnyModel::load(path)?;
        let context = any.context_length();
        Ok(match any {
            model::AnyModel::Gguf(m) => ServeModel {
                name: name.into(),
                model: HybridModel::from_llama(&m.model)?,
                tokenizer: m.tokenizer,
                template: m.template,
                context,
            },
            model::AnyModel::Hybrid(h) => ServeModel {
                name: name.into(),
                model: h.model,
                tokenizer: h.tokenizer,
                template: h.template,
                context,
            },
        })
    }
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences running at once (more wait in the queue).
    pub max_num_seqs: usize,
    /// Tokens per step, decode and prefill chunks together.
    pub max_batched_tokens: usize,
    pub prefix_cache: bool,
    /// Byte budget of the prefix cache's checkpoints.
    pub cache_bytes: usize,
    /// A divergence point becomes a checkpoint when the shared prefix beyond the last hit is
    /// at least this long.
    pub min_shared: usize,
    /// Byte budgets of the running sequences' states, one per pool (FA keys/values, SWA
    /// windows, recurrent slots; see [`crate::pools`]): admission waits until the newcomer's
    /// state after its prefill fits every pool, and a step whose growth would overflow one
    /// preempts the newest sequence (its state is dropped and recomputed when it resumes).
    pub pools: PoolBytes,
    /// Where the sequences run: the CPU model, or the GPU model on one device (weights in
    /// bf16, caches and prefix-cache checkpoints in device memory).
    pub device: tensor::Device,
    /// GPUs the model is split over (tensor parallelism): `device` and the next ones.
    pub tensor_parallel: usize,
    /// Split-invariant GPU arithmetic: the same logits, bit for bit, at every tensor-parallel
    /// size (a power of two) and therefore the same greedy replies; slower (its own GEMM instead
    /// of cuBLAS). See tensor::cuda::invariant.
    pub split_invariant: bool,
    /// Speculative decoding (prompt lookup or a draft model), off when None.
    pub speculative: Option<SpecConfig>,
}

impl EngineConfig {
    /// Whether `tensor_parallel` fits the device and the model (checked before anything
    /// starts; the error names the problem).
    pub fn check_tensor_parallel(&self, model: &HybridModel) -> Result<()> {
        if self.tensor_parallel == 0 {
            bail!("tensor parallelism needs at least 1 GPU");
        }
        if self.tensor_parallel > 1 {
            if self.device == tensor::Device::Cpu {
                bail!("tensor parallelism splits a model over GPUs; --device cpu runs it whole (drop --tensor-parallel or use --device cuda)");
            }
            model::hybrid::tensor_parallel::check(model, self.tensor_parallel)?;
        }
        if self.split_invariant {
            if self.device == tensor::Device::Cpu {
                bail!("split-invariant arithmetic is a GPU mode (the CPU model runs whole, in f32); drop --split-invariant or use --device cuda");
            }
            model::hybrid::tensor_parallel::check_split_invariant(self.tensor_parallel)?;
        }
        Ok(())
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_num_seqs: 8,
            max_batched_tokens: 256,
            prefix_cache: true,
            cache_bytes: 2 << 30,
            min_shared: 16,
            pools: PoolBytes {
                kv: 4 << 30,
                window: 1 << 30,
                recurrent: 1 << 30,
            },
            device: tensor::Device::Cpu,
            tensor_parallel: 1,
            split_invariant: false,
            speculative: None,
        }
    }
}

pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Extra positions to keep a checkpoint at (e.g. where the assistant generation prompt
    /// begins, which the next turn of a chat shares).
    pub keep: Vec<usize>,
    /// Generate past the end-of-sequence token until `max_tokens` (vLLM's `ignore_eos`, for
    /// benchmarks that need fixed output lengths); stop strings still apply.
    pub ignore_eos: bool,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// New text (possibly empty while a multi-byte character or a stop string is pending).
    Text {
        token: u32,
        delta: String,
    },
    Done {
        finish_reason: String,
        text: String,
        usage: Usage,
    },
    Error(String),
}

/// Receives a sequence's events; returns false when nobody listens any more (the client went
/// away), which cancels the sequence.
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

pub struct Engine {
    tx: Option<Sender<(Request, Sink)>>,
    pub metrics: Arc<Metrics>,
    pub model: Arc<ServeModel>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The state pools' total bytes: the waiting requests' budget.
    pools_total: u64,
}

impl Engine {
    pub fn start(model: Arc<ServeModel>, cfg: EngineConfig) -> Result<Self> {
        if cfg.max_num_seqs == 0 || cfg.max_batched_tokens == 0 {
            bail!("max_num_seqs and max_batched_tokens must be at least 1");
        }
        cfg.check_tensor_parallel(&model.model)?;
        if let Some(sp) = &cfg.speculative {
            sp.check_vocab(&model.model)?;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let metrics = Arc::new(Metrics::default());
        let (m, me) = (model.clone(), metrics.clone());
        let pools_total = cfg.pools.total();
        // The GPU model is made on the engine thread (which then owns the device); whether
        // that worked comes back before `start` returns.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
        let device = cfg.device;
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let draft = match &cfg.speculative {
                    Some(SpecConfig {
                        method: Method::Model { model, .. },
                        ..
                    }) => Some(model.clone()),
                    _ => None,
                };
                let ngram = || -> Option<Box<dyn Drafter>> {
                    cfg.speculative
                        .as_ref()
                        .map(|_| Box::new(NgramDrafter) as Box<dyn Drafter>)
                };
                match device {
                    tensor::Device::Cpu => {
                        let drafter = match &draft {
                            Some(d) => {
                                Some(Box::new(DraftModel::new(CpuBackend(d))) as Box<dyn Drafter>)
                            }
                            None => ngram(),
                        };
                        let _ = ready_tx.send(Ok(()));
                        Worker::new(CpuBackend(&m.model), &m, cfg.clone(), me, drafter).run(rx)
                    }
                    tensor::Device::Cuda(ordinal) => {
                        match gpu_worker_parts(
                            &m.model,
                            draft.as_deref(),
                            ordinal,
                            cfg.tensor_parallel,
                            cfg.speculative.is_some(),
                            cfg.split_invariant,
                        ) {
                            Ok((gpu, dgpu)) => {
                                let drafter = match (&draft, dgpu) {
                                    (Some(d), Some(dg)) => {
                                        Some(Box::new(DraftModel::new(GpuBackend {
                                            cpu: d,
                                            gpu: dg,
                                        }))
                                            as Box<dyn Drafter>)
                                    }
                                    _ => ngram(),
                                };
                                let _ = ready_tx.send(Ok(()));
                                let b = GpuBackend { cpu: &m.model, gpu };
                                Worker::new(b, &m, cfg.clone(), me, drafter).run(rx)
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(format!("{e:#}")));
                            }
                        }
                    }
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("the engine cannot run on {device}: {e}"),
            Err(_) => bail!("the engine thread stopped while starting"),
        }
        Ok(Engine {
            pools_total: pools_total as u64,
            tx: Some(tx),
            metrics,
            model,
            thread: Some(thread),
        })
    }

    /// Queues a request; its events go to `sink`. Refused with [`Overloaded`] when the
    /// requests already waiting would, with this one, need more state memory than the pools
    /// hold (it could not start before they all had): the queue's memory stays bounded and the
    /// client is told to come back.
    pub fn submit(&self, req: Request, sink: Sink) -> Result<()> {
        let need = queued_bytes(&self.model, &req);
        let budget = self.pools_total;
        let queued = self.metrics.queued_bytes.fetch_add(need, Ordering::Relaxed);
        if queued > 0 && queued + need > budget {
            self.metrics.queued_bytes.fetch_sub(need, Ordering::Relaxed);
            self.metrics.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(Overloaded(format!(
                "the server is at its memory budget: the waiting requests need {} MiB of state, {} MiB with this one, and the state pools hold {} MiB; retry later",
                queued >> 20,
                (queued + need) >> 20,
                budget >> 20
            ))
            .into());
        }
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        match &self.tx {
            Some(tx) => tx
                .send((req, sink))
                .map_err(|_| anyhow::anyhow!("the engine has stopped")),
            None => bail!("the engine has stopped"),
        }
    }
}

/// A request refused because the server is at its memory budget (HTTP 503 + Retry-After).
#[derive(Debug)]
pub struct Overloaded(pub String);

impl std::fmt::Display for Overloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Overloaded {}

/// State bytes a waiting request will need when it runs to its token limit (the CPU model's
/// accounting; a bound for the GPU's bf16 caches).
fn queued_bytes(m: &ServeModel, req: &Request) -> u64 {
    let n = (req.prompt.len() + req.max_tokens).min(m.context);
    crate::pools::after(&m.model, n).total() as u64
}

impl Drop for Engine {
    /// Lets the running sequences finish, then stops the engine thread.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Seq<S> {
    /// The engine's name for it (a draft model keeps its state under it).
    id: u64,
    req: Request,
    sink: Sink,
    /// Tokens to prefill: the prompt, or after a preemption the prompt and what was generated.
    target: Vec<u32>,
    /// None while preempted.
    states: Option<S>,
    /// Tokens the states have seen: the prompt, then the fed generated tokens.
    fed: Vec<u32>,
    /// Logits after the last fed token (None while the prompt is being prefilled).
    logits: Option<Vec<f32>>,
    sampler: Sampler,
    stream: TextStream,
    cached: usize,
    /// Prompt positions where a checkpoint is kept.
    keep: BTreeSet<usize>,
    /// A token a verification emitted but did not feed (its correction or bonus token): the
    /// next step feeds it instead of sampling.
    pending: Option<u32>,
}

struct Worker<'a, B: Backend> {
    backend: B,
    m: &'a ServeModel,
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
    cache: PrefixCache<B::State>,
    waiting: VecDeque<(Request, Sink)>,
    /// Preempted sequences, resumed before any new request.
    preempted: VecDeque<Seq<B::State>>,
    running: Vec<Seq<B::State>>,
    /// Proposes draft tokens when speculative decoding is on.
    drafter: Option<Box<dyn Drafter + 'a>>,
    next_id: u64,
}

/// The GPU model on `tp` devices from `ordinal` on and, for speculative decoding with a draft
/// model, the draft whole on the first of them; checks that every layer can be verified with
/// lanes.
fn gpu_worker_parts(
    m: &HybridModel,
    draft: Option<&HybridModel>,
    ordinal: usize,
    tp: usize,
    speculative: bool,
    split_invariant: bool,
) -> Result<(GpuTp, Option<GpuTp>)> {
    let devices: Vec<usize> = (ordinal..ordinal + tp.max(1)).collect();
    let gpu = GpuTp::new(m, &devices)?;
    gpu.set_split_invariant(split_invariant)?;
    if speculative {
        gpu.check_lanes()?;
    }
    let dgpu = match draft {
        Some(d) => Some(GpuTp::new(d, &[ordinal])?),
        None => None,
    };
    Ok((gpu, dgpu))
}

impl<'a, B: Backend> Worker<'a, B> {
    fn new(
        backend: B,
        m: &'a ServeModel,
        cfg: EngineConfig,
        metrics: Arc<Metrics>,
        drafter: Option<Box<dyn Drafter + 'a>>,
    ) -> Self {
        let cache = PrefixCache::new(cfg.cache_bytes);
        Worker {
            backend,
            m,
            cfg,
            metrics,
            cache,
            waiting: VecDeque::new(),
            preempted: VecDeque::new(),
            running: vec![],
            drafter,
            next_id: 0,
        }
    }

    fn run(mut self, rx: Receiver<(Request, Sink)>) {
        let mut open = true;
        let mut worked = false;
        loop {
            // Idle: block for the next request; busy: take what has arrived.
            if self.running.is_empty() && self.waiting.is_empty() && self.preempted.is_empty() {
                if !open {
                    return;
                }
                if std::mem::take(&mut worked) {
                    return_free_memory();
                }
                match rx.recv() {
                    Ok(r) => self.waiting.push_back(r),
                    Err(_) => return,
                }
            }
            loop {
                match rx.recv_timeout(Duration::ZERO) {
                    Ok(r) => self.waiting.push_back(r),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.admit();
            self.step();
            self.publish();
            worked = true;
        }
    }

    fn publish(&self) {
        let m = &self.metrics;
        m.waiting
            .store(self.waiting.len() as u64, Ordering::Relaxed);
        m.running
            .store(self.running.len() as u64, Ordering::Relaxed);
        m.cache_bytes
            .store(self.cache.bytes() as u64, Ordering::Relaxed);
        m.checkpoints
            .store(self.cache.checkpoints() as u64, Ordering::Relaxed);
        m.evicted.store(self.cache.evicted, Ordering::Relaxed);
        let held = self.running_bytes();
        m.state_bytes.store(held.total() as u64, Ordering::Relaxed);
        m.set_pools(&held, &self.cfg.pools);
    }

    /// Moves waiting requests into the running set (up to max_num_seqs), restoring the
    /// deepest usable checkpoint of each prompt.
    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_num_seqs {
            // Preempted sequences first, then new requests; each only when its state after
            // prefill fits next to the running ones' (or when nothing runs).
            let next_len = match (self.preempted.front(), self.waiting.front()) {
                (Some(s), _) => s.target.len(),
                (None, Some((r, _))) => r.prompt.len(),
                (None, None) => return,
            };
            if !self.running.is_empty() {
                let need = self.running_bytes() + self.backend.after(next_len);
                if let Some(p) = need.over(&self.cfg.pools) {
                    self.metrics.note_admission_wait(p);
                    return;
                }
            }
            if let Some(s) = self.preempted.pop_front() {
                self.resume(s);
                continue;
            }
            let Some((req, mut sink)) = self.waiting.pop_front() else {
                return;
            };
            self.metrics
                .queued_bytes
                .fetch_sub(queued_bytes(self.m, &req), Ordering::Relaxed);
            let n = req.prompt.len();
            if n == 0 || n >= self.m.context {
                sink(Event::Error(format!(
                    "the prompt has {n} tokens; the model's context is {} tokens",
                    self.m.context
                )));
                continue;
            }
            let mut keep: BTreeSet<usize> = req
                .keep
                .iter()
                .copied()
                .filter(|&k| k > 0 && k < n)
                .collect();
            keep.insert(n);
            let (mut states, mut fed, mut logits, mut cached) = (None, vec![], None, 0);
            if self.cfg.prefix_cache {
                let l = self.cache.lookup(&req.prompt);
                if let Some(s) = l.states {
                    states = Some(s);
                    fed = req.prompt[..l.hit].to_vec();
                    logits = l.logits;
                    cached = l.hit;
                    self.metrics.hits.fetch_add(1, Ordering::Relaxed);
                }
                if l.shared > l.hit {
                    // A longer shared prefix than any checkpoint: keep one there this time.
                    self.metrics.hits_clamped.fetch_add(1, Ordering::Relaxed);
                    if l.shared - l.hit >= self.cfg.min_shared && l.shared < n {
                        keep.insert(l.shared);
                    }
                }
            }
            let states = match self.state_or_new(states) {
                Ok(s) => s,
                Err(e) => {
                    sink(Event::Error(format!(
                        "no memory for the sequence's state: {e:#}"
                    )));
                    continue;
                }
            };
            self.metrics
                .prompt_tokens
                .fetch_add(n as u64, Ordering::Relaxed);
            self.metrics
                .cached_tokens
                .fetch_add(cached as u64, Ordering::Relaxed);
            self.metrics.record_hit(&self.m.model, cached);
            let sampler = Sampler::new(req.sampling.clone());
            let stream = TextStream::new(&req.stop);
            self.next_id += 1;
            self.running.push(Seq {
                id: self.next_id,
                pending: None,
                target: req.prompt.clone(),
                req,
                sink,
                states: Some(states),
                fed,
                logits,
                sampler,
                stream,
                cached,
                keep,
            });
        }
    }

    fn running_bytes(&self) -> PoolBytes {
        self.running
            .iter()
            .filter_map(|s| s.states.as_ref().map(|st| self.backend.held(st)))
            .fold(PoolBytes::default(), |a, b| a + b)
    }

    /// A preempted sequence back in the running set: its prompt and generated tokens are
    /// prefilled again (from the deepest checkpoint the prefix cache has of them); its sampler
    /// and text stream carry on where they stopped.
    fn resume(&mut self, mut s: Seq<B::State>) {
        s.fed.clear();
        s.logits = None;
        s.keep = BTreeSet::from([s.target.len()]);
        if self.cfg.prefix_cache {
            let l = self.cache.lookup(&s.target);
            if let Some(st) = l.states {
                s.states = Some(st);
                s.fed = s.target[..l.hit].to_vec();
                s.logits = l.logits;
            }
        }
        match self.state_or_new(s.states.take()) {
            Ok(st) => s.states = Some(st),
            Err(e) => {
                let _ = (s.sink)(Event::Error(format!(
                    "no memory to resume the sequence: {e:#}"
                )));
                return;
            }
        }
        self.running.push(s);
    }

    /// `restored` (a prefix-cache hit), or the state before any token.
    fn state_or_new(&self, restored: Option<B::State>) -> Result<B::State> {
        match restored {
            Some(s) => Ok(s),
            None => self.backend.new_state(),
        }
    }

    /// Preempts the newest sequences while the states after this step's tokens would not fit
    /// every pool (decode adds a token per sequence, prefill up to the step's budget; a
    /// window stops growing once full, a recurrent slot never grows).
    fn make_room(&mut self) {
        loop {
            let after_step = self
                .running
                .iter()
                .map(|s| {
                    let t = if s.logits.is_some() {
                        1 + self.cfg.speculative.as_ref().map_or(0, |sp| sp.k)
                    } else {
                        (s.target.len() - s.fed.len()).min(self.cfg.max_batched_tokens)
                    };
                    self.backend.after(s.fed.len() + t)
                })
                .fold(PoolBytes::default(), |a, b| a + b);
            let Some(pool) = after_step.over(&self.cfg.pools) else {
                return;
            };
            if self.running.len() <= 1 {
                return;
            }
            let mut s = self.running.pop().expect("more than one running");
            // On resume it prefills everything it has seen (the logits after its last token
            // come back with that prefill); mid-prompt, the whole prompt.
            s.target = s.fed.clone();
            if s.target.len() < s.req.prompt.len() {
                s.target = s.req.prompt.clone();
            }
            s.states = None;
            if let Some(d) = self.drafter.as_mut() {
                d.forget(s.id);
            }
            self.metrics.note_preempted(pool);
            self.preempted.push_front(s);
        }
    }

    fn step(&mut self) {
        self.make_room();
        let mut budget = self.cfg.max_batched_tokens;
        let mut done = vec![];
        // Decode first: one token per sequence whose prompt is in (and its drafts, with
        // speculative decoding).
        let k = self.cfg.speculative.as_ref().map_or(0, |sp| sp.k);
        for (i, s) in self.running.iter_mut().enumerate() {
            if budget == 0 {
                break;
            }
            if s.logits.is_none() {
                continue;
            }
            let spec = self
                .drafter
                .as_mut()
                .map(|d| (d.as_mut() as &mut dyn Drafter, k.min(budget - 1)));
            match decode(&self.backend, self.m, s, spec, &self.metrics) {
                Ok(Decoded::Ran(n)) => budget -= n,
                Ok(Decoded::Done(reason)) => done.push((i, reason)),
                Err(e) => done.push((i, format!("error: {e}"))),
            }
        }
        // Prefill chunks with what is left, ending at every checkpoint position.
        for (i, s) in self.running.iter_mut().enumerate() {
            if budget == 0 {
                break;
            }
            if s.logits.is_some() || done.iter().any(|d| d.0 == i) {
                continue;
            }
            let pos = s.fed.len();
            let n = s.target.len();
            let next_keep = s.keep.range(pos + 1..).next().copied().unwrap_or(n);
            let end = next_keep.min(pos + budget);
            let chunk = &s.target[pos..end];
            let states = s.states.as_mut().expect("running sequences hold a state");
            match self.backend.forward(chunk, states) {
                Ok(l) => {
                    s.fed.extend_from_slice(chunk);
                    budget -= chunk.len();
                    self.metrics
                        .prefilled_tokens
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    if self.cfg.prefix_cache && s.keep.contains(&end) {
                        // A checkpoint that cannot be copied is skipped (a later miss).
                        if let Ok(copy) = states.duplicate() {
                            let lg = (end == n).then(|| l.clone());
                            self.cache.insert(&s.fed, copy, lg);
                            self.metrics.stored.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if end == n {
                        s.logits = Some(l);
                    }
                }
                Err(e) => done.push((i, format!("error: prefill failed: {e}"))),
            }
        }
        self.finish(done);
    }

    /// Removes the finished or cancelled sequences; a finished one sends its last text and
    /// `Done`, and leaves a checkpoint of everything it saw (a conversation's next turn
    /// starts with it).
    fn finish(&mut self, mut done: Vec<(usize, String)>) {
        done.sort_by_key(|d| std::cmp::Reverse(d.0));
        for (i, reason) in done {
            let mut s = self.running.swap_remove(i);
            if let Some(d) = self.drafter.as_mut() {
                d.forget(s.id);
            }
            if let Some(msg) = reason.strip_prefix("error: ") {
                let _ = (s.sink)(Event::Error(msg.to_string()));
                continue;
            }
            if reason == "cancelled" {
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let rest = s.stream.finish();
            if !rest.is_empty() {
                let last = *s.stream.tokens.last().unwrap_or(&0);
                (s.sink)(Event::Text {
                    token: last,
                    delta: rest,
                });
            }
            let usage = Usage {
                prompt_tokens: s.req.prompt.len(),
                completion_tokens: s.stream.tokens.len(),
                cached_tokens: s.cached,
            };
            (s.sink)(Event::Done {
                finish_reason: reason,
                text: s.stream.text.clone(),
                usage,
            });
            if self.cfg.prefix_cache && s.fed.len() > s.req.prompt.len() {
                if let Some(st) = s.states {
                    self.cache.insert(&s.fed, st, s.logits);
                    self.metrics.stored.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// What one decode step did to a sequence.
enum Decoded {
    /// Still running; this many tokens ran through the model.
    Ran(usize),
    /// Finished (the finish reason).
    Done(String),
}

/// One decode step of sequence `s`: the next token (a verification's pending one, or sampled
/// now) is emitted and fed; with a drafter (and room for k drafts), the drafts are verified
/// with it in one forward, the accepted ones emitted, and the state committed to them.
fn decode<B: Backend>(
    b: &B,
    m: &ServeModel,
    s: &mut Seq<B::State>,
    spec: Option<(&mut (dyn Drafter + '_), usize)>,
    metrics: &Metrics,
) -> Result<Decoded> {
    let x0 = match s.pending.take() {
        Some(t) => t,
        None => {
            let t = s
                .sampler
                .sample(s.logits.as_ref().expect("decoding sequences have logits"));
            if let Some(r) = emit(m, s, t, s.fed.len(), metrics)? {
                return Ok(Decoded::Done(r));
            }
            t
        }
    };
    // Drafts only where all of them could be emitted and fed within the limits.
    let left = s.req.max_tokens.saturating_sub(s.stream.tokens.len());
    let room = m.context.saturating_sub(s.fed.len() + 2);
    let drafts = match spec {
        Some((d, k)) => {
            let k = k.min(left.saturating_sub(1)).min(room);
            let mut ctx = Vec::with_capacity(s.fed.len() + 1);
            ctx.extend_from_slice(&s.fed);
            ctx.push(x0);
            d.propose(s.id, &ctx, k)?
        }
        None => vec![],
    };
    let states = s.states.as_mut().expect("running sequences hold a state");
    if drafts.is_empty() {
        let l = b.forward(&[x0], states)?;
        s.fed.push(x0);
        s.logits = Some(l);
        return Ok(Decoded::Ran(1));
    }
    let mut toks = Vec::with_capacity(1 + drafts.len());
    toks.push(x0);
    toks.extend_from_slice(&drafts);
    let (logits, lanes) = b.verify(&toks, states)?;
    let v = logits.len() / toks.len();
    let row = |j: usize| &logits[j * v..(j + 1) * v];
    // Token j+1 is checked against the logits after toks[..=j]; the first rejection's
    // correction, or the bonus token after k accepted drafts, is emitted and left pending.
    let (mut keep, mut finished) = (1, None);
    for j in 0..=drafts.len() {
        let (t, ok) = match drafts.get(j) {
            Some(&d) => s.sampler.verify_draft(row(j), d),
            None => (s.sampler.sample(row(j)), false),
        };
        if let Some(r) = emit(m, s, t, s.fed.len() + keep, metrics)? {
            finished = Some(r);
            break;
        }
        if ok {
            keep += 1;
        } else {
            s.pending = Some(t);
            break;
        }
    }
    // Every kept token after x0 is an accepted draft.
    metrics.record_verification(drafts.len(), keep - 1);
    let states = s.states.as_mut().expect("running sequences hold a state");
    b.commit(states, lanes, keep)?;
    s.fed.extend_from_slice(&toks[..keep]);
    s.logits = Some(row(keep - 1).to_vec());
    Ok(match finished {
        Some(r) => Decoded::Done(r),
        None => Decoded::Ran(toks.len()),
    })
}

/// Emits token `t` of sequence `s`, whose states will have seen `fed` tokens before it:
/// its text goes to the client, or the sequence ends (Some(finish reason)).
fn emit<S>(
    m: &ServeModel,
    s: &mut Seq<S>,
    t: u32,
    fed: usize,
    metrics: &Metrics,
) -> Result<Option<String>> {
    if m.tokenizer.is_stop(t) && !s.req.ignore_eos {
        return Ok(Some("stop".into()));
    }
    let (delta, stopped) = s.stream.push(&m.tokenizer, t)?;
    metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
    if !(s.sink)(Event::Text { token: t, delta }) {
        return Ok(Some("cancelled".into()));
    }
    if stopped {
        return Ok(Some("stop".into()));
    }
    if s.stream.tokens.len() >= s.req.max_tokens || fed + 1 >= m.context {
        return Ok(Some("length".into()));
    }
    Ok(None)
}

/// Hands memory the allocator keeps in its free lists back to the system when the engine goes
/// idle: after a burst, glibc's per-thread arenas would otherwise hold on to the freed key/value
/// blocks and activations (hundreds of MiB after 32 concurrent clients), and the process would
/// not return to its idle footprint.
fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
