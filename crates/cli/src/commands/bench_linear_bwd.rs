//! `hybrid bench chunk-linear-bwd`: the chunked GDN / KDA forward (keeping its chunk-entry
//! states) and backward on the GPU at batch 1 (16 heads, head dim 128, T = 4K, 16K, 64K),
//! JSON out. Inputs as in `bench chunk-linear`; the output gradient is random.
use anyhow::{bail, Result};
use clap::Args;
use half::bf16;
use std::time::Instant;
use tensor::cuda::{ChunkDims, Gpu};

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: ChunkLinearBwdArgs) -> Result<()> {
    for k in &a.kind {
        if !["gdn", "kda", "gla"].contains(&k.as_str()) {
            bail!("--kind takes gdn, kda or gla; got {k:?}");
        }
    }
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let gpu = Gpu::open(0)?;
    let (h, dk) = (a.heads, a.head_dim);
    let mut rows = vec![];
    let mut rng = tensor::rng::SplitMix64::new(7);
    for &t in &a.t {
        let n = t * h * dk;
        let mut unit = || (rng.uniform() as f32 - 0.5) * 3.464;
        let q: Vec<bf16> = (0..n).map(|_| bf16::from_f32(unit())).collect();
        let mut k: Vec<f32> = (0..n).map(|_| unit()).collect();
        for row in k.chunks_exact_mut(dk) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
            row.iter_mut().for_each(|x| *x /= norm);
        }
        let k: Vec<bf16> = k.iter().map(|&x| bf16::from_f32(x)).collect();
        let v: Vec<bf16> = (0..n).map(|_| bf16::from_f32(unit())).collect();
        let d_o: Vec<bf16> = (0..n).map(|_| bf16::from_f32(unit())).collect();
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let beta: Vec<f32> = (0..t * h).map(|_| sig(rng.uniform()) as f32).collect();
        let (qd, kd, vd, dod, bd) = (
            gpu.upload(&q)?,
            gpu.upload(&k)?,
            gpu.upload(&v)?,
            gpu.upload(&d_o)?,
            gpu.upload(&beta)?,
        );
        let d = ChunkDims {
            b: 1,
            t,
            h,
            hv: h,
            k: dk,
            v: dk,
        };
        let mut scratch = gpu.chunk_linear_scratch(d)?;
        scratch.keep_states(&gpu)?;
        let h0 = gpu.zeros::<f32>(h * dk * dk)?;
        let mut state = gpu.zeros::<f32>(h * dk * dk)?;
        let mut o = gpu.zeros::<bf16>(n)?;
        for kind in &a.kind {
            let per_head = kind == "gdn";
            let gn = if per_head { t * h } else { n };
            let g: Vec<f32> = (0..gn).map(|_| sig(rng.uniform()).ln() as f32).collect();
            let gd = gpu.upload(&g)?;
            let beta_arg = (kind != "gla").then_some(&bd);
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
                    &qd,
                    &kd,
                    &vd,
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
                    d, &qd, &kd, &vd, &gd, per_head, beta_arg, scale, &scratch, &dod, None,
                    &mut grads,
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
                d, &qd, &kd, &vd, &gd, per_head, beta_arg, scale, &scratch, &dod, None, &mut grads,
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
