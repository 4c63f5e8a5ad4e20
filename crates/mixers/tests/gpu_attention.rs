//! The GPU flash attention (tensor::cuda::flash, kernels/flash_attn.cu) against the
//! specification, `mixers::attention_core`: forward against the f64 reference (and the f32
//! forward's log-sum-exp), backward against its backward. `#[ignore]`d: CI has no GPU;
//! scripts/gpu-check runs them on the device machine with `--ignored`.
use half::bf16;
use mixers::attention_core::{self, Dims};
use tensor::cuda::flash::{BwdKernel, BwdTiling, FlashDims, FwdTiling, WGMMA_V_STRIDES};
use tensor::cuda::Gpu;

/// Normal values of standard deviation `std`, rounded to bf16 (the kernels' input precision).
fn rnd(n: usize, std: f64, seed: u64) -> Vec<f32> {
    let mut r = tensor::rng::SplitMix64::new(seed);
    r.normals(n, std)
        .into_iter()
        .map(|x| bf16::from_f32(x).to_f32())
        .collect()
}

fn to_bf(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

fn from_bf(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// max |want − got| / max |want|; NaN anywhere (an unwritten poisoned element) fails.
fn rel_err(want: &[f32], got: &[f32]) -> f32 {
    assert_eq!(want.len(), got.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let mut worst = 0f32;
    for (a, b) in want.iter().zip(got) {
        if !b.is_finite() {
            return f32::INFINITY;
        }
        worst = worst.max((a - b).abs());
    }
    worst / scale
}

/// lse [B, T, H] (attention_core) to [B, H, T] (the kernels).
fn lse_bht(d: Dims, lse: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; lse.len()];
    for b in 0..d.b {
        for i in 0..d.t {
            for h in 0..d.h {
                out[(b * d.h + h) * d.t + i] = lse[(b * d.t + i) * d.h + h];
            }
        }
    }
    out
}

struct Case {
    d: Dims,
    window: Option<usize>,
}

fn case(
    b: usize,
    t: usize,
    s: usize,
    h: usize,
    hk: usize,
    d: usize,
    window: Option<usize>,
) -> Case {
    Case {
        d: Dims { b, t, s, h, hk, d },
        window,
    }
}

fn flash_dims(d: Dims) -> FlashDims {
    FlashDims {
        b: d.b,
        t: d.t,
        s: d.s,
        h: d.h,
        hk: d.hk,
        d: d.d,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case(2, 77, 77, 4, 2, 128, None),
        case(2, 200, 200, 9, 3, 64, None),
        case(2, 200, 200, 9, 3, 64, Some(50)),
        case(1, 77, 300, 4, 2, 128, None),
        case(2, 130, 170, 4, 1, 64, Some(37)),
        case(1, 150, 150, 4, 2, 128, Some(64)),
        case(1, 256, 256, 2, 2, 128, Some(1000)),
        case(2, 1, 129, 4, 4, 128, None),
        case(1, 5, 133, 6, 2, 64, Some(20)),
    ]
}

/// Head-dim-128 cases of several key tiles each: they wrap the Hopper kernels' 2-stage rings
/// several times, with batches (their TMA reads each batch's rows apart), keys before the
/// queries, GQA and windows.
fn long_cases() -> Vec<Case> {
    vec![
        case(1, 600, 600, 4, 1, 128, None),
        case(2, 1000, 1000, 2, 1, 128, Some(300)),
        case(2, 700, 900, 4, 2, 128, None),
    ]
}

const NAN_BF16: bf16 = bf16::from_bits(0x7fc0);

#[test]
#[ignore]
fn flash_forward_matches_reference() {
    let gpu = Gpu::open(0).unwrap();
    for (ci, c) in cases().iter().enumerate() {
        let d = c.d;
        let scale = (d.d as f32).powf(-0.5);
        let seed = 100 * ci as u64;
        let q = rnd(d.b * d.t * d.h * d.d, 1.5, seed + 1);
        let k = rnd(d.b * d.s * d.hk * d.d, 1.5, seed + 2);
        let v = rnd(d.b * d.s * d.hk * d.d, 1.0, seed + 3);
        let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let want: Vec<f32> =
            attention_core::reference(d, &f64s(&q), &f64s(&k), &f64s(&v), scale as f64, c.window)
                .into_iter()
                .map(|x| x as f32)
                .collect();
        let (_, lse) = attention_core::forward(d, &q, &k, &v, scale, c.window);
        let want_lse = lse_bht(d, &lse);
        let (qd, kd, vd) = (
            gpu.upload(&to_bf(&q)).unwrap(),
            gpu.upload(&to_bf(&k)).unwrap(),
            gpu.upload(&to_bf(&v)).unwrap(),
        );
        for &tiling in FwdTiling::available(d.d) {
            let mut od = gpu.upload(&vec![NAN_BF16; q.len()]).unwrap();
            let mut ld = gpu.upload(&vec![f32::NAN; d.b * d.t * d.h]).unwrap();
            gpu.flash_attn_fwd_bf16_tiled(
                &qd,
                &kd,
                &vd,
                &mut od,
                &mut ld,
                flash_dims(d),
                scale,
                c.window,
                tiling,
            )
            .unwrap();
            let got = from_bf(&gpu.download(&od).unwrap());
            let got_lse = gpu.download(&ld).unwrap();
            let (eo, el) = (rel_err(&want, &got), rel_err(&want_lse, &got_lse));
            println!(
                "{d:?} window {:?} {tiling:?}: o {eo:.2e} lse {el:.2e}",
                c.window
            );
            assert!(
                eo < 2e-2,
                "o rel err {eo} for {d:?} {:?} {tiling:?}",
                c.window
            );
            assert!(
                el < 1e-3,
                "lse rel err {el} for {d:?} {:?} {tiling:?}",
                c.window
            );
        }
    }
}

/// The wgmma forward (Hopper, head dim 128; the default forward there) and the dispatching
/// `flash_attn_fwd_bf16`. Also prints the errors with the V descriptor strides swapped, which
/// must fail: a check that the test can see a wrong layout.
#[test]
#[ignore]
fn flash_forward_wgmma_matches_reference() {
    let gpu = Gpu::open(0).unwrap();
    if gpu.compute_capability != (9, 0) {
        return; // wgmma is Hopper's
    }
    let (lbo, sbo) = WGMMA_V_STRIDES;
    let mut all = cases();
    all.extend(long_cases());
    for (ci, c) in all.iter().enumerate().filter(|(_, c)| c.d.d == 128) {
        let d = c.d;
        let scale = (d.d as f32).powf(-0.5);
        let seed = 100 * ci as u64 + 3;
        let q = rnd(d.b * d.t * d.h * d.d, 1.5, seed + 1);
        let k = rnd(d.b * d.s * d.hk * d.d, 1.5, seed + 2);
        let v = rnd(d.b * d.s * d.hk * d.d, 1.0, seed + 3);
        let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let want: Vec<f32> =
            attention_core::reference(d, &f64s(&q), &f64s(&k), &f64s(&v), scale as f64, c.window)
                .into_iter()
                .map(|x| x as f32)
                .collect();
        let (_, lse) = attention_core::forward(d, &q, &k, &v, scale, c.window);
        let want_lse = lse_bht(d, &lse);
        let (qd, kd, vd) = (
            gpu.upload(&to_bf(&q)).unwrap(),
            gpu.upload(&to_bf(&k)).unwrap(),
            gpu.upload(&to_bf(&v)).unwrap(),
        );
        // The default strides must pass; the swapped pair is printed as a check of the test.
        for strides in [(lbo, sbo), (sbo, lbo)] {
            let mut od = gpu.upload(&vec![NAN_BF16; q.len()]).unwrap();
            let mut ld = gpu.upload(&vec![f32::NAN; d.b * d.t * d.h]).unwrap();
            gpu.flash_attn_fwd_bf16_wgmma(
                &qd,
                &kd,
                &vd,
                &mut od,
                &mut ld,
                flash_dims(d),
                scale,
                c.window,
                strides,
            )
            .unwrap();
            let got = from_bf(&gpu.download(&od).unwrap());
            let got_lse = gpu.download(&ld).unwrap();
            let (eo, el) = (rel_err(&want, &got), rel_err(&want_lse, &got_lse));
            println!(
                "wgmma {d:?} window {:?} V strides {strides:?}: o {eo:.2e} lse {el:.2e}",
                c.window
            );
            if strides == WGMMA_V_STRIDES {
                assert!(eo < 2e-2 && el < 1e-3, "wgmma o {eo} lse {el} for {d:?}");
            }
        }
        // The default forward (wgmma here unless sm_90a failed to build).
        let mut od = gpu.upload(&vec![NAN_BF16; q.len()]).unwrap();
        let mut ld = gpu.upload(&vec![f32::NAN; d.b * d.t * d.h]).unwrap();
        gpu.flash_attn_fwd_bf16(
            &qd,
            &kd,
            &vd,
            &mut od,
            &mut ld,
            flash_dims(d),
            scale,
            c.window,
        )
        .unwrap();
        let got = from_bf(&gpu.download(&od).unwrap());
        let got_lse = gpu.download(&ld).unwrap();
        let (eo, el) = (rel_err(&want, &got), rel_err(&want_lse, &got_lse));
        println!(
            "default forward (wgmma: {}) {d:?} window {:?}: o {eo:.2e} lse {el:.2e}",
            gpu.flash_fwd_uses_wgmma(d.d),
            c.window
        );
        assert!(eo < 2e-2 && el < 1e-3, "default o {eo} lse {el} for {d:?}");
    }
}

#[test]
#[ignore]
fn flash_backward_matches_attention_core() {
    let gpu = Gpu::open(0).unwrap();
    let mut all = cases();
    all.extend(long_cases());
    for (ci, c) in all.iter().enumerate() {
        let d = c.d;
        let scale = (d.d as f32).powf(-0.5);
        let seed = 100 * ci as u64 + 7;
        let q = rnd(d.b * d.t * d.h * d.d, 1.5, seed + 1);
        let k = rnd(d.b * d.s * d.hk * d.d, 1.5, seed + 2);
        let v = rnd(d.b * d.s * d.hk * d.d, 1.0, seed + 3);
        let d_o = rnd(q.len(), 1.0, seed + 4);
        let (o, lse) = attention_core::forward(d, &q, &k, &v, scale, c.window);
        let (want_dq, want_dk, want_dv) =
            attention_core::backward(d, &q, &k, &v, &o, &lse, &d_o, scale, c.window);

        let (qd, kd, vd, dod) = (
            gpu.upload(&to_bf(&q)).unwrap(),
            gpu.upload(&to_bf(&k)).unwrap(),
            gpu.upload(&to_bf(&v)).unwrap(),
            gpu.upload(&to_bf(&d_o)).unwrap(),
        );
        let mut od = gpu.zeros::<bf16>(q.len()).unwrap();
        let mut ld = gpu.zeros::<f32>(d.b * d.t * d.h).unwrap();
        gpu.flash_attn_fwd_bf16(
            &qd,
            &kd,
            &vd,
            &mut od,
            &mut ld,
            flash_dims(d),
            scale,
            c.window,
        )
        .unwrap();
        // The mma.sync tilings, then on Hopper the wgmma backward (asked for directly, so an
        // sm_90a build that fails to load fails here instead of falling back unseen).
        let mut kernels: Vec<BwdKernel> = BwdTiling::available(d.d)
            .iter()
            .map(|&t| BwdKernel::MmaSync(t))
            .collect();
        if gpu.compute_capability == (9, 0) && d.d == 128 {
            kernels.push(BwdKernel::Wgmma);
        }
        for kernel in kernels {
            let mut dqd = gpu.upload(&vec![NAN_BF16; q.len()]).unwrap();
            let mut dkd = gpu.upload(&vec![NAN_BF16; k.len()]).unwrap();
            let mut dvd = gpu.upload(&vec![NAN_BF16; v.len()]).unwrap();
            gpu.flash_attn_bwd_bf16_with(
                &qd,
                &kd,
                &vd,
                &od,
                &dod,
                &ld,
                &mut dqd,
                &mut dkd,
                &mut dvd,
                flash_dims(d),
                scale,
                c.window,
                kernel,
            )
            .unwrap();
            let eq = rel_err(&want_dq, &from_bf(&gpu.download(&dqd).unwrap()));
            let ek = rel_err(&want_dk, &from_bf(&gpu.download(&dkd).unwrap()));
            let ev = rel_err(&want_dv, &from_bf(&gpu.download(&dvd).unwrap()));
            println!(
                "{d:?} window {:?} {kernel:?}: dq {eq:.2e} dk {ek:.2e} dv {ev:.2e}",
                c.window
            );
            assert!(
                eq < 2e-2 && ek < 2e-2 && ev < 2e-2,
                "rel errs dq {eq} dk {ek} dv {ev} for {d:?} window {:?} {kernel:?}",
                c.window
            );
        }
    }
}
