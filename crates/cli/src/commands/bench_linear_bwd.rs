//! `hybrid bench chunk-linear-bwd`: the chunked GDN / KDA forward (keeping its chunk-entry
//! states) and backward on the GPU at batch 1 (16 heads, head dim 128, T = 4K, 16K, 64K),
//! JSON out. Inputs as in `bench chunk-linear`; the output gradient is random.
use super::bench::median;
use super::bench_linear::{check_args, decays, inputs, unit_bf16};
use anyhow::Result;
use clap::Args;
use half::bf16;
use std::time::Instant;
use tensor::cuda::Gpu;
use tensor::rng::SplitMix64;

#[derive(Args, Clone, Debug)]
pub struct ChunkLinearBwdArgs {
    #[arg(long, value_delimiter = ',', default_value = "4096,16384,65536")]
    pub t: Vec<usize>,
    #[arg(long, default_value_t = 16)]
    pub heads: usize,
    #[arg(long, default_value_t = 128)]
    pub head_dim: usize,
    /// gdn, kda, gla (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "gdn,kda")]
    pub kind: Vec<String>,
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
}

pub fn run(a: ChunkLinearBwdArgs) -> Result<()> {
    check_args(&a.kind, a.reps)?;
    let gpu = Gpu::open(0)?;
    let (h, dk) = (a.heads, a.head_dim);
    let mut rows = vec![];
    let mut rng = SplitMix64::new(7);
    for &t in &a.t {
        let n = t * h * dk;
        let x = inputs(&gpu, t, h, dk, &mut rng)?;
        let (d, qd, kd, vd, bd) = (x.d, &x.q, &x.k, &x.v, &x.beta);
        let dod = gpu.upload(&unit_bf16(n, &mut rng))?;
        let mut scratch = gpu.chunk_linear_scratch(d)?;
        scratch.keep_states(&gpu)?;
        let h0 = gpu.zeros::<f32>(h * dk * dk)?;
        let mut state = gpu.zeros::<f32>(h * dk * dk)?;
        let mut o = gpu.zeros::<bf16>(n)?;
        for kind in &a.kind {
            let (gd, per_head) = decays(&gpu, kind, d, &mut rng)?;
            let beta_arg = (kind != "gla").then_some(bd);
            let scale = (dk as f32).powf(-0.5);
            let mut grads = gpu.chunk_linear_grads(d, per_head)?;
            let (mut fwd_t, mut bwd_t, mut both_t) = (vec![], vec![], vec![]);
            for rep in 0..a.reps + 2 {
                gpu.stream
                    .memcpy_dtod(&h0, &mut state)
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                gpu.synchronize()?;
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
                let t1 = Instant::now();
                gpu.chunk_linear_bwd(
                    d, qd, kd, vd, &gd, per_head, beta_arg, scale, &scratch, &dod, None, &mut grads,
                )?;
                gpu.synchronize()?;
                let t2 = Instant::now();
                if rep >= 2 {
                    fwd_t.push((t1 - t0).as_secs_f64() * 1e3);
                    bwd_t.push((t2 - t1).as_secs_f64() * 1e3);
                    both_t.push((t2 - t0).as_secs_f64() * 1e3);
                }
            }
            let (fwd_ms, bwd_ms, fwdbwd_ms) = (median(fwd_t), median(bwd_t), median(both_t));
            // One more backward, synchronised after each kernel, for the split between them.
            grads.timings = Some(vec![]);
            gpu.chunk_linear_bwd(
                d, qd, kd, vd, &gd, per_head, beta_arg, scale, &scratch, &dod, None, &mut grads,
            )?;
            let split: serde_json::Map<String, serde_json::Value> = grads
                .timings
                .take()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            rows.push(serde_json::json!({
                "kind": kind, "t": t, "fwd_ms": fwd_ms, "bwd_ms": bwd_ms, "fwdbwd_ms": fwdbwd_ms,
                "fwdbwd_over_3x_fwd": fwdbwd_ms / (3.0 * fwd_ms), "bwd_kernels": split
            }));
        }
    }
    println!(
        "{}",
        serde_json::json!({"bench": "chunk_linear_fwd_bwd", "device": gpu.name, "heads": h, "head_dim": dk, "batch": 1, "forward_keeps_states": true, "results": rows})
    );
    Ok(())
}
