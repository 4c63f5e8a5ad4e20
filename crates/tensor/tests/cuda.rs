//! CUDA backend against the CPU reference. The GPU tests are `#[ignore]`d (CI has no GPU);
//! scripts/gpu-check runs them on the device machine with `--ignored`.
use half::bf16;
use tensor::cuda::Gpu;

/// Uniform values in [-0.5, 0.5).
fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut r = tensor::rng::SplitMix64::new(seed);
    (0..n).map(|_| r.uniform() as f32 - 0.5).collect()
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

fn to_bf(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

fn from_bf(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

#[test]
#[ignore]
fn embedding_swiglu_rope_match_cpu() {
    let gpu = Gpu::open(0).unwrap();
    // embedding: exact
    let (vocab, d, t) = (50, 64, 9);
    let table = to_bf(&rnd(vocab * d, 1));
    let ids: Vec<u32> = (0..t as u32).map(|i| (i * 17) % vocab as u32).collect();
    let mut out = gpu.zeros::<bf16>(t * d).unwrap();
    gpu.embedding_bf16(
        &gpu.upload(&table).unwrap(),
        &gpu.upload(&ids).unwrap(),
        &mut out,
        t,
        d,
    )
    .unwrap();
    let got = gpu.download(&out).unwrap();
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(
            got[i * d..(i + 1) * d],
            table[id as usize * d..(id as usize + 1) * d]
        );
    }
    // swiglu
    let n = 1000;
    let (g, u) = (
        rnd(n, 2).iter().map(|x| x * 8.0).collect::<Vec<_>>(),
        rnd(n, 3),
    );
    let (g, u) = (from_bf(&to_bf(&g)), from_bf(&to_bf(&u)));
    let mut want = vec![0f32; n];
    tensor::cpu::swiglu(&g, &u, &mut want);
    let mut out = gpu.zeros::<bf16>(n).unwrap();
    gpu.swiglu_bf16(
        &gpu.upload(&to_bf(&g)).unwrap(),
        &gpu.upload(&to_bf(&u)).unwrap(),
        &mut out,
        n,
    )
    .unwrap();
    assert!(rel_err(&want, &from_bf(&gpu.download(&out).unwrap())) < 2e-2);
    // rope, partial rotary, positions offset
    let (t, nh, dh, rot, pos0) = (7, 3, 16, 12, 1000);
    let x = from_bf(&to_bf(&rnd(t * nh * dh, 4)));
    let rope = tensor::cpu::Rope::new(dh, rot, 10000.0);
    let mut want = x.clone();
    rope.apply(&mut want, nh, pos0);
    let inv: Vec<f32> = (0..rot / 2)
        .map(|i| (10000f64.powf(-2.0 * i as f64 / rot as f64)) as f32)
        .collect();
    let mut xd = gpu.upload(&to_bf(&x)).unwrap();
    gpu.rope_bf16(&mut xd, &gpu.upload(&inv).unwrap(), t, nh, dh, rot, pos0, t)
        .unwrap();
    assert!(rel_err(&want, &from_bf(&gpu.download(&xd).unwrap())) < 2e-2);
}

#[test]
#[ignore]
fn cross_entropy_and_adamw_match_cpu() {
    let gpu = Gpu::open(0).unwrap();
    let (n, v) = (6, 1000);
    let logits: Vec<f32> = rnd(n * v, 5).iter().map(|x| x * 10.0).collect();
    let targets: Vec<i64> = vec![3, -100, 999, 0, -100, 512];
    let count = targets.iter().filter(|&&t| t >= 0).count();
    let mut want_loss = vec![0f32; n];
    let mut want_d = vec![0f32; n * v];
    for r in 0..n {
        if targets[r] < 0 {
            continue;
        }
        let lp = tensor::cpu::log_softmax(&logits[r * v..(r + 1) * v]);
        want_loss[r] = -lp[targets[r] as usize] / count as f32;
        for i in 0..v {
            want_d[r * v + i] =
                (lp[i].exp() - if i as i64 == targets[r] { 1.0 } else { 0.0 }) / count as f32;
        }
    }
    let mut loss = gpu.zeros::<f32>(n).unwrap();
    let mut d = gpu.zeros::<f32>(n * v).unwrap();
    gpu.cross_entropy_f32(
        &gpu.upload(&logits).unwrap(),
        &gpu.upload(&targets).unwrap(),
        &mut loss,
        &mut d,
        n,
        v,
        count,
    )
    .unwrap();
    assert!(rel_err(&want_loss, &gpu.download(&loss).unwrap()) < 1e-5);
    assert!(rel_err(&want_d, &gpu.download(&d).unwrap()) < 1e-5);
    // AdamW, three steps, against the PyTorch update written out
    let len = 777;
    let mut p = rnd(len, 6);
    let (mut m, mut vv) = (vec![0f32; len], vec![0f32; len]);
    let (mut pd, mut md, mut vd) = (
        gpu.upload(&p).unwrap(),
        gpu.zeros::<f32>(len).unwrap(),
        gpu.zeros::<f32>(len).unwrap(),
    );
    let (lr, b1, b2, eps, wd) = (1e-2f32, 0.9f32, 0.999f32, 1e-8f32, 0.1f32);
    for step in 1..=3u64 {
        let g = rnd(len, 10 + step);
        for i in 0..len {
            p[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            vv[i] = b2 * vv[i] + (1.0 - b2) * g[i] * g[i];
            let (mh, vh) = (
                m[i] / (1.0 - b1.powi(step as i32)),
                vv[i] / (1.0 - b2.powi(step as i32)),
            );
            p[i] -= lr * mh / (vh.sqrt() + eps);
        }
        gpu.adamw_f32(
            &mut pd,
            &gpu.upload(&g).unwrap(),
            &mut md,
            &mut vd,
            len,
            lr,
            (b1, b2),
            eps,
            wd,
            step,
        )
        .unwrap();
    }
    assert!(rel_err(&p, &gpu.download(&pd).unwrap()) < 1e-5);
}

#[test]
#[ignore]
fn short_conv_with_history_matches_cpu() {
    let gpu = Gpu::open(0).unwrap();
    let (t1, t2, c, kw) = (5, 3, 48, 4);
    let x = from_bf(&to_bf(&rnd((t1 + t2) * c, 7)));
    let w = rnd(c * kw, 8);
    let want = mixers::conv::forward(&x, &w, 1, t1 + t2, c, kw, None).y;
    let mut hist = gpu.zeros::<f32>((kw - 1) * c).unwrap();
    let wd = gpu.upload(&w).unwrap();
    let mut got = vec![];
    for (lo, hi) in [(0, t1), (t1, t1 + t2)] {
        let mut y = gpu.zeros::<bf16>((hi - lo) * c).unwrap();
        gpu.short_conv_bf16(
            &gpu.upload(&to_bf(&x[lo * c..hi * c])).unwrap(),
            &mut hist,
            &wd,
            &mut y,
            hi - lo,
            c,
            kw,
        )
        .unwrap();
        got.extend(from_bf(&gpu.download(&y).unwrap()));
    }
    assert!(rel_err(&want, &got) < 2e-2, "{}", rel_err(&want, &got));
}

/// The KV-cache attention kernel against the CPU core (GQA, window, a cached past, batch 2,
/// contexts up to 6000 keys split over blocks), fed through kv_append like a decode loop
/// would; plus add and argmax.
#[test]
#[ignore]
fn cache_attention_matches_cpu() {
    use mixers::attention_core::{self, Dims};
    let gpu = Gpu::open(0).unwrap();
    let (b, h, hk, d) = (2, 4, 2, 64);
    // Short contexts run in one block per row; long ones split the keys over blocks
    // (flash-decoding) and merge: a single decode step, a few tokens, a window wider than
    // one split.
    for (past, t, window) in [
        (0, 9, 0),
        (11, 1, 0),
        (11, 5, 6),
        (30, 1, 8),
        (3000, 1, 0),
        (2999, 3, 0),
        (3000, 2, 700),
        (6000, 1, 0),
    ] {
        let s = past + t;
        let s_max = s + 3;
        let kall = from_bf(&to_bf(&rnd(b * s * hk * d, 21)));
        let vall = from_bf(&to_bf(&rnd(b * s * hk * d, 22)));
        let q = from_bf(&to_bf(&rnd(b * t * h * d, 23)));
        let w = if window > 0 { Some(window) } else { None };
        let (want, _) = attention_core::forward(
            Dims { b, t, s, h, hk, d },
            &q,
            &kall,
            &vall,
            (d as f32).powf(-0.5),
            w,
        );
        // cache: the past first, then this call's keys through kv_append
        let mut kc = gpu.zeros::<bf16>(b * s_max * hk * d).unwrap();
        let mut vc = gpu.zeros::<bf16>(b * s_max * hk * d).unwrap();
        let row = hk * d;
        let part = |x: &[f32], lo: usize, hi: usize| -> Vec<bf16> {
            to_bf(
                &(0..b)
                    .flat_map(|bi| x[(bi * s + lo) * row..(bi * s + hi) * row].to_vec())
                    .collect::<Vec<_>>(),
            )
        };
        if past > 0 {
            gpu.kv_append_bf16(
                &gpu.upload(&part(&kall, 0, past)).unwrap(),
                &mut kc,
                b,
                past,
                row,
                s_max,
                0,
            )
            .unwrap();
            gpu.kv_append_bf16(
                &gpu.upload(&part(&vall, 0, past)).unwrap(),
                &mut vc,
                b,
                past,
                row,
                s_max,
                0,
            )
            .unwrap();
        }
        gpu.kv_append_bf16(
            &gpu.upload(&part(&kall, past, s)).unwrap(),
            &mut kc,
            b,
            t,
            row,
            s_max,
            past,
        )
        .unwrap();
        gpu.kv_append_bf16(
            &gpu.upload(&part(&vall, past, s)).unwrap(),
            &mut vc,
            b,
            t,
            row,
            s_max,
            past,
        )
        .unwrap();
        let mut o = gpu.zeros::<bf16>(b * t * h * d).unwrap();
        gpu.attention_bf16(
            &gpu.upload(&to_bf(&q)).unwrap(),
            &kc,
            &vc,
            &mut o,
            (b, t, h, hk, d),
            s_max,
            past,
            window,
        )
        .unwrap();
        let got = from_bf(&gpu.download(&o).unwrap());
        assert!(
            rel_err(&want, &got) < 2e-2,
            "past {past} t {t} window {window}: {}",
            rel_err(&want, &got)
        );
    }
    // add and argmax
    let x = rnd(3 * 1000, 30);
    let y = rnd(3 * 1000, 31);
    let mut yd = gpu.upload(&to_bf(&y)).unwrap();
    gpu.add_bf16(&mut yd, &gpu.upload(&to_bf(&x)).unwrap(), 3000)
        .unwrap();
    let sum = from_bf(&gpu.download(&yd).unwrap());
    let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    assert!(rel_err(&want, &sum) < 2e-2);
    let mut am = gpu.zeros::<u32>(3).unwrap();
    gpu.argmax_bf16(&yd, &mut am, 3, 1000).unwrap();
    let got = gpu.download(&am).unwrap();
    for r in 0..3 {
        let row = &sum[r * 1000..(r + 1) * 1000];
        let best = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(row[got[r] as usize], best);
    }
}
