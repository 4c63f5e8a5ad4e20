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
