//! CUDA backend against the CPU reference. The GPU tests are `#[ignore]`d (CI has no GPU);
//! scripts/gpu-check runs them on the device machine with `--ignored`.
use half::bf16;
use tensor::cuda::Gpu;

fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

fn rel_err(want: &[f32], got: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    want.iter()
        .zip(got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn without_a_gpu_opening_one_is_a_sentence_not_a_panic() {
    if tensor::cuda::libs::driver_present() {
        return; // the device machine: covered by the ignored tests
    }
    let e = Gpu::open(0).err().expect("no GPU here").to_string();
    assert!(e.contains("no NVIDIA driver") && !e.contains('\n'), "{e}");
}

#[test]
#[ignore]
fn rmsnorm_matches_cpu_in_f32_and_bf16() {
    let gpu = Gpu::open(0).unwrap();
    let (rows, d) = (37, 576);
    let x = rnd(rows * d, 1);
    let w: Vec<f32> = rnd(d, 2).iter().map(|v| 1.0 + v).collect();
    let mut want = vec![0f32; rows * d];
    tensor::cpu::rms_norm(&x, &w, 1e-5, &mut want);
    let (xd, wd) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap());
    let mut yd = gpu.zeros::<f32>(rows * d).unwrap();
    gpu.rmsnorm_f32(&xd, &wd, &mut yd, rows, d, 1e-5).unwrap();
    let got = gpu.download(&yd).unwrap();
    assert!(
        rel_err(&want, &got) < 1e-5,
        "f32 rel err {}",
        rel_err(&want, &got)
    );
    let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    let xbd = gpu.upload(&xb).unwrap();
    let mut ybd = gpu.zeros::<bf16>(rows * d).unwrap();
    gpu.rmsnorm_bf16(&xbd, &wd, &mut ybd, rows, d, 1e-5)
        .unwrap();
    let got: Vec<f32> = gpu
        .download(&ybd)
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect();
    assert!(
        rel_err(&want, &got) < 2e-2,
        "bf16 rel err {}",
        rel_err(&want, &got)
    );
}

#[test]
#[ignore]
fn cublas_bf16_gemm_matches_cpu() {
    let gpu = Gpu::open(0).unwrap();
    let (m, n, k) = (67, 129, 576);
    let a = rnd(m * k, 3);
    let b = rnd(n * k, 4);
    let mut want = vec![0f32; m * n];
    tensor::cpu::matmul_nt(&a, &b, &mut want, m, n, k, false);
    let to_bf = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
    let (ad, bd) = (
        gpu.upload(&to_bf(&a)).unwrap(),
        gpu.upload(&to_bf(&b)).unwrap(),
    );
    let mut cd = gpu.zeros::<bf16>(m * n).unwrap();
    gpu.matmul_nt_bf16(&ad, &bd, &mut cd, m, n, k).unwrap();
    let got: Vec<f32> = gpu
        .download(&cd)
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect();
    assert!(
        rel_err(&want, &got) < 2e-2,
        "bf16 GEMM rel err {}",
        rel_err(&want, &got)
    );
}

#[test]
#[ignore]
fn kernels_are_cached_on_disk() {
    let gpu = Gpu::open(0).unwrap();
    gpu.function(tensor::cuda::RMSNORM, "rmsnorm_f32").unwrap();
    let dir = tensor::cuda::kernel_cache_dir();
    let prefix = format!("rmsnorm-{}", gpu.arch());
    let hits = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .count();
    assert!(hits >= 1, "no cached rmsnorm PTX in {}", dir.display());
}

/// The decode-step kernel against the CPU recurrence (mixers::linear_core::step) on the same
/// bf16-rounded inputs: state to f32 rounding, output to bf16 rounding. GVA and per-channel
/// (KDA) decays included; several steps so errors would compound.
#[test]
#[ignore]
fn gdn_step_matches_cpu_recurrence() {
    use mixers::linear_core::{self, Dims, Inputs};
    use tensor::cuda::StepDims;
    let gpu = Gpu::open(0).unwrap();
    for (per_head, b, h, hv, k, v) in [
        (true, 3, 2, 4, 128, 128),
        (false, 2, 4, 4, 64, 96),
        (true, 1, 16, 16, 128, 128),
    ] {
        let d = StepDims { b, h, hv, k, v };
        let round =
            |x: Vec<f32>| -> Vec<f32> { x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect() };
        let norm = |mut x: Vec<f32>| -> Vec<f32> {
            for r in x.chunks_exact_mut(k) {
                let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
                r.iter_mut().for_each(|v| *v /= n);
            }
            x
        };
        let mut state = rnd(b * hv * k * v, 9);
        let mut sd = gpu.upload(&state).unwrap();
        for step in 0..4u64 {
            let q = round(norm(rnd(b * h * k, 10 + step)));
            let kk = round(norm(rnd(b * h * k, 20 + step)));
            let vv = round(rnd(b * hv * v, 30 + step));
            let g_head: Vec<f32> = rnd(b * hv, 40 + step)
                .iter()
                .map(|x| -0.05 - x.abs())
                .collect();
            let g_chan: Vec<f32> = rnd(b * hv * k, 50 + step)
                .iter()
                .map(|x| -0.05 - x.abs())
                .collect();
            let beta: Vec<f32> = rnd(b * hv, 60 + step).iter().map(|x| 0.5 + x).collect();
            let g_full: Vec<f32> = if per_head {
                g_head
                    .iter()
                    .flat_map(|&x| std::iter::repeat_n(x, k))
                    .collect()
            } else {
                g_chan.clone()
            };
            let dims = Dims {
                b,
                t: 1,
                h,
                hv,
                k,
                v,
            };
            let scale = (k as f32).powf(-0.5);
            let want_o = linear_core::step(
                dims,
                Inputs {
                    q: &q,
                    k: &kk,
                    v: &vv,
                    g: &g_full,
                    beta: Some(&beta),
                },
                scale,
                &mut state,
            );
            let to_bf = |x: &[f32]| x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>();
            let gd = gpu
                .upload(if per_head { &g_head } else { &g_chan })
                .unwrap();
            let mut od = gpu.zeros::<bf16>(b * hv * v).unwrap();
            gpu.gdn_step(
                d,
                &gpu.upload(&to_bf(&q)).unwrap(),
                &gpu.upload(&to_bf(&kk)).unwrap(),
                &gpu.upload(&to_bf(&vv)).unwrap(),
                &gd,
                per_head,
                &gpu.upload(&beta).unwrap(),
                &mut sd,
                &mut od,
                scale,
            )
            .unwrap();
            let got_o: Vec<f32> = gpu
                .download(&od)
                .unwrap()
                .iter()
                .map(|x| x.to_f32())
                .collect();
            let got_s = gpu.download(&sd).unwrap();
            assert!(
                rel_err(&state, &got_s) < 1e-5,
                "{d:?} step {step}: state rel err {}",
                rel_err(&state, &got_s)
            );
            assert!(
                rel_err(&want_o, &got_o) < 2e-2,
                "{d:?} step {step}: output rel err {}",
                rel_err(&want_o, &got_o)
            );
        }
    }
}
