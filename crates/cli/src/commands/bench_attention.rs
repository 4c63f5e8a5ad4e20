//! `hybrid bench attention`: the GPU flash attention (tensor::cuda::flash) at batch 1, causal,
//! the shapes of ../shared/peers/gpu_anchors.py's SDPA figures (16 heads, head dim 128): time
//! of the forward (and with `--backward`, forward + backward), median over batches of
//! launches timed with a synchronize and a host clock, as JSON.
use super::bench::median;
use anyhow::{bail, Result};
use clap::Args;
use half::bf16;
use std::time::Instant;
use tensor::cuda::flash::{BwdKernel, BwdTiling, FlashDims, FwdTiling, WGMMA_V_STRIDES};
use tensor::cuda::Gpu;

#[derive(Args, Clone, Debug)]
pub struct AttentionArgs {
    /// Sequence lengths (queries = keys, no earlier tokens).
    #[arg(long, value_delimiter = ',', default_value = "4096,16384,65536")]
    pub t: Vec<usize>,
    #[arg(long, default_value_t = 16)]
    pub heads: usize,
    #[arg(long, default_value_t = 128)]
    pub dim: usize,
    /// Also time forward + backward.
    #[arg(long)]
    pub backward: bool,
    /// Time every compiled forward tiling, not only the default.
    #[arg(long)]
    pub tilings: bool,
    /// Also time the kernels apart: mma.sync (default tilings, forward and backward) and wgmma
    /// (Hopper, head dim 128), whichever `fwd_ms` / `fwdbwd_ms` (the defaults) are.
    #[arg(long)]
    pub wgmma: bool,
}

/// Seconds per call of `f`: one warm-up call, then 5 batches of enough calls to fill ~30 ms
/// each (at least 3), synchronized around each batch; the median batch mean.
fn time(gpu: &Gpu, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    gpu.synchronize()?;
    let t0 = Instant::now();
    f()?;
    gpu.synchronize()?;
    let once = t0.elapsed().as_secs_f64();
    let n = ((0.03 / once.max(1e-6)) as usize).clamp(3, 200);
    let mut v = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n {
            f()?;
        }
        gpu.synchronize()?;
        v.push(t.elapsed().as_secs_f64() / n as f64);
    }
    Ok(median(v))
}

pub fn run(a: AttentionArgs) -> Result<()> {
    if FwdTiling::available(a.dim).is_empty() {
        bail!(
            "flash attention is compiled for head dims 64 and 128, not {}",
            a.dim
        );
    }
    let gpu = Gpu::open(0)?;
    let (h, d) = (a.heads, a.dim);
    let scale = (d as f32).powf(-0.5);
    let mut rows = vec![];
    for &t in &a.t {
        let dims = FlashDims {
            b: 1,
            t,
            s: t,
            h,
            hk: h,
            d,
        };
        let n = t * h * d;
        // Random normal inputs (not zeros: they run faster than real data).
        let mut rng = tensor::rng::SplitMix64::new(t as u64);
        let mut randn = |n: usize| -> Vec<bf16> {
            rng.normals(n, 1.0)
                .into_iter()
                .map(bf16::from_f32)
                .collect()
        };
        let q = gpu.upload(&randn(n))?;
        let k = gpu.upload(&randn(n))?;
        let v = gpu.upload(&randn(n))?;
        let d_o = gpu.upload(&randn(n))?;
        let mut o = gpu.zeros::<bf16>(n)?;
        let mut lse = gpu.zeros::<f32>(t * h)?;
        let flops = 4.0 * (t as f64) * (t as f64) / 2.0 * d as f64 * h as f64;
        let default = FwdTiling::available(d)[0];
        let tilings: Vec<FwdTiling> = if a.tilings {
            FwdTiling::available(d).to_vec()
        } else {
            vec![default]
        };
        let mut per_tiling = vec![];
        let mut mma_s = f64::NAN;
        let uses_wgmma = gpu.flash_fwd_uses_wgmma(d);
        if a.tilings || a.wgmma || !uses_wgmma {
            for tiling in tilings {
                let s = time(&gpu, || {
                    Ok(gpu.flash_attn_fwd_bf16_tiled(
                        &q, &k, &v, &mut o, &mut lse, dims, scale, None, tiling,
                    )?)
                })?;
                if tiling == default {
                    mma_s = s;
                }
                per_tiling.push(serde_json::json!({"bm": tiling.bm, "bn": tiling.bn, "warps": tiling.warps, "fwd_ms": s * 1e3, "fwd_tflops": flops / s / 1e12}));
            }
        }
        // The default forward (what models and the backward's timing below use).
        let fwd_s = if uses_wgmma {
            time(&gpu, || {
                Ok(gpu.flash_attn_fwd_bf16(&q, &k, &v, &mut o, &mut lse, dims, scale, None)?)
            })?
        } else {
            mma_s
        };
        let mut row = serde_json::json!({"t": t, "fwd_kernel": if uses_wgmma { "wgmma" } else { "mma.sync" }, "fwd_ms": fwd_s * 1e3, "fwd_tflops": flops / fwd_s / 1e12});
        if a.tilings {
            row["tilings"] = serde_json::json!(per_tiling);
        }
        if a.wgmma {
            row["mma_sync_fwd_ms"] = serde_json::json!(mma_s * 1e3);
            row["mma_sync_fwd_tflops"] = serde_json::json!(flops / mma_s / 1e12);
            let s = time(&gpu, || {
                Ok(gpu.flash_attn_fwd_bf16_wgmma(
                    &q,
                    &k,
                    &v,
                    &mut o,
                    &mut lse,
                    dims,
                    scale,
                    None,
                    WGMMA_V_STRIDES,
                )?)
            })?;
            row["wgmma_fwd_ms"] = serde_json::json!(s * 1e3);
            row["wgmma_fwd_tflops"] = serde_json::json!(flops / s / 1e12);
        }
        if a.backward {
            let mut dq = gpu.zeros::<bf16>(n)?;
            let mut dk = gpu.zeros::<bf16>(n)?;
            let mut dv = gpu.zeros::<bf16>(n)?;
            // The default backward (wgmma on Hopper at head dim 128, else the first tiling),
            // then every tiling (--tilings) or, with --wgmma, the mma.sync one beside wgmma.
            let bdefault = BwdTiling::available(d)[0];
            let uses_wgmma = gpu.flash_bwd_uses_wgmma(d);
            let default = if uses_wgmma {
                BwdKernel::Wgmma
            } else {
                BwdKernel::MmaSync(bdefault)
            };
            let mut kernels = vec![default];
            if a.tilings {
                kernels.extend(
                    BwdTiling::available(d)
                        .iter()
                        .map(|&t| BwdKernel::MmaSync(t)),
                );
            } else if a.wgmma && uses_wgmma {
                kernels.push(BwdKernel::MmaSync(bdefault));
            }
            kernels.dedup();
            let mut per_tiling = vec![];
            for kernel in kernels {
                let s = time(&gpu, || {
                    gpu.flash_attn_fwd_bf16(&q, &k, &v, &mut o, &mut lse, dims, scale, None)?;
                    Ok(gpu.flash_attn_bwd_bf16_with(
                        &q, &k, &v, &o, &d_o, &lse, &mut dq, &mut dk, &mut dv, dims, scale, None,
                        kernel,
                    )?)
                })?;
                let bwd_tflops = 2.5 * flops / (s - fwd_s) / 1e12;
                if kernel == default {
                    row["bwd_kernel"] =
                        serde_json::json!(if uses_wgmma { "wgmma" } else { "mma.sync" });
                    row["fwdbwd_ms"] = serde_json::json!(s * 1e3);
                    row["bwd_ms"] = serde_json::json!((s - fwd_s) * 1e3);
                    row["bwd_tflops"] = serde_json::json!(bwd_tflops);
                }
                if let BwdKernel::MmaSync(tiling) = kernel {
                    if a.tilings {
                        per_tiling.push(serde_json::json!({"bm": tiling.bm, "bn": tiling.bn, "warps": tiling.warps, "fwdbwd_ms": s * 1e3, "bwd_tflops": bwd_tflops}));
                    }
                    if uses_wgmma && tiling == bdefault {
                        row["mma_sync_fwdbwd_ms"] = serde_json::json!(s * 1e3);
                        row["mma_sync_bwd_tflops"] = serde_json::json!(bwd_tflops);
                    }
                }
            }
            if a.tilings {
                row["bwd_tilings"] = serde_json::json!(per_tiling);
            }
        }
        rows.push(row);
    }
    println!(
        "{}",
        serde_json::json!({"bench": "flash_attention", "device": gpu.name, "heads": h, "head_dim": d, "batch": 1, "causal": true, "results": rows})
    );
    Ok(())
}
