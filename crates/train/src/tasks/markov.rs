//! A Markovian reasoning task and its control, for showing Delethink on a model trained from
//! scratch (research/delethink-mqar.md §5; the "Markovian demonstration").
//!
//! The query lists a random cyclic permutation f of V values as (k, f(k)) pairs and a start x0. The
//! chain of thought walks the chain, restating its state at every step: `c1 x1 c2 x2 … cS xS`
//! with counter tokens c_i and x_i = f(x_{i−1}), then `ANS a EOS`. Each step needs only the
//! last step and the query — which Delethink always keeps — so the task is Markovian.
//! - [`Answer::Last`]: a = x_S, in the last step (the Markovian task);
//! - [`Answer::Middle`]: a = x_{S/2}, which a chunk boundary has deleted by the end (the
//!   control: Delethink must fail it).
//!
//! Training sequences are the whole trace after the query, or (with `chunked`) what Delethink
//! will show the model: q ⊕ head ⊕ carryover followed by that chunk's tokens, so that the model
//! has seen the boundary contexts it will be asked to continue.
use super::rng::SplitMix64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Answer {
    Last,
    Middle,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MarkovTask {
    pub values: usize,
    pub steps: usize,
    pub answer: Answer,
}

/// One example: the query and the whole correct trace (ending in `ANS a EOS`).
pub struct Example {
    pub query: Vec<u32>,
    pub trace: Vec<u32>,
    pub answer: u32,
}

/// Delethink's shape, for training on the contexts it will produce.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Chunking {
    pub chunk: usize,
    pub carryover: usize,
    pub head: usize,
}

impl MarkovTask {
    pub fn counter(&self, i: usize) -> u32 {
        (self.values + i - 1) as u32
    }
    pub fn bos(&self) -> u32 {
        (self.values + self.steps) as u32
    }
    pub fn sep(&self) -> u32 {
        self.bos() + 1
    }
    pub fn ans(&self) -> u32 {
        self.bos() + 2
    }
    pub fn eos(&self) -> u32 {
        self.bos() + 3
    }
    pub fn vocab(&self) -> usize {
        self.values + self.steps + 4
    }
    /// Query + trace length.
    pub fn seq_len(&self) -> usize {
        (2 * self.values + 3) + (2 * self.steps + 3)
    }

    pub fn example(&self, rng: &mut SplitMix64) -> Example {
        let v = self.values;
        // One cycle through all V values in a random order: the chain never repeats within
        // V steps, so no earlier state can be read off a later one (with short cycles the
        // control's middle state would often reappear in the carryover).
        let mut order: Vec<u32> = (0..v as u32).collect();
        rng.shuffle(&mut order);
        let mut f = vec![0u32; v];
        for i in 0..v {
            f[order[i] as usize] = order[(i + 1) % v];
        }
        let mut keys: Vec<u32> = (0..v as u32).collect();
        rng.shuffle(&mut keys);
        let mut query = vec![self.bos()];
        for &k in &keys {
            query.extend([k, f[k as usize]]);
        }
        let x0 = rng.below(v as u64) as u32;
        query.extend([x0, self.sep()]);
        let mut trace = vec![];
        let (mut x, mut xs) = (x0, vec![]);
        for i in 1..=self.steps {
            x = f[x as usize];
            xs.push(x);
            trace.extend([self.counter(i), x]);
        }
        let answer = match self.answer {
            Answer::Last => xs[self.steps - 1],
            Answer::Middle => xs[self.steps / 2 - 1],
        };
        trace.extend([self.ans(), answer, self.eos()]);
        Example {
            query,
            trace,
            answer,
        }
    }

    /// A training batch [B, seq_len] with next-token labels on the trace only (-100
    /// elsewhere); with `chunked`, half the rows are Delethink boundary contexts.
    pub fn batch(&self, b: usize, seed: u64, chunked: Option<Chunking>) -> (Vec<u32>, Vec<i64>) {
        let n = self.seq_len();
        let mut rng = SplitMix64::new(seed);
        let (mut inputs, mut labels) = (vec![], vec![]);
        for row in 0..b {
            let e = self.example(&mut rng);
            let (ctx, out): (Vec<u32>, Vec<u32>) = match chunked {
                Some(c) if row % 2 == 1 => {
                    // Chunk l >= 2 of a correct trace: its context and its tokens.
                    let step = c.chunk - c.carryover;
                    let later = e.trace.len().saturating_sub(c.chunk).div_ceil(step.max(1));
                    let l = 2 + rng.below(later.max(1) as u64) as usize;
                    let start = (c.chunk + (l - 2) * step).min(e.trace.len() - 1);
                    let mut ctx = e.query.clone();
                    ctx.extend(&e.trace[..c.head.min(e.trace.len())]);
                    ctx.extend(&e.trace[start.saturating_sub(c.carryover)..start]);
                    let end = (start + step).min(e.trace.len());
                    (ctx, e.trace[start..end].to_vec())
                }
                _ => (e.query.clone(), e.trace.clone()),
            };
            let mut seq = ctx.clone();
            seq.extend(&out);
            let mut lab = vec![-100i64; seq.len()];
            for (p, &t) in out.iter().enumerate() {
                lab[ctx.len() + p - 1] = t as i64;
            }
            seq.resize(n, self.eos());
            lab.resize(n, -100);
            seq.truncate(n);
            lab.truncate(n);
            inputs.extend(seq);
            labels.extend(lab);
        }
        (inputs, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_walks_the_permutation_and_answers() {
        for answer in [Answer::Last, Answer::Middle] {
            let t = MarkovTask {
                values: 8,
                steps: 6,
                answer,
            };
            let e = t.example(&mut SplitMix64::new(3));
            assert_eq!(e.query.len() + e.trace.len(), t.seq_len());
            // One cycle: the states of the trace are all different (steps < values).
            let xs: std::collections::BTreeSet<u32> =
                e.trace[..12].iter().skip(1).step_by(2).copied().collect();
            assert_eq!(xs.len(), 6);
            let f = |k: u32| {
                let i = e.query[1..17].chunks(2).position(|p| p[0] == k).unwrap();
                e.query[1 + 2 * i + 1]
            };
            let mut x = e.query[17];
            for i in 1..=6 {
                assert_eq!(e.trace[2 * (i - 1)], t.counter(i));
                x = f(x);
                assert_eq!(e.trace[2 * (i - 1) + 1], x);
            }
            let want = if answer == Answer::Last {
                e.trace[11]
            } else {
                e.trace[5]
            };
            assert_eq!(&e.trace[12..], &[t.ans(), want, t.eos()]);
        }
    }

    #[test]
    fn chunked_rows_are_boundary_contexts_with_labels_on_the_chunk() {
        let t = MarkovTask {
            values: 8,
            steps: 10,
            answer: Answer::Last,
        };
        let c = Chunking {
            chunk: 8,
            carryover: 4,
            head: 2,
        };
        let (inp, lab) = t.batch(2, 5, Some(c));
        let n = t.seq_len();
        let (row, labels) = (&inp[n..2 * n], &lab[n..2 * n]);
        let q = 2 * 8 + 3;
        // Query, head (c1 x1), then a carryover that starts with a counter token.
        assert_eq!(row[q], t.counter(1));
        assert!(
            row[q + 2] >= 8 && row[q + 2] < 18,
            "carryover starts at a counter"
        );
        let first_label = labels.iter().position(|&l| l >= 0).unwrap();
        assert_eq!(first_label, q + 2 + 4 - 1);
        assert!(labels.iter().filter(|&&l| l >= 0).count() <= 4);
    }
}
