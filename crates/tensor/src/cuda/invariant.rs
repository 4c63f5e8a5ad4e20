//! Split-invariant arithmetic: a mode of a [`Gpu`] in which a model's logits are the same bits
//! whether it runs whole or cut over tensor-parallel ranks (kernels/gemm_invariant.cu says
//! how). On: every `matmul_nt_bf16*` runs the invariant GEMM instead of cuBLAS, the split-K
//! attention sizes its splits by tokens only, and projections out of heads can sum their
//! K units by the fixed tree ([`Gpu::matmul_units_f32`]). Off (the default): cuBLAS, faster.
use super::{cuda_err, Gpu, GEMM_INVARIANT};
use crate::{Error, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Units a tree sum takes at most (the kernel's recursion depth is 6).
pub const MAX_UNITS: usize = 64;

enum Out<'a> {
    F32(&'a mut CudaSlice<f32>),
    Bf16(&'a mut CudaSlice<bf16>),
}

impl Gpu {
    pub fn set_split_invariant(&self, on: bool) {
        self.invariant.store(on, Ordering::Relaxed);
    }

    pub fn split_invariant(&self) -> bool {
        self.invariant.load(Ordering::Relaxed)
    }

    /// `starts` on the device, uploaded once per distinct list (a projection's units do not
    /// change between calls, and an upload from host memory would stall the stream).
    fn unit_starts(&self, starts: &[usize]) -> Result<Arc<CudaSlice<i32>>> {
        let key: Vec<i32> = starts.iter().map(|&s| s as i32).collect();
        let mut cache = self.unit_starts.lock().unwrap();
        if let Some(d) = cache.get(&key) {
            return Ok(d.clone());
        }
        let d = Arc::new(self.upload(&key)?);
        cache.insert(key, d.clone());
        Ok(d)
    }

    fn gemm_units(
        &self,
        a: &CudaSlice<bf16>,
        b: &CudaSlice<bf16>,
        out: Out,
        (m, n, k): (usize, usize, usize),
        starts: &[usize],
    ) -> Result<()> {
        let units = starts.len().saturating_sub(1);
        if units == 0
            || starts[0] != 0
            || starts[units] != k
            || starts.windows(2).any(|w| w[0] > w[1])
        {
            return Err(Error::Msg(format!(
                "invariant GEMM: unit starts {starts:?} do not cut K = {k} in order"
            )));
        }
        let out_len = match &out {
            Out::F32(c) => c.len() / units.max(1),
            Out::Bf16(c) if units == 1 => c.len(),
            Out::Bf16(_) => {
                return Err(Error::Msg(
                    "invariant GEMM: several units need f32 slabs".into(),
                ))
            }
        };
        if a.len() < m * k || b.len() < n * k || out_len < m * n {
            return Err(Error::Msg(format!(
                "invariant GEMM: buffers of {}, {} values and an output of {} for m={m} n={n} k={k}, {units} units",
                a.len(),
                b.len(),
                out_len
            )));
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let f = self.function(GEMM_INVARIANT, "gemm_units_nt")?;
        let st = self.unit_starts(starts)?;
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(64) as u32, m.div_ceil(64) as u32, units as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let (mi, ni, ki) = (m as i32, n as i32, k as i32);
        let null = 0u64;
        let mut bl = self.stream.launch_builder(&f);
        bl.arg(a).arg(b);
        match out {
            Out::F32(c) => bl.arg(&*c).arg(&null),
            Out::Bf16(c) => bl.arg(&null).arg(&*c),
        };
        bl.arg(&*st).arg(&mi).arg(&ni).arg(&ki);
        // SAFETY: sizes checked above; the kernel writes only the output it is given (the
        // other pointer is null and never touched); `starts` holds units + 1 values.
        unsafe { bl.launch(cfg) }.map_err(|e| cuda_err("invariant GEMM launch", e))?;
        Ok(())
    }

    /// `c[M, N] = a[M, K] · b[N, K]ᵀ` rounded to bf16, by the invariant GEMM.
    pub fn matmul_nt_invariant_bf16(
        &self,
        a: &CudaSlice<bf16>,
        b: &CudaSlice<bf16>,
        c: &mut CudaSlice<bf16>,
        (m, n, k): (usize, usize, usize),
    ) -> Result<()> {
        self.gemm_units(a, b, Out::Bf16(c), (m, n, k), &[0, k])
    }

    /// `c[M, N] = a[M, K] · b[N, K]ᵀ` in f32: K cut at `starts` (0 = starts[0] < ... =
    /// starts[U] = K, U ≤ 64), each unit's partial product by the invariant GEMM, the partials
    /// summed by the fixed tree. One unit: the plain invariant product.
    pub fn matmul_units_f32(
        &self,
        a: &CudaSlice<bf16>,
        b: &CudaSlice<bf16>,
        c: &mut CudaSlice<f32>,
        (m, n, k): (usize, usize, usize),
        starts: &[usize],
    ) -> Result<()> {
        let units = starts.len().saturating_sub(1);
        if units <= 1 {
            return self.gemm_units(a, b, Out::F32(c), (m, n, k), starts);
        }
        let mut parts = self.zeros::<f32>(units * m * n)?;
        self.gemm_units(a, b, Out::F32(&mut parts), (m, n, k), starts)?;
        self.tree_sum_f32(&parts, units, c)
    }

    /// `out[i] = Σ_u parts[u · len + i]` by the fixed tree (left half, floor, + right half),
    /// `len` = out.len(); at most [`MAX_UNITS`] units.
    pub fn tree_sum_f32(
        &self,
        parts: &CudaSlice<f32>,
        units: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.tree_sum(parts, units, Out::F32(out))
    }

    /// [`Gpu::tree_sum_f32`] rounded to bf16.
    pub fn tree_sum_bf16(
        &self,
        parts: &CudaSlice<f32>,
        units: usize,
        out: &mut CudaSlice<bf16>,
    ) -> Result<()> {
        self.tree_sum(parts, units, Out::Bf16(out))
    }

    fn tree_sum(&self, parts: &CudaSlice<f32>, units: usize, out: Out) -> Result<()> {
        let count = match &out {
            Out::F32(o) => o.len(),
            Out::Bf16(o) => o.len(),
        };
        if units == 0 || units > MAX_UNITS || parts.len() < units * count {
            return Err(Error::Msg(format!(
                "tree sum: {units} units (1 to {MAX_UNITS}) of {count} values, {} given",
                parts.len()
            )));
        }
        if count == 0 {
            return Ok(());
        }
        let f = self.function(GEMM_INVARIANT, "tree_sum_f32")?;
        let (ui, ci) = (units as i32, count as i64);
        let null = 0u64;
        let mut bl = self.stream.launch_builder(&f);
        bl.arg(parts);
        match out {
            Out::F32(o) => bl.arg(&*o).arg(&null),
            Out::Bf16(o) => bl.arg(&null).arg(&*o),
        };
        bl.arg(&ui).arg(&ci);
        // SAFETY: `parts` holds units × count values; one output of count values is written.
        unsafe { bl.launch(LaunchConfig::for_num_elems(count as u32)) }
            .map_err(|e| cuda_err("tree sum launch", e))?;
        Ok(())
    }
}

/// The tree [`Gpu::tree_sum_f32`] adds by, on the host: the specification the kernel is
/// tested against, and what a rank's partial must be for the ranks' sum to equal it.
pub fn tree_sum_host(parts: &[f32]) -> f32 {
    match parts.len() {
        0 => 0.0,
        1 => parts[0],
        n => tree_sum_host(&parts[..n / 2]) + tree_sum_host(&parts[n / 2..]),
    }
}
