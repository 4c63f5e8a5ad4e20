//! One host thread per GPU, for work split over several (tensor-parallel ranks, data-parallel
//! replicas): a batch-1 step is bound by kernel launches, so one thread launching for every
//! device would serialise them, and NCCL's collectives need every rank's launches queued at
//! once anyway.
use super::Error;
use cudarc::driver::CudaContext;
use std::sync::Arc;

/// Runs `f(i, &mut items[i])` for every item at once, each on a thread of its own with the
/// context `ctx(item)` bound to it (cuBLAS and our launches use the thread's current context).
/// A single item runs on the calling thread. Results come back in item order; a thread that
/// panics gives an error naming its item.
pub fn each_on_its_gpu<T, R, E>(
    items: &mut [T],
    ctx: impl Fn(&T) -> &Arc<CudaContext> + Sync,
    f: impl Fn(usize, &mut T) -> Result<R, E> + Sync,
) -> Vec<Result<R, E>>
where
    T: Send,
    R: Send,
    E: Send + From<Error>,
{
    if let [one] = items {
        return vec![f(0, one)];
    }
    let (f, ctx) = (&f, &ctx);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .iter_mut()
            .enumerate()
            .map(|(i, item)| {
                s.spawn(move || {
                    ctx(item)
                        .bind_to_thread()
                        .map_err(|e| E::from(Error::Msg(format!("binding GPU {i}: {e:?}"))))?;
                    f(i, item)
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(E::from(Error::Msg(format!(
                        "the thread driving GPU {i} panicked"
                    ))))
                })
            })
            .collect()
    })
}
