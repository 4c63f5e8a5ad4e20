//! The GPU backward kernels (tensor::cuda's ops_bwd: RMSNorm, short causal conv, distillation
//! KL; the backward GEMMs) against their CPU references. `#[ignore]`d: CI has no GPU; scripts/gpu-check runs them
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

/// The backward GEMMs: every transpose combination of `gemm_bf16_f32`, overwriting and
/// accumulating, against an f64 product of the same bf16-rounded operands (odd sizes, so
/// that a swapped leading dimension cannot pass).
#[test]
#[ignore]
fn gemm_transposes_and_accumulation_match_cpu() {
    let gpu = Gpu::open(0).unwrap();
    let (m, n, k) = (37, 19, 53);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a = bf_round(&rnd(m * k, 1.0, 1));
        let b = bf_round(&rnd(n * k, 1.0, 2));
        let c0 = rnd(m * n, 1.0, 3);
        // op(a)[i, p] and op(b)[p, j] from their stored layouts.
        let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
        let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
        let prod: Vec<f32> = (0..m * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                (0..k)
                    .map(|p| at(i, p) as f64 * bt(p, j) as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        let (ga, gb) = (
            gpu.upload(&to_bf(&a)).unwrap(),
            gpu.upload(&to_bf(&b)).unwrap(),
        );
        for accumulate in [false, true] {
            let mut c = gpu.upload(&c0).unwrap();
            gpu.gemm_bf16_f32((ta, tb), &ga, &gb, &mut c, (m, n, k), accumulate)
                .unwrap();
            let got: Vec<f32> = gpu.download(&c).unwrap();
            let want: Vec<f32> = if accumulate {
                prod.iter().zip(&c0).map(|(p, c)| p + c).collect()
            } else {
                prod.clone()
            };
            let e = rel_err(&want, &got);
            assert!(e < 1e-5, "ta={ta} tb={tb} accumulate={accumulate}: {e}");
        }
    }
}

/// The training backward of the hybrid layers' small ops (tensor::cuda::train_ops) against
/// mixers::ops (L2 norm, gated RMSNorm with both gate activations) and the formulas of the
/// decay gate (GDN per head, KDA per channel, with pre-activations past softplus's threshold),
/// sigmoid and SwiGLU. Weight gradients must add to what the buffers held.
#[test]
#[ignore]
fn training_ops_backward_match_cpu() {
    use mixers::ops::{self, GateAct};
    use tensor::cuda::GateActivation;
    let gpu = Gpu::open(0).unwrap();
    let up = |v: &[f32]| gpu.upload(v).unwrap();
    let down = |v: &cudarc::driver::CudaSlice<f32>| -> Vec<f32> { gpu.download(v).unwrap() };
    // L2 norm.
    let (rows, w) = (37, 64);
    let mut y = rnd(rows * w, 1.0, 10);
    let inv = ops::l2norm_rows(&mut y, w);
    let dy = rnd(rows * w, 1.0, 11);
    let want = ops::l2norm_rows_backward(&y, &inv, &dy, w);
    let mut dx = gpu.zeros::<f32>(rows * w).unwrap();
    gpu.l2norm_bwd_f32(&up(&y), &up(&inv), &up(&dy), &mut dx, rows, w)
        .unwrap();
    let e = rel_err(&want, &down(&dx));
    assert!(e < 1e-5, "l2norm: {e}");
    // Gated RMSNorm.
    for (act, gact) in [
        (GateAct::Silu, GateActivation::Silu),
        (GateAct::Sigmoid, GateActivation::Sigmoid),
    ] {
        let (rows, w) = (29, 64);
        let (o, z) = (rnd(rows * w, 1.0, 12), rnd(rows * w, 2.0, 13));
        let weight = rnd(w, 1.0, 14);
        let (_, rs) = ops::gated_rmsnorm(&o, &z, &weight, 1e-6, act);
        let dy = rnd(rows * w, 1.0, 15);
        let dw0 = rnd(w, 1.0, 16);
        let mut dw_want = dw0.clone();
        let (do_want, dz_want) =
            ops::gated_rmsnorm_backward(&o, &z, &weight, &rs, &dy, act, &mut dw_want);
        let (mut d_o, mut dz, mut dw) = (
            gpu.zeros::<f32>(rows * w).unwrap(),
            gpu.zeros::<f32>(rows * w).unwrap(),
            up(&dw0),
        );
        gpu.gated_rmsnorm_bwd_f32(
            &up(&o),
            &up(&z),
            &up(&weight),
            &up(&rs),
            &up(&dy),
            &mut d_o,
            &mut dz,
            &mut dw,
            (rows, w),
            gact,
        )
        .unwrap();
        for (what, want, got) in [
            ("do", &do_want, down(&d_o)),
            ("dz", &dz_want, down(&dz)),
            ("dweight", &dw_want, down(&dw)),
        ] {
            let e = rel_err(want, &got);
            assert!(e < 1e-5, "gated rmsnorm {act:?} {what}: {e}");
        }
    }
    // Decay gate: GDN (one gate per head) and KDA (per channel, groups of K share A_log).
    for (p, group) in [(4, 1), (32, 8)] {
        let rows = 50;
        let mut u = rnd(rows * p, 3.0, 17);
        u[3] = 25.0; // past softplus's threshold: identity there
        let dg = rnd(rows * p, 1.0, 18);
        let a_log = rnd(p / group, 1.0, 19);
        let (ddt0, dal0) = (rnd(p, 1.0, 20), rnd(p / group, 1.0, 21));
        let mut du_want = vec![0f32; rows * p];
        let (mut ddt_want, mut dal_want): (Vec<f64>, Vec<f64>) = (
            ddt0.iter().map(|&v| v as f64).collect(),
            dal0.iter().map(|&v| v as f64).collect(),
        );
        for i in 0..rows * p {
            let j = i % p;
            let e = a_log[j / group].exp();
            let du = dg[i] * -e * ops::softplus_grad(u[i]);
            du_want[i] = du;
            ddt_want[j] += du as f64;
            dal_want[j / group] += (dg[i] * -e * ops::softplus(u[i])) as f64;
        }
        let (mut du, mut ddt, mut dal) =
            (gpu.zeros::<f32>(rows * p).unwrap(), up(&ddt0), up(&dal0));
        gpu.decay_gate_bwd_f32(
            &up(&u),
            &up(&dg),
            &up(&a_log),
            &mut du,
            &mut ddt,
            &mut dal,
            (rows, p, group),
        )
        .unwrap();
        let f32v = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
        for (what, want, got) in [
            ("du", du_want.clone(), down(&du)),
            ("d dt_bias", f32v(&ddt_want), down(&ddt)),
            ("d A_log", f32v(&dal_want), down(&dal)),
        ] {
            let e = rel_err(&want, &got);
            assert!(e < 1e-5, "decay gate p={p} group={group} {what}: {e}");
        }
    }
    // Sigmoid and SwiGLU.
    let n = 1000;
    let beta: Vec<f32> = rnd(n, 2.0, 22).iter().map(|&x| ops::sigmoid(x)).collect();
    let dbeta = rnd(n, 1.0, 23);
    let mut db = gpu.zeros::<f32>(n).unwrap();
    gpu.sigmoid_bwd_f32(&up(&beta), &up(&dbeta), &mut db, n)
        .unwrap();
    let want: Vec<f32> = beta
        .iter()
        .zip(&dbeta)
        .map(|(b, d)| d * b * (1.0 - b))
        .collect();
    assert!(rel_err(&want, &down(&db)) < 1e-6);
    let (gate, upv, dact) = (rnd(n, 2.0, 24), rnd(n, 1.0, 25), rnd(n, 1.0, 26));
    let (mut dgate, mut dup) = (gpu.zeros::<f32>(n).unwrap(), gpu.zeros::<f32>(n).unwrap());
    gpu.swiglu_bwd_f32(&up(&gate), &up(&upv), &up(&dact), &mut dgate, &mut dup, n)
        .unwrap();
    let dup_want: Vec<f32> = (0..n)
        .map(|i| dact[i] * tensor::cpu::silu(gate[i]))
        .collect();
    let dgate_want: Vec<f32> = (0..n)
        .map(|i| dact[i] * upv[i] * tensor::cpu::silu_grad(gate[i]))
        .collect();
    assert!(rel_err(&dup_want, &down(&dup)) < 1e-5);
    assert!(rel_err(&dgate_want, &down(&dgate)) < 1e-5);
}
