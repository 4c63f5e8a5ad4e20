//! The GPU model on one device or split over several (tensor parallelism): rank r holds
//! [`super::tensor_parallel::shard`]'s slice r on device `devices[r]`, and every call runs all
//! ranks at once, one thread each (a batch-1 decode step is bound by kernel launches, so one
//! thread launching for every device would serialise them); the ranks meet only in NCCL's
//! all-reduces inside the forward. Rank 0's logits are the model's.
//!
//! With one device this is [`GpuHybrid`] itself, no threads.
use super::gpu::{GpuHybrid, GpuHybridState, GpuLanes};
use super::{tensor_parallel, HybridConfig, HybridModel};
use anyhow::{bail, Result};
use cudarc::driver::CudaSlice;
use tensor::cuda::{Collective, Gpu};

pub struct GpuTp {
    ranks: Vec<GpuHybrid>,
    /// The whole model's configuration (a rank's own holds its slice of the MLP).
    pub config: HybridConfig,
}

/// Every rank's caches for the same sequences.
pub struct GpuTpState {
    ranks: Vec<GpuHybridState>,
}

/// Every rank's lanes of one speculative verification.
pub struct GpuTpLanes(Vec<GpuLanes>);

impl GpuTpState {
    pub fn len(&self) -> usize {
        self.ranks[0].len
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn capacity(&self) -> usize {
        self.ranks[0].capacity
    }
    pub fn batch(&self) -> usize {
        self.ranks[0].batch
    }
    /// A copy with room for `capacity` tokens on every rank (see [`GpuHybridState::resized`]).
    pub fn resized(&self, capacity: usize) -> Result<GpuTpState> {
        Ok(GpuTpState {
            ranks: self
                .ranks
                .iter()
                .map(|r| r.resized(capacity))
                .collect::<Result<_>>()?,
        })
    }
    /// Device bytes each layer's caches hold, summed over the ranks.
    pub fn layer_bytes(&self) -> Vec<usize> {
        let mut out = self.ranks[0].layer_bytes();
        for r in &self.ranks[1..] {
            for (o, b) in out.iter_mut().zip(r.layer_bytes()) {
                *o += b;
            }
        }
        out
    }
}

impl GpuTp {
    /// The model on `devices` (one: whole; several: one slice each, joined by NCCL).
    pub fn new(cpu: &HybridModel, devices: &[usize]) -> Result<Self> {
        let world = devices.len();
        let ranks = match devices {
            [] => bail!("no GPU given"),
            [d] => vec![GpuHybrid::new(cpu, *d)?],
            _ => {
                tensor_parallel::check(cpu, world)?;
                let mut ranks = vec![];
                for (r, &d) in devices.iter().enumerate() {
                    // One slice at a time on the host: a large model's copies add up.
                    let slice = tensor_parallel::shard(cpu, r, world)?;
                    ranks.push(GpuHybrid::new(&slice, d)?);
                }
                let gpus: Vec<&Gpu> = ranks.iter().map(|r| &r.gpu).collect();
                let comms = Collective::group(&gpus)?;
                for (r, c) in ranks.iter_mut().zip(comms) {
                    r.join(c, cpu.config.intermediate_size);
                }
                ranks
            }
        };
        Ok(GpuTp {
            ranks,
            config: cpu.config.clone(),
        })
    }

    pub fn world(&self) -> usize {
        self.ranks.len()
    }

    /// Split-invariant arithmetic on every rank ([`GpuHybrid::set_split_invariant`]): the
    /// logits are then the same bits as the model's whole on one GPU (also in this mode).
    /// The tree the sums follow is cut evenly only by a power-of-two number of ranks.
    pub fn set_split_invariant(&self, on: bool) -> Result<()> {
        if on {
            tensor_parallel::check_split_invariant(self.world())?;
        }
        for r in &self.ranks {
            r.set_split_invariant(on);
        }
        Ok(())
    }

    /// Rank 0's device: where the logits are.
    pub fn gpu(&self) -> &Gpu {
        &self.ranks[0].gpu
    }

    pub fn new_state(&self, batch: usize, capacity: usize) -> Result<GpuTpState> {
        Ok(GpuTpState {
            ranks: self
                .ranks
                .iter()
                .map(|r| r.new_state(batch, capacity))
                .collect::<Result<_>>()?,
        })
    }

    /// Runs `f` on every rank with its state, all at once; the first error wins.
    fn each<R: Send>(
        &self,
        states: &mut [GpuHybridState],
        f: impl Fn(&GpuHybrid, &mut GpuHybridState) -> Result<R> + Sync,
    ) -> Result<Vec<R>> {
        if states.len() != self.ranks.len() {
            bail!(
                "a state of {} ranks for a model of {}",
                states.len(),
                self.ranks.len()
            );
        }
        let mut pairs: Vec<(&GpuHybrid, &mut GpuHybridState)> =
            self.ranks.iter().zip(states.iter_mut()).collect();
        tensor::cuda::each_on_its_gpu(&mut pairs, |(r, _)| &r.gpu.ctx, |_, (r, s)| f(r, s))
            .into_iter()
            .collect()
    }

    /// Runs tokens [B, T] after what `state` holds; returns logits [B·T, V] (f32, on rank 0's
    /// GPU).
    pub fn forward(&self, tokens: &[u32], state: &mut GpuTpState) -> Result<CudaSlice<f32>> {
        let mut out = self.each(&mut state.ranks, |r, s| r.forward(tokens, s))?;
        Ok(out.swap_remove(0))
    }

    /// Speculative verification (see [`GpuHybrid::forward_lanes`]) on every rank.
    pub fn forward_lanes(
        &self,
        tokens: &[u32],
        state: &mut GpuTpState,
    ) -> Result<(CudaSlice<f32>, GpuTpLanes)> {
        let out = self.each(&mut state.ranks, |r, s| r.forward_lanes(tokens, s))?;
        let mut logits = None;
        let mut lanes = vec![];
        for (l, lane) in out {
            logits.get_or_insert(l);
            lanes.push(lane);
        }
        Ok((logits.expect("one rank at least"), GpuTpLanes(lanes)))
    }

    /// Keeps the first `keep` tokens of the last verification on every rank.
    pub fn commit(&self, state: &mut GpuTpState, lanes: GpuTpLanes, keep: usize) -> Result<()> {
        for ((r, s), l) in self.ranks.iter().zip(&mut state.ranks).zip(lanes.0) {
            r.gpu
                .ctx
                .bind_to_thread()
                .map_err(|e| anyhow::anyhow!("binding GPU {:?}", e))?;
            r.commit(s, l, keep)?;
        }
        Ok(())
    }

    pub fn check_lanes(&self) -> Result<()> {
        self.ranks[0].check_lanes()
    }

    /// Waits for every rank's queued work.
    pub fn synchronize(&self) -> Result<()> {
        for r in &self.ranks {
            r.gpu.synchronize()?;
        }
        Ok(())
    }
}
