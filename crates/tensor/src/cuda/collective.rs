//! Collectives between GPUs through NCCL (opened at run time through cudarc, like the other
//! NVIDIA libraries): one communicator per device of a tensor- or data-parallel group, each
//! driven by its own thread, all-reducing on its device's stream.
//!
//! NVLink multicast (NVLS) is turned off before the group is made: this workplace's rules
//! forbid it, and NCCL's ring/tree all-reduce is what the peers were measured with.
use super::{libs, Gpu};
use crate::{Error, Result};
use cudarc::driver::CudaSlice;
use cudarc::nccl::safe::{Comm, ReduceOp};

/// One rank's communicator in a group made by [`Collective::group`].
pub struct Collective {
    comm: Comm,
}

// SAFETY: a communicator is used by one thread at a time (its rank's), which is all NCCL asks
// of a communicator shared between threads; cudarc leaves it !Send only because it holds a
// raw pointer.
unsafe impl Send for Collective {}
unsafe impl Sync for Collective {}

impl Collective {
    /// Communicators for `gpus` (rank i = gpus[i]), each on that GPU's stream; the devices must
    /// be distinct.
    pub fn group(gpus: &[&Gpu]) -> Result<Vec<Collective>> {
        libs::ensure_nccl().map_err(Error::Msg)?;
        let mut ordinals: Vec<usize> = gpus.iter().map(|g| g.ctx.ordinal()).collect();
        ordinals.sort_unstable();
        ordinals.dedup();
        if ordinals.len() != gpus.len() {
            return Err(Error::Msg(
                "a tensor- or data-parallel group needs distinct GPUs, one per rank".into(),
            ));
        }
        if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
            std::env::set_var("NCCL_NVLS_ENABLE", "0");
        }
        let streams = gpus.iter().map(|g| g.stream.clone()).collect();
        let comms = Comm::from_devices(streams).map_err(|e| {
            Error::Msg(format!(
                "NCCL could not make a group of {} GPUs: {e:?}",
                gpus.len()
            ))
        })?;
        Ok(comms.into_iter().map(|comm| Collective { comm }).collect())
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn world(&self) -> usize {
        self.comm.world_size()
    }

    /// x ← Σ over ranks of x, in place, queued on this rank's stream.
    pub fn all_reduce_sum_f32(&self, x: &mut CudaSlice<f32>) -> Result<()> {
        self.comm
            .all_reduce_in_place(x, &ReduceOp::Sum)
            .map_err(|e| Error::Msg(format!("NCCL all-reduce failed: {e:?}")))?;
        Ok(())
    }

    /// out[r · x.len() ..][.. x.len()] ← rank r's x, for every rank, queued on this rank's
    /// stream: every rank then holds all the partials and can add them in an order of its
    /// choosing (an all-reduce's order is NCCL's, and changes with the group's size).
    pub fn all_gather_f32(&self, x: &CudaSlice<f32>, out: &mut CudaSlice<f32>) -> Result<()> {
        if out.len() != x.len() * self.world() {
            return Err(Error::Msg(format!(
                "all-gather of {} values over {} ranks into {}",
                x.len(),
                self.world(),
                out.len()
            )));
        }
        self.comm
            .all_gather(x, out)
            .map_err(|e| Error::Msg(format!("NCCL all-gather failed: {e:?}")))?;
        Ok(())
    }
}
