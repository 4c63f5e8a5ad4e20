//! The prefix cache: a radix tree over token sequences whose nodes may hold a checkpoint —
//! every layer's state after exactly that prefix (FA keys/values, the SWA window, recurrent
//! and conv states), and the logits of its last token when the prefix is a whole prompt.
//!
//! A hit is valid only where every layer type can resume, i.e. at a checkpoint: an FA model
//! could resume anywhere its keys are cached, a recurrent layer only where its state was saved
//! (research/serving.md §1.4, §8.1). `Lookup::shared` reports how far the prompt matches the
//! tree beyond the hit (a hit "clamped by a missing state"): the engine then keeps a checkpoint
//! at that divergence point so that the next prompt sharing it hits.
//!
//! A checkpoint holds the attention layers' keys/values as refcounted blocks
//! (`mixers::paged_kv`): checkpoints along one conversation, and the sequences resumed from
//! them, share the blocks of their common prefix, and the cache counts each block once.
//! Recurrent and conv states are small and copied. Eviction, when the byte budget is exceeded,
//! removes the checkpoint with the lowest recompute cost per byte it would free, discounted by
//! age: score = tokens / MiB / (1 + age / 64 lookups).
use crate::backend::CacheState;
use model::hybrid::LayerState;
use std::collections::HashMap;

pub struct Checkpoint<S> {
    pub states: S,
    /// The last token's logits, when the checkpoint ends a prompt (a hit of the whole prompt
    /// then needs no forward at all).
    pub logits: Option<Vec<f32>>,
    /// Bytes of its own (recurrent states, logits); its key/value blocks are counted in
    /// [`PrefixCache`]'s block table.
    own: usize,
    /// The key/value blocks it holds (addresses, kept alive by `states`).
    blocks: Vec<usize>,
    last_used: u64,
}

struct Node<S> {
    /// Tokens on the edge from the parent to this node.
    edge: Vec<u32>,
    parent: usize,
    depth: usize,
    children: HashMap<u32, usize>,
    ckpt: Option<Checkpoint<S>>,
}

/// What a lookup found for a prompt.
pub struct Lookup<S> {
    /// Tokens covered by the deepest usable checkpoint (0: none).
    pub hit: usize,
    pub states: Option<S>,
    pub logits: Option<Vec<f32>>,
    /// Length of the longest prefix of the prompt present in the tree (≥ hit).
    pub shared: usize,
}

pub struct PrefixCache<S> {
    nodes: Vec<Node<S>>,
    free: Vec<usize>,
    budget: usize,
    used: usize,
    /// Key/value block address -> (checkpoints holding it, bytes).
    block_refs: HashMap<usize, (usize, usize)>,
    clock: u64,
    pub evicted: u64,
}

/// Bytes a state occupies (f32 elements; shared key/value blocks counted in full).
pub fn state_bytes(states: &[LayerState]) -> usize {
    states
        .iter()
        .map(|s| match s {
            LayerState::Attention(a) => a.bytes(),
            LayerState::Linear(l) => linear_bytes(l),
        })
        .sum()
}

pub(crate) fn linear_bytes(l: &mixers::linear_mixer::LinearState) -> usize {
    (l.rec.len() + l.conv_q.len() + l.conv_k.len() + l.conv_v.len()) * 4
}

/// The key/value blocks of a state: (address, bytes).
pub(crate) fn kv_blocks(states: &[LayerState]) -> Vec<(usize, usize)> {
    let mut out = vec![];
    for s in states {
        if let LayerState::Attention(a) = s {
            for c in &a.kv {
                for b in c.blocks() {
                    out.push((std::sync::Arc::as_ptr(b) as usize, b.bytes()));
                }
            }
        }
    }
    out
}

impl<S: CacheState> PrefixCache<S> {
    pub fn new(budget_bytes: usize) -> Self {
        PrefixCache {
            nodes: vec![Node {
                edge: vec![],
                parent: 0,
                depth: 0,
                children: HashMap::new(),
                ckpt: None,
            }],
            free: vec![],
            budget: budget_bytes,
            used: 0,
            block_refs: HashMap::new(),
            clock: 0,
            evicted: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.used
    }

    pub fn checkpoints(&self) -> usize {
        self.nodes.iter().filter(|n| n.ckpt.is_some()).count()
    }

    /// The deepest checkpoint on the prompt's path that leaves something to run: one strictly
    /// inside the prompt, or one at its end that carries the last logits.
    /// A checkpoint that cannot be copied (out of device memory) is a miss.
    pub fn lookup(&mut self, tokens: &[u32]) -> Lookup<S> {
        self.clock += 1;
        let (mut node, mut depth) = (0usize, 0usize);
        let mut best: Option<usize> = None;
        loop {
            let n = &self.nodes[node];
            if let Some(c) = &n.ckpt {
                if depth < tokens.len() || (depth == tokens.len() && c.logits.is_some()) {
                    best = Some(node);
                }
            }
            let Some(&next) = tokens.get(depth).and_then(|t| n.children.get(t)) else {
                break;
            };
            let edge = &self.nodes[next].edge;
            let common = edge
                .iter()
                .zip(&tokens[depth..])
                .take_while(|(a, b)| a == b)
                .count();
            depth += common;
            if common < edge.len() {
                break;
            }
            node = next;
        }
        let Some(b) = best else {
            return Lookup {
                hit: 0,
                states: None,
                logits: None,
                shared: depth,
            };
        };
        let clock = self.clock;
        let n = &mut self.nodes[b];
        let c = n.ckpt.as_mut().expect("best holds a checkpoint");
        c.last_used = clock;
        let Ok(states) = c.states.duplicate() else {
            return Lookup {
                hit: 0,
                states: None,
                logits: None,
                shared: depth,
            };
        };
        let hit = n.depth;
        Lookup {
            hit,
            states: Some(states),
            logits: if hit == tokens.len() {
                c.logits.clone()
            } else {
                None
            },
            shared: depth,
        }
    }

    /// Keeps a checkpoint after exactly `tokens` (replacing one there), then evicts down to
    /// the budget. A checkpoint larger than the whole budget is not kept.
    pub fn insert(&mut self, tokens: &[u32], states: S, logits: Option<Vec<f32>>) {
        let own = states.own_bytes() + logits.as_ref().map_or(0, |l| l.len() * 4);
        let blocks = states.kv_blocks();
        let total = own + blocks.iter().map(|b| b.1).sum::<usize>();
        if total > self.budget || tokens.is_empty() {
            return;
        }
        self.clock += 1;
        let node = self.node_at(tokens);
        if let Some(old) = self.nodes[node].ckpt.take() {
            self.release(&old);
        }
        for &(addr, bytes) in &blocks {
            let e = self.block_refs.entry(addr).or_insert((0, bytes));
            if e.0 == 0 {
                self.used += bytes;
            }
            e.0 += 1;
        }
        self.used += own;
        self.nodes[node].ckpt = Some(Checkpoint {
            states,
            logits,
            own,
            blocks: blocks.into_iter().map(|b| b.0).collect(),
            last_used: self.clock,
        });
        while self.used > self.budget {
            if !self.evict_one(node) {
                break;
            }
        }
    }

    /// Drops a checkpoint's claims: its own bytes and its references to blocks.
    fn release(&mut self, c: &Checkpoint<S>) {
        self.used -= c.own;
        for addr in &c.blocks {
            let e = self
                .block_refs
                .get_mut(addr)
                .expect("a checkpoint's block is in the table");
            e.0 -= 1;
            if e.0 == 0 {
                self.used -= e.1;
                self.block_refs.remove(addr);
            }
        }
    }

    /// Bytes that removing `c` would free (blocks no other checkpoint holds).
    fn freed_by(&self, c: &Checkpoint<S>) -> usize {
        c.own
            + c.blocks
                .iter()
                .filter_map(|a| self.block_refs.get(a))
                .filter(|(n, _)| *n == 1)
                .map(|(_, b)| b)
                .sum::<usize>()
    }

    /// The node at exactly `tokens`, creating it (and splitting an edge) as needed.
    fn node_at(&mut self, tokens: &[u32]) -> usize {
        let (mut node, mut depth) = (0usize, 0usize);
        while depth < tokens.len() {
            let t = tokens[depth];
            let Some(&next) = self.nodes[node].children.get(&t) else {
                let leaf = self.alloc(Node {
                    edge: tokens[depth..].to_vec(),
                    parent: node,
                    depth: tokens.len(),
                    children: HashMap::new(),
                    ckpt: None,
                });
                self.nodes[node].children.insert(t, leaf);
                return leaf;
            };
            let common = self.nodes[next]
                .edge
                .iter()
                .zip(&tokens[depth..])
                .take_while(|(a, b)| a == b)
                .count();
            if common == self.nodes[next].edge.len() {
                node = next;
                depth += common;
                continue;
            }
            // Split next's edge at `common`: node -> mid -> next.
            let rest = self.nodes[next].edge.split_off(common);
            let head = std::mem::replace(&mut self.nodes[next].edge, rest);
            let mid = self.alloc(Node {
                edge: head,
                parent: node,
                depth: depth + common,
                children: HashMap::new(),
                ckpt: None,
            });
            let first_rest = self.nodes[next].edge[0];
            self.nodes[mid].children.insert(first_rest, next);
            self.nodes[next].parent = mid;
            self.nodes[node].children.insert(t, mid);
            node = mid;
            depth += common;
        }
        node
    }

    fn alloc(&mut self, n: Node<S>) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.nodes[i] = n;
                i
            }
            None => {
                self.nodes.push(n);
                self.nodes.len() - 1
            }
        }
    }

    /// Evicts the lowest-scored checkpoint other than `keep`; false when there is none.
    fn evict_one(&mut self, keep: usize) -> bool {
        let clock = self.clock;
        let victim = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != keep)
            .filter_map(|(i, n)| n.ckpt.as_ref().map(|c| (i, n.depth, c)))
            .map(|(i, depth, c)| {
                let mib = self.freed_by(c) as f64 / (1 << 20) as f64;
                let age = (clock - c.last_used) as f64;
                (i, depth as f64 / mib.max(1e-6) / (1.0 + age / 64.0))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i);
        let Some(v) = victim else { return false };
        let c = self.nodes[v]
            .ckpt
            .take()
            .expect("victim holds a checkpoint");
        self.release(&c);
        self.evicted += 1;
        self.prune(v);
        true
    }

    /// Removes `node` and its ancestors while they hold neither a checkpoint nor children.
    fn prune(&mut self, mut node: usize) {
        while node != 0 && self.nodes[node].ckpt.is_none() && self.nodes[node].children.is_empty() {
            let parent = self.nodes[node].parent;
            let first = self.nodes[node].edge[0];
            self.nodes[parent].children.remove(&first);
            self.nodes[node].edge.clear();
            self.free.push(node);
            node = parent;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixers::linear_mixer::LinearState;

    /// A state of `floats` f32 whose recurrent values all equal `tag` (to tell them apart).
    fn state(tag: f32, floats: usize) -> Vec<LayerState> {
        vec![LayerState::Linear(LinearState {
            rec: vec![tag; floats],
            conv_q: vec![],
            conv_k: vec![],
            conv_v: vec![],
        })]
    }

    fn tag(l: &Lookup<Vec<LayerState>>) -> f32 {
        match &l.states.as_ref().unwrap()[0] {
            LayerState::Linear(s) => s.rec[0],
            _ => unreachable!(),
        }
    }

    #[test]
    fn hits_are_the_deepest_checkpoint_on_the_path() {
        let mut c = PrefixCache::<Vec<LayerState>>::new(1 << 20);
        c.insert(&[1, 2, 3, 4], state(1.0, 4), None);
        c.insert(&[1, 2, 3, 4, 5, 6], state(2.0, 4), Some(vec![0.5; 3]));
        // Splits the [5, 6] edge: a checkpoint at [1..5] of a diverging branch.
        c.insert(&[1, 2, 3, 4, 5, 9], state(3.0, 4), None);
        let l = c.lookup(&[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!((l.hit, tag(&l), l.shared), (6, 2.0, 6));
        assert!(l.logits.is_none(), "logits only for a whole-prompt hit");
        // The whole prompt with logits: a hit of all of it.
        let l = c.lookup(&[1, 2, 3, 4, 5, 6]);
        assert_eq!((l.hit, l.logits.as_deref()), (6, Some(&[0.5f32; 3][..])));
        // A whole prompt without logits falls back to a shorter checkpoint.
        let l = c.lookup(&[1, 2, 3, 4]);
        assert_eq!(l.hit, 0);
        assert_eq!(l.shared, 4);
        // Diverging inside an edge: the shared length goes past the hit.
        let l = c.lookup(&[1, 2, 3, 4, 5, 8]);
        assert_eq!((l.hit, tag(&l), l.shared), (4, 1.0, 5));
        let l = c.lookup(&[1, 2, 3, 4, 5, 9, 1]);
        assert_eq!((l.hit, tag(&l)), (6, 3.0));
        assert_eq!(c.lookup(&[7, 7]).hit, 0);
        assert_eq!(c.checkpoints(), 3);
    }

    #[test]
    fn eviction_keeps_the_budget_and_prefers_costly_recent_checkpoints() {
        // Each checkpoint: 1000 floats = 4000 bytes; room for two.
        let mut c = PrefixCache::<Vec<LayerState>>::new(9000);
        c.insert(&[1; 100], state(1.0, 1000), None);
        c.insert(&[2; 10], state(2.0, 1000), None);
        // Touch the long one: it is both costlier to recompute and more recent.
        assert_eq!(c.lookup(&[1; 101]).hit, 100);
        c.insert(&[3; 50], state(3.0, 1000), None);
        assert!(c.bytes() <= 9000);
        assert_eq!(c.checkpoints(), 2);
        assert_eq!(
            c.lookup(&[2; 11]).hit,
            0,
            "the short, old checkpoint goes first"
        );
        assert_eq!(c.lookup(&[1; 101]).hit, 100);
        assert_eq!(c.lookup(&[3; 51]).hit, 50);
        assert_eq!(c.evicted, 1);
        // A checkpoint larger than the budget is not kept.
        c.insert(&[4; 5], state(4.0, 10_000), None);
        assert_eq!(c.lookup(&[4; 6]).hit, 0);
    }

    /// An attention state of `n` tokens with `row` floats per token (values = token index).
    fn kv_state(n: usize, row: usize) -> Vec<LayerState> {
        let mut kv = mixers::paged_kv::PagedKv::new(row, 0);
        let vals: Vec<f32> = (0..n * row).map(|i| (i / row) as f32).collect();
        kv.push(&vals, &vals);
        vec![LayerState::Attention(mixers::attention::AttnState {
            kv: vec![kv],
            kept: n,
            pos: n,
        })]
    }

    fn extend(states: &[LayerState], n: usize) -> Vec<LayerState> {
        let mut s = states.to_vec();
        if let LayerState::Attention(a) = &mut s[0] {
            let (row, at) = (a.kv[0].blocks()[0].k.len() / 32, a.pos);
            let vals: Vec<f32> = (0..n * row).map(|i| (at + i / row) as f32).collect();
            a.kv[0].push(&vals, &vals);
            a.kept += n;
            a.pos += n;
        }
        s
    }

    #[test]
    fn checkpoints_of_one_conversation_share_their_blocks() {
        let row = 4;
        let block = 32 * row * 4 * 2; // bytes of a full block (keys and values)
        let mut c = PrefixCache::<Vec<LayerState>>::new(1 << 20);
        let turn1 = kv_state(64, row);
        c.insert(&[1; 64], turn1.clone(), None);
        assert_eq!(c.bytes(), 2 * block);
        // The next turn extends the same state: only its new blocks are counted.
        let turn2 = extend(&turn1, 80);
        c.insert(&[1; 144], turn2, None);
        assert_eq!(c.bytes(), 2 * block + 2 * block + block / 2);
        // A hit shares the blocks; the cache's copy is unchanged by the resumed sequence.
        let hit = c.lookup(&[1; 70]);
        assert_eq!(hit.hit, 64);
        let resumed = extend(&hit.states.unwrap(), 6);
        let LayerState::Attention(a) = &resumed[0] else {
            unreachable!()
        };
        assert_eq!(a.kv[0].row(69).0, &[69.0; 4][..]);
        let again = c.lookup(&[1; 70]);
        let LayerState::Attention(b) = &again.states.unwrap()[0] else {
            unreachable!()
        };
        assert_eq!(b.kv[0].end(), 64);
        // Evicting the first checkpoint frees nothing the second still holds.
        let mut small = PrefixCache::<Vec<LayerState>>::new(5 * block);
        small.insert(&[1; 64], turn1, None);
        small.insert(&[1; 144], extend(&kv_state(64, row), 80), None);
        assert!(small.bytes() <= 5 * block);
    }
}
