//! The GPU backward kernels (tensor::cuda's ops_bwd: RMSNorm, short causal conv, distillation
//! KL) against their CPU references. `#[ignore]`d: CI has no GPU; scripts/gpu-check runs them
//! on the device machine with `--ignored`.
use half::bf16;
use tensor::cuda::Gpu;

fn rnd(n: usize, std: f64, seed: u64) -> Vec<f32> {
    tensor::rng::SplitMix64::new(seed).normals(n, std)
}

/// Rounded to bf16 and back: the inputs both sides see in the bf16 cases.
fn bf_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

fn to_bf(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

fn from_bf(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// max |want − got| / max |want|; a non-finite value anywhere fails.
fn rel_err(want: &[f32], got: &[f32]) -> f32 {
    assert_eq!(want.len(), got.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let mut worst = 0f32;
    for (a, b) in want.iter().zip(got) {
        if !b.is_finite() {
            return f32::INFINITY;
        }
        worst = worst.max((a - b).abs());
    }
    worst / scale
}

#[test]
#[ignore]
fn rmsnorm_backward_matches_cpu_in_f32_and_bf16() {
    let gpu = Gpu::open(0).unwrap();
    // (rows, d): one slice of rows and several (the dw pass's partial sums), ragged widths.
    for (ci, &(rows, d)) in [(37, 576), (300, 576), (1000, 2048), (5, 100)]
        .iter()
        .enumerate()
    {
        let seed = 10 * ci as u64;
        let eps = 1e-5;
        let x = rnd(rows * d, 1.0, seed + 1);
        let dy = rnd(rows * d, 1.0, seed + 2);
        let w: Vec<f32> = rnd(d, 0.2, seed + 3).iter().map(|v| 1.0 + v).collect();
        let dw0 = rnd(d, 0.1, seed + 4); // dw accumulates: start from a nonzero gradient
        let wd = gpu.upload(&w).unwrap();

        // f32
        let mut want_dx = vec![0f32; rows * d];
        let mut want_dw = dw0.clone();
        tensor::cpu::rms_norm_backward(&x, &w, eps, &dy, &mut want_dx, &mut want_dw);
        let (xd, dyd) = (gpu.upload(&x).unwrap(), gpu.upload(&dy).unwrap());
        let mut dxd = gpu.upload(&vec![f32::NAN; rows * d]).unwrap();
        let mut dwd = gpu.upload(&dw0).unwrap();
        gpu.rmsnorm_bwd_f32(&xd, &wd, &dyd, &mut dxd, &mut dwd, rows, d, eps)
            .unwrap();
        let ex = rel_err(&want_dx, &gpu.download(&dxd).unwrap());
        let ew = rel_err(&want_dw, &gpu.download(&dwd).unwrap());
        println!("rmsnorm bwd f32 rows {rows} d {d}: dx {ex:.2e} dw {ew:.2e}");
        assert!(ex < 1e-5 && ew < 1e-5, "f32 rel errs dx {ex} dw {ew}");

        // bf16 activations, f32 weight gradient
        let (xr, dyr) = (bf_round(&x), bf_round(&dy));
        let mut want_dx = vec![0f32; rows * d];
        let mut want_dw = dw0.clone();
        tensor::cpu::rms_norm_backward(&xr, &w, eps, &dyr, &mut want_dx, &mut want_dw);
        let (xd, dyd) = (
            gpu.upload(&to_bf(&xr)).unwrap(),
            gpu.upload(&to_bf(&dyr)).unwrap(),
        );
        let mut dxd = gpu
            .upload(&vec![bf16::from_bits(0x7fc0); rows * d])
            .unwrap();
        let mut dwd = gpu.upload(&dw0).unwrap();
        gpu.rmsnorm_bwd_bf16(&xd, &wd, &dyd, &mut dxd, &mut dwd, rows, d, eps)
            .unwrap();
        let ex = rel_err(&want_dx, &from_bf(&gpu.download(&dxd).unwrap()));
        let ew = rel_err(&want_dw, &gpu.download(&dwd).unwrap());
        println!("rmsnorm bwd bf16 rows {rows} d {d}: dx {ex:.2e} dw {ew:.2e}");
        assert!(ex < 2e-2 && ew < 2e-2, "bf16 rel errs dx {ex} dw {ew}");
    }
}

#[test]
#[ignore]
fn short_conv_backward_matches_mixers_conv() {
    let gpu = Gpu::open(0).unwrap();
    // (b, t, c): several token chunks per sequence, T shorter than the kernel, ragged C.
    let shapes = [(2, 150, 200), (1, 1000, 64), (3, 2, 130), (1, 1, 7)];
    for (si, &(b, t, c)) in shapes.iter().enumerate() {
        for kw in 1..=4 {
            let seed = 100 * si as u64 + 10 * kw as u64;
            let x = rnd(b * t * c, 1.0, seed + 1);
            let weight = rnd(c * kw, 0.5, seed + 2);
            let dy = rnd(b * t * c, 1.0, seed + 3);
            let dw0 = rnd(c * kw, 0.1, seed + 4);
            let wd = gpu.upload(&weight).unwrap();

            let check = |x: &[f32], dy: &[f32], got_dx: &[f32], got_dw: &[f32], tol: f32| {
                let pre = mixers::conv::forward(x, &weight, b, t, c, kw, None).pre;
                let (want_dx, dw) = mixers::conv::backward(x, &weight, &pre, dy, b, t, c, kw);
                let want_dw: Vec<f32> = dw.iter().zip(&dw0).map(|(a, b)| a + b).collect();
                let (ex, ew) = (rel_err(&want_dx, got_dx), rel_err(&want_dw, got_dw));
                println!("conv bwd b {b} t {t} c {c} w {kw} tol {tol}: dx {ex:.2e} dw {ew:.2e}");
                assert!(
                    ex < tol && ew < tol,
                    "rel errs dx {ex} dw {ew} for b {b} t {t} c {c} w {kw}"
                );
            };

            // f32
            let (xd, dyd) = (gpu.upload(&x).unwrap(), gpu.upload(&dy).unwrap());
            let mut dxd = gpu.upload(&vec![f32::NAN; x.len()]).unwrap();
            let mut dwd = gpu.upload(&dw0).unwrap();
            gpu.short_conv_bwd_f32(&xd, &wd, &dyd, &mut dxd, &mut dwd, b, t, c, kw)
                .unwrap();
            let (gx, gw) = (gpu.download(&dxd).unwrap(), gpu.download(&dwd).unwrap());
            check(&x, &dy, &gx, &gw, 1e-5);

            // bf16 activations
            let (xr, dyr) = (bf_round(&x), bf_round(&dy));
            let (xd, dyd) = (
                gpu.upload(&to_bf(&xr)).unwrap(),
                gpu.upload(&to_bf(&dyr)).unwrap(),
            );
            let mut dxd = gpu.upload(&vec![bf16::from_bits(0x7fc0); x.len()]).unwrap();
            let mut dwd = gpu.upload(&dw0).unwrap();
            gpu.short_conv_bwd_bf16(&xd, &wd, &dyd, &mut dxd, &mut dwd, b, t, c, kw)
                .unwrap();
            let (gx, gw) = (
                from_bf(&gpu.download(&dxd).unwrap()),
                gpu.download(&dwd).unwrap(),
            );
            check(&xr, &dyr, &gx, &gw, 2e-2);
        }
    }
}

/// The reference is `train::loss::kl_div`'s formula (train is not a dependency of tensor),
/// in f64: T² · mean over rows of KL(p_t ‖ p_s) with p = softmax(logits / T), gradient wrt
/// the student logits T · (p_s − p_t) / N.
fn kl_div_reference(student: &[f32], teacher: &[f32], v: usize, temp: f64) -> (f64, Vec<f32>) {
    let n = student.len() / v;
    let log_softmax = |x: &[f32]| -> Vec<f64> {
        let z: Vec<f64> = x.iter().map(|&a| a as f64 / temp).collect();
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|a| (a - m).exp()).sum::<f64>().ln();
        z.iter().map(|a| a - lse).collect()
    };
    let mut total = 0f64;
    let mut grad = vec![0f32; student.len()];
    for r in 0..n {
        let ls = log_softmax(&student[r * v..(r + 1) * v]);
        let lt = log_softmax(&teacher[r * v..(r + 1) * v]);
        for i in 0..v {
            let pt = lt[i].exp();
            if pt > 0.0 {
                total += pt * (lt[i] - ls[i]);
            }
            grad[r * v + i] = (temp * (ls[i].exp() - pt) / n as f64) as f32;
        }
    }
    (temp * temp * total / n as f64, grad)
}

#[test]
#[ignore]
fn kl_div_matches_train_loss_formula() {
    let gpu = Gpu::open(0).unwrap();
    for (ci, &(n, v, temp)) in [(7, 1000, 1.0f32), (5, 50257, 2.0), (3, 37, 0.5)]
        .iter()
        .enumerate()
    {
        let seed = 1000 + 10 * ci as u64;
        let student = rnd(n * v, 3.0, seed + 1);
        let teacher = rnd(n * v, 3.0, seed + 2);
        let (want_loss, want_grad) = kl_div_reference(&student, &teacher, v, temp as f64);
        let (sd, td) = (gpu.upload(&student).unwrap(), gpu.upload(&teacher).unwrap());
        let mut loss = gpu.upload(&vec![f32::NAN; n]).unwrap();
        let mut grad = gpu.upload(&vec![f32::NAN; n * v]).unwrap();
        gpu.kl_div_f32(&sd, &td, &mut loss, &mut grad, n, v, temp)
            .unwrap();
        let got_loss: f64 = gpu.download(&loss).unwrap().iter().map(|&l| l as f64).sum();
        let el = ((got_loss - want_loss).abs() / want_loss.abs()) as f32;
        let eg = rel_err(&want_grad, &gpu.download(&grad).unwrap());
        println!("kl_div n {n} v {v} T {temp}: loss {got_loss:.6} (want {want_loss:.6}) rel err {el:.2e}, grad {eg:.2e}");
        assert!(el < 1e-5 && eg < 1e-5, "rel errs loss {el} grad {eg}");
    }
}
