//! `hybrid device`: which NVIDIA libraries were found where, and the GPUs they expose (JSON).
//! `hybrid bench gemm`: cuBLAS bf16 GEMM throughput on a GPU.
use anyhow::{anyhow, Result};
use clap::Args;
use half::bf16;
use std::time::Instant;
use tensor::cuda::{libs, Gpu};

pub fn info() -> Result<()> {
    let libs_found = libs::ensure_loaded().map_err(|e| anyhow!(e))?;
    let gpu = Gpu::open(0)?;
    let j = serde_json::json!({
        "libraries": libs_found.iter().map(|(n, f)| (n.clone(), format!("{f:?}"))).collect::<std::collections::BTreeMap<_, _>>(),
        "device": gpu.name,
        "compute_capability": format!("{}.{}", gpu.compute_capability.0, gpu.compute_capability.1),
        "memory_gib": gpu.total_mem as f64 / (1u64 << 30) as f64,
        "kernel_cache": tensor::cuda::kernel_cache_dir().display().to_string(),
    });
    println!("{}", serde_json::to_string_pretty(&j)?);
    Ok(())
}

#[derive(Args, Clone, Debug)]
pub struct GemmArgs {
    /// Square sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "4096,8192")]
    pub sizes: Vec<usize>,
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
}

pub fn bench_gemm(a: GemmArgs) -> Result<()> {
    let gpu = Gpu::open(0)?;
    let mut rows = vec![];
    for &n in &a.sizes {
        let host: Vec<bf16> = (0..n * n)
            .map(|i| bf16::from_f32(((i % 13) as f32 - 6.0) / 8.0))
            .collect();
        let x = gpu.upload(&host)?;
        let y = gpu.upload(&host)?;
        let mut c = gpu.zeros::<bf16>(n * n)?;
        for _ in 0..3 {
            gpu.matmul_nt_bf16(&x, &y, &mut c, n, n, n)?;
        }
        gpu.synchronize()?;
        let t = Instant::now();
        for _ in 0..a.reps {
            gpu.matmul_nt_bf16(&x, &y, &mut c, n, n, n)?;
        }
        gpu.synchronize()?;
        let s = t.elapsed().as_secs_f64() / a.reps as f64;
        rows.push(serde_json::json!({"n": n, "ms": s * 1e3, "tflops": 2.0 * (n as f64).powi(3) / s / 1e12}));
    }
    println!(
        "{}",
        serde_json::json!({"bench": "gemm_bf16", "device": gpu.name, "results": rows})
    );
    Ok(())
}

#[derive(Args, Clone, Debug)]
pub struct GdnStepArgs {
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub batch: Vec<usize>,
    #[arg(long, default_value_t = 16)]
    pub heads: usize,
    #[arg(long, default_value_t = 128)]
    pub head_dim: usize,
    #[arg(long, default_value_t = 500)]
    pub reps: usize,
}

/// One-token GDN decode step on the GPU (state f32 [B, H, 128, 128], in place): time per
/// step and the bytes/s it achieves (state read + written, inputs, output).
pub fn bench_gdn_step(a: GdnStepArgs) -> Result<()> {
    use tensor::cuda::StepDims;
    let gpu = Gpu::open(0)?;
    let mut rows = vec![];
    for &b in &a.batch {
        let (h, k) = (a.heads, a.head_dim);
        let d = StepDims {
            b,
            h,
            hv: h,
            k,
            v: k,
        };
        let bf = |n: usize, s: f32| -> Vec<bf16> {
            (0..n)
                .map(|i| bf16::from_f32(((i * 7919 % 97) as f32 / 97.0 - 0.5) * s))
                .collect()
        };
        let q = gpu.upload(&bf(b * h * k, 0.2))?;
        let kk = gpu.upload(&bf(b * h * k, 0.2))?;
        let v = gpu.upload(&bf(b * h * k, 1.0))?;
        let g = gpu.upload(&vec![-0.01f32; b * h])?;
        let beta = gpu.upload(&vec![0.5f32; b * h])?;
        let init: Vec<f32> = (0..b * h * k * k)
            .map(|i| ((i % 101) as f32 / 101.0 - 0.5) * 0.1)
            .collect();
        let mut state = gpu.upload(&init)?;
        let mut o = gpu.zeros::<bf16>(b * h * k)?;
        let scale = (k as f32).powf(-0.5);
        for _ in 0..20 {
            gpu.gdn_step(d, &q, &kk, &v, &g, true, &beta, &mut state, &mut o, scale)?;
        }
        gpu.synchronize()?;
        let t = Instant::now();
        for _ in 0..a.reps {
            gpu.gdn_step(d, &q, &kk, &v, &g, true, &beta, &mut state, &mut o, scale)?;
        }
        gpu.synchronize()?;
        let s = t.elapsed().as_secs_f64() / a.reps as f64;
        let bytes = (b * h * k * k * 4 * 2 + b * h * k * 2 * 4 + b * h * 8) as f64;
        rows.push(serde_json::json!({"batch": b, "us": s * 1e6, "bytes_per_s": bytes / s, "state_mb": (b * h * k * k * 4) as f64 / 1e6}));
    }
    println!(
        "{}",
        serde_json::json!({"bench": "gdn_step", "device": gpu.name, "heads": a.heads, "head_dim": a.head_dim, "results": rows})
    );
    Ok(())
}
