//! Paged keys/values for inference: one sequence's cache of an attention layer as a list of
//! fixed-size, reference-counted blocks ([`BLOCK_TOKENS`] tokens each), as vLLM's block
//! manager keeps them.
//!
//! - Cloning a cache clones block handles, not values: a prefix-cache checkpoint and every
//!   sequence resumed from it share the blocks of their common prefix.
//! - Appending to a block that someone else also holds copies that one block first
//!   (copy-on-write), so a checkpoint never sees later tokens.
//! - A sliding window drops whole blocks as they leave it ([`PagedKv::drop_before`]); the
//!   memory goes back as soon as no checkpoint holds them.
use std::sync::Arc;

/// Tokens per block.
pub const BLOCK_TOKENS: usize = 32;

/// Keys and values of up to [`BLOCK_TOKENS`] consecutive tokens, `row` floats per token each.
#[derive(Clone, Debug, Default)]
pub struct KvBlock {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl KvBlock {
    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 4
    }
}

/// One sequence's cached keys/values: absolute token indices `start..end` (the tokens this
/// cache has seen, minus whole blocks dropped from the front). Block i holds the tokens from
/// `origin + i·BLOCK_TOKENS`.
#[derive(Clone, Debug, Default)]
pub struct PagedKv {
    row: usize,
    /// Floats per token of the values (`row` unless a layer caches something else there:
    /// MLA keeps its compressed latent as the key row and no value row).
    vrow: usize,
    origin: usize,
    end: usize,
    blocks: Vec<Arc<KvBlock>>,
}

impl PagedKv {
    /// An empty cache whose next token is absolute index `at`; `row` floats per token.
    pub fn new(row: usize, at: usize) -> Self {
        Self::with_rows(row, row, at)
    }

    /// An empty cache with `row` floats per token of keys and `vrow` of values.
    pub fn with_rows(row: usize, vrow: usize, at: usize) -> Self {
        PagedKv {
            row,
            vrow,
            origin: at,
            end: at,
            blocks: vec![],
        }
    }

    /// First absolute token index still stored.
    pub fn start(&self) -> usize {
        self.origin
    }

    /// One past the last absolute token index stored.
    pub fn end(&self) -> usize {
        self.end
    }

    pub fn blocks(&self) -> &[Arc<KvBlock>] {
        &self.blocks
    }

    /// Appends the keys and values of `k.len() / row` tokens.
    pub fn push(&mut self, k: &[f32], v: &[f32]) {
        let (row, vrow) = (self.row, self.vrow);
        debug_assert_eq!(k.len() / row * vrow, v.len());
        let mut at = 0;
        while at < k.len() {
            let off = (self.end - self.origin) % BLOCK_TOKENS;
            if off == 0 {
                self.blocks.push(Arc::new(KvBlock {
                    k: Vec::with_capacity(BLOCK_TOKENS * row),
                    v: Vec::with_capacity(BLOCK_TOKENS * vrow),
                }));
            }
            let take = (BLOCK_TOKENS - off).min((k.len() - at) / row);
            let last = self.blocks.last_mut().expect("a block was just ensured");
            // Copy-on-write: a block shared with a checkpoint is copied before it grows.
            let b = Arc::make_mut(last);
            let vat = at / row * vrow;
            b.k.extend_from_slice(&k[at..at + take * row]);
            b.v.extend_from_slice(&v[vat..vat + take * vrow]);
            at += take * row;
            self.end += take;
        }
    }

    /// Frees the whole blocks that lie entirely before absolute index `abs`.
    pub fn drop_before(&mut self, abs: usize) {
        let n = abs.saturating_sub(self.origin) / BLOCK_TOKENS;
        let n = n.min(self.blocks.len());
        if n > 0 {
            self.blocks.drain(..n);
            self.origin += n * BLOCK_TOKENS;
        }
    }

    /// Forgets the tokens from absolute index `end` on (a rejected speculative draft); a
    /// block shared with a checkpoint is copied before it shrinks.
    pub fn truncate(&mut self, end: usize) {
        if end >= self.end {
            return;
        }
        let n = end.saturating_sub(self.origin);
        self.blocks.truncate(n.div_ceil(BLOCK_TOKENS));
        if let Some(last) = self.blocks.last_mut() {
            let rows = n - (n - 1) / BLOCK_TOKENS * BLOCK_TOKENS;
            if last.k.len() > rows * self.row {
                let b = Arc::make_mut(last);
                b.k.truncate(rows * self.row);
                b.v.truncate(rows * self.vrow);
            }
        }
        self.end = end.max(self.origin);
    }

    /// Key and value rows of absolute token `abs` (`start() <= abs < end()`).
    #[inline]
    pub fn row(&self, abs: usize) -> (&[f32], &[f32]) {
        let i = abs - self.origin;
        let b = &self.blocks[i / BLOCK_TOKENS];
        let (o, vo) = (
            (i % BLOCK_TOKENS) * self.row,
            (i % BLOCK_TOKENS) * self.vrow,
        );
        (&b.k[o..o + self.row], &b.v[vo..vo + self.vrow])
    }

    /// Bytes of the blocks this cache holds (shared ones included).
    pub fn bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.bytes()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, from: usize, row: usize) -> Vec<f32> {
        (from * row..(from + n) * row).map(|x| x as f32).collect()
    }

    #[test]
    fn rows_come_back_across_block_boundaries() {
        let row = 3;
        let mut c = PagedKv::new(row, 0);
        c.push(&rows(5, 0, row), &rows(5, 0, row));
        c.push(&rows(70, 5, row), &rows(70, 5, row));
        assert_eq!(c.end(), 75);
        assert_eq!(c.blocks().len(), 3);
        for abs in 0..75 {
            let (k, v) = c.row(abs);
            assert_eq!(k, &rows(1, abs, row)[..]);
            assert_eq!(v, k);
        }
    }

    #[test]
    fn clones_share_blocks_and_growth_copies_only_the_shared_tail() {
        let row = 2;
        let mut a = PagedKv::new(row, 0);
        a.push(&rows(40, 0, row), &rows(40, 0, row));
        let b = a.clone();
        assert!(Arc::ptr_eq(&a.blocks()[0], &b.blocks()[0]));
        a.push(&rows(1, 40, row), &rows(1, 40, row));
        // The full first block stays shared; the partial second one was copied for `a`.
        assert!(Arc::ptr_eq(&a.blocks()[0], &b.blocks()[0]));
        assert!(!Arc::ptr_eq(&a.blocks()[1], &b.blocks()[1]));
        assert_eq!(b.end(), 40);
        assert_eq!(b.blocks()[1].k.len(), 8 * row);
        assert_eq!(a.row(40).0, &rows(1, 40, row)[..]);
    }

    #[test]
    fn truncation_forgets_rows_without_touching_a_shared_block() {
        let row = 3;
        let mut a = PagedKv::new(row, 0);
        a.push(&rows(40, 0, row), &rows(40, 100, row));
        let checkpoint = a.clone();
        a.truncate(33);
        assert_eq!((a.end(), a.blocks().len()), (33, 2));
        assert_eq!(a.row(32).0, &rows(1, 32, row)[..]);
        // The checkpoint still holds its 40 rows; the shrunk block was a copy.
        assert_eq!(checkpoint.blocks()[1].k.len(), 8 * row);
        a.push(&rows(2, 7, row), &rows(2, 7, row));
        assert_eq!((a.end(), a.row(33).0), (35, &rows(1, 7, row)[..]));
        assert_eq!(checkpoint.row(33).0, &rows(1, 33, row)[..]);
        a.truncate(32);
        assert_eq!((a.end(), a.blocks().len()), (32, 1));
        a.truncate(0);
        assert_eq!((a.end(), a.blocks().len()), (0, 0));
    }

    #[test]
    fn a_window_frees_whole_blocks_only() {
        let row = 1;
        let mut c = PagedKv::new(row, 10);
        c.push(&rows(100, 10, row), &rows(100, 10, row));
        c.drop_before(60);
        // Blocks start at 10, 42, 74, 106: the first ends before 60, the second does not.
        assert_eq!(c.start(), 42);
        assert_eq!(c.row(60).0, &[60.0][..]);
        assert_eq!(c.blocks().len(), 3);
    }
}
