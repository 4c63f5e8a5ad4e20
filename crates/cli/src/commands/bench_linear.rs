//! `hybrid bench chunk-linear`: the chunked GDN / KDA forward on the GPU at batch 1 (the shapes
//! of ../shared/peers/gpu_anchors.py: 16 heads, head dim 128, T = 4K, 16K, 64K), JSON out.
//! Inputs follow the peer's recipe: q and v random (unit variance), k L2-normalised, β = sigmoid(U(0,1)),
//! g = logsigmoid(U(0,1)) per head (GDN) or per channel (KDA).
use super::bench::median;
use anyhow::{bail, Result};
use clap::Args;
use cudarc::driver::CudaSlice;
use half::bf16;
use std::time::Instant;
use tensor::cuda::{ChunkDims, Gpu};
use tensor::rng::SplitMix64;

#[derive(Args, Clone, Debug)]
pub struct ChunkLinearArgs {
    #[arg(long, value_delimiter = ',', default_value = "4096,16384,65536")]
    pub t: Vec<usize>,
    #[arg(long, default_value_t = 16)]
    pub heads: usize,
    #[arg(long, default_value_t = 128)]
    pub head_dim: usize,
    /// gdn, kda, gla (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "gdn,kda")]
    pub kind: Vec<String>,
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
}

/// The shared checks of `bench chunk-linear` and `bench chunk-linear-bwd`.
pub(crate) fn check_args(kinds: &[String], reps: usize) -> Result<()> {
    for k in kinds {
        if !["gdn", "kda", "gla"].contains(&k.as_str()) {
            bail!("--kind takes gdn, kda or gla; got {k:?}");
        }
    }
    if reps == 0 {
        bail!("--reps must be at least 1");
    }
    Ok(())
}

/// q, k, v and β of one length on the GPU, in the peer's recipe (module doc).
pub(crate) struct Inputs {
    pub d: ChunkDims,
    pub q: CudaSlice<bf16>,
    pub k: CudaSlice<bf16>,
    pub v: CudaSlice<bf16>,
    pub beta: CudaSlice<f32>,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Unit-variance uniforms: timing does not depend on the distribution, and 400M normals
/// would cost the device machine's CPU most of a minute.
pub(crate) fn unit_bf16(n: usize, rng: &mut SplitMix64) -> Vec<bf16> {
    (0..n)
        .map(|_| bf16::from_f32((rng.uniform() as f32 - 0.5) * 3.464))
        .collect()
}

pub(crate) fn inputs(
    gpu: &Gpu,
    t: usize,
    h: usize,
    dk: usize,
    rng: &mut SplitMix64,
) -> Result<Inputs> {
    let n = t * h * dk;
    let q = unit_bf16(n, rng);
    let mut k: Vec<f32> = unit_bf16(n, rng).iter().map(|x| x.to_f32()).collect();
    for row in k.chunks_exact_mut(dk) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    let k: Vec<bf16> = k.iter().map(|&x| bf16::from_f32(x)).collect();
    let v = unit_bf16(n, rng);
    let beta: Vec<f32> = (0..t * h).map(|_| sigmoid(rng.uniform()) as f32).collect();
    Ok(Inputs {
        d: ChunkDims {
            b: 1,
            t,
            h,
            hv: h,
            k: dk,
            v: dk,
        },
        q: gpu.upload(&q)?,
        k: gpu.upload(&k)?,
        v: gpu.upload(&v)?,
        beta: gpu.upload(&beta)?,
    })
}

/// Log decays for `kind`: per head for GDN ([T, H]), per key channel otherwise; and whether
/// they are per head.
pub(crate) fn decays(
    gpu: &Gpu,
    kind: &str,
    d: ChunkDims,
    rng: &mut SplitMix64,
) -> Result<(CudaSlice<f32>, bool)> {
    let per_head = kind == "gdn";
    let n = d.t * d.hv * if per_head { 1 } else { d.k };
    let g: Vec<f32> = (0..n).map(|_| sigmoid(rng.uniform()).ln() as f32).collect();
    Ok((gpu.upload(&g)?, per_head))
}

pub fn run(a: ChunkLinearArgs) -> Result<()> {
    check_args(&a.kind, a.reps)?;
    let gpu = Gpu::open(0)?;
    let (h, dk) = (a.heads, a.head_dim);
    let mut rows = vec![];
    let mut rng = SplitMix64::new(7);
    for &t in &a.t {
        let n = t * h * dk;
        let x = inputs(&gpu, t, h, dk, &mut rng)?;
        let (d, qd, kd, vd, bd) = (x.d, &x.q, &x.k, &x.v, &x.beta);
        let mut scratch = gpu.chunk_linear_scratch(d)?;
        let mut state = gpu.zeros::<f32>(h * dk * dk)?;
        let mut o = gpu.zeros::<bf16>(n)?;
        for kind in &a.kind {
            let (gd, per_head) = decays(&gpu, kind, d, &mut rng)?;
            let beta_arg = (kind != "gla").then_some(bd);
            let scale = (dk as f32).powf(-0.5);
            for _ in 0..3 {
                gpu.chunk_linear_fwd(
                    d,
                    qd,
                    kd,
                    vd,
                    &gd,
                    per_head,
                    beta_arg,
                    scale,
                    &mut state,
                    &mut o,
                    &mut scratch,
                )?;
            }
            gpu.synchronize()?;
            let mut times = vec![];
            for _ in 0..a.reps {
                let t0 = Instant::now();
                gpu.chunk_linear_fwd(
                    d,
                    qd,
                    kd,
                    vd,
                    &gd,
                    per_head,
                    beta_arg,
                    scale,
                    &mut state,
                    &mut o,
                    &mut scratch,
                )?;
                gpu.synchronize()?;
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            let ms = median(times);
            // One more run, synchronised after each kernel, for the split between them.
            scratch.timings = Some(vec![]);
            gpu.chunk_linear_fwd(
                d,
                qd,
                kd,
                vd,
                &gd,
                per_head,
                beta_arg,
                scale,
                &mut state,
                &mut o,
                &mut scratch,
            )?;
            let split: serde_json::Map<String, serde_json::Value> = scratch
                .timings
                .take()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            rows.push(serde_json::json!({"kind": kind, "t": t, "ms": ms, "mtok_per_s": t as f64 / ms / 1e3, "kernels": split}));
        }
    }
    println!(
        "{}",
        serde_json::json!({"bench": "chunk_linear_fwd", "device": gpu.name, "heads": h, "head_dim": dk, "batch": 1, "results": rows})
    );
    Ok(())
}
