//! Split-invariant arithmetic (tensor::cuda::invariant): the invariant GEMM against the CPU,
//! its outputs unchanged bit for bit by the shape they are computed in, K units summed by the
//! tree equal to the ranks' subtree sums added by the same tree, the tree kernel against the
//! host's tree, and the split-K attention unchanged by the number of heads beside a head.
//! `#[ignore]`d: they need a GPU (scripts/gpu-check runs them).
use half::bf16;
use tensor::cuda::invariant::tree_sum_host;
use tensor::cuda::Gpu;

fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut r = tensor::rng::SplitMix64::new(seed);
    (0..n).map(|_| r.uniform() as f32 - 0.5).collect()
}

fn to_bf(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// Columns `c` of a row-major [rows, cols] matrix.
fn cols(x: &[bf16], ncols: usize, c: std::ops::Range<usize>) -> Vec<bf16> {
    x.chunks_exact(ncols)
        .flat_map(|r| r[c.clone()].to_vec())
        .collect()
}

fn gpu() -> Gpu {
    let g = Gpu::open(0).unwrap();
    g.set_split_invariant(true);
    g
}

/// a[M, K] · b[N, K]ᵀ on the GPU in f32, K cut at `starts`.
fn product(
    g: &Gpu,
    a: &[bf16],
    b: &[bf16],
    (m, n, k): (usize, usize, usize),
    starts: &[usize],
) -> Vec<f32> {
    let (ad, bd) = (g.upload(a).unwrap(), g.upload(b).unwrap());
    let mut c = g.zeros::<f32>(m * n).unwrap();
    g.matmul_units_f32(&ad, &bd, &mut c, (m, n, k), starts)
        .unwrap();
    g.download(&c).unwrap()
}

#[test]
#[ignore]
fn invariant_gemm_matches_the_cpu() {
    let g = gpu();
    // Ragged everything; K = 150 is not a multiple of 8 (the element-by-element loads).
    for (m, n, k) in [
        (1, 576, 576),
        (70, 130, 150),
        (129, 64, 64),
        (5, 1000, 1536),
    ] {
        let (a, b) = (to_bf(&rnd(m * k, 1)), to_bf(&rnd(n * k, 2)));
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k)
                    .map(|x| a[i * k + x].to_f32() as f64 * b[j * k + x].to_f32() as f64)
                    .sum::<f64>() as f32;
            }
        }
        let scale = want.iter().fold(0f32, |s, v| s.max(v.abs()));
        let got = product(&g, &a, &b, (m, n, k), &[0, k]);
        let e = want
            .iter()
            .zip(&got)
            .fold(0f32, |s, (x, y)| s.max((x - y).abs()))
            / scale;
        eprintln!("m={m} n={n} k={k}: f32 rel err {e:.2e}");
        assert!(e < 1e-5, "f32 {e}");
        // The bf16 entry point (what matmul_nt_bf16 runs in this mode).
        let mut cb = g.zeros::<bf16>(m * n).unwrap();
        g.matmul_nt_bf16(
            &g.upload(&a).unwrap(),
            &g.upload(&b).unwrap(),
            &mut cb,
            m,
            n,
            k,
        )
        .unwrap();
        let got: Vec<f32> = g
            .download(&cb)
            .unwrap()
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let e = want
            .iter()
            .zip(&got)
            .fold(0f32, |s, (x, y)| s.max((x - y).abs()))
            / scale;
        assert!(e < 1e-2, "bf16 {e}");
    }
}

#[test]
#[ignore]
fn invariant_gemm_outputs_do_not_depend_on_the_shape() {
    let g = gpu();
    let (m, n, k) = (96, 384, 576);
    let (a, b) = (to_bf(&rnd(m * k, 3)), to_bf(&rnd(n * k, 4)));
    let whole = product(&g, &a, &b, (m, n, k), &[0, k]);
    // A column-parallel rank's rows of b, and a smaller batch's rows of a: the same bits.
    for (rows, outs) in [
        (0..96, 0..192),
        (0..96, 192..384),
        (7..8, 100..300),
        (33..90, 1..2),
    ] {
        let sub = product(
            &g,
            &a[rows.start * k..rows.end * k],
            &b[outs.start * k..outs.end * k],
            (rows.len(), outs.len(), k),
            &[0, k],
        );
        for (i, r) in rows.clone().enumerate() {
            for (j, c) in outs.clone().enumerate() {
                assert_eq!(
                    sub[i * outs.len() + j].to_bits(),
                    whole[r * n + c].to_bits(),
                    "rows {rows:?} outs {outs:?}: ({r}, {c})"
                );
            }
        }
    }
    // For the record: whether cuBLAS keeps this property for the same slices.
    g.set_split_invariant(false);
    let (ad, bd) = (g.upload(&a).unwrap(), g.upload(&b).unwrap());
    let mut c = g.zeros::<f32>(m * n).unwrap();
    g.matmul_nt_bf16_f32(&ad, &bd, &mut c, m, n, k).unwrap();
    let cub = g.download(&c).unwrap();
    let half = g.upload(&b[192 * k..]).unwrap();
    let mut c2 = g.zeros::<f32>(m * 192).unwrap();
    g.matmul_nt_bf16_f32(&ad, &half, &mut c2, m, 192, k)
        .unwrap();
    let cub2 = g.download(&c2).unwrap();
    let differ = (0..m)
        .flat_map(|i| (0..192).map(move |j| (i, j)))
        .filter(|&(i, j)| cub2[i * 192 + j].to_bits() != cub[i * n + 192 + j].to_bits())
        .count();
    eprintln!(
        "cuBLAS: {differ} of {} outputs change bits when N halves",
        m * 192
    );
}

#[test]
#[ignore]
fn units_summed_by_the_tree_equal_the_ranks_subtree_sums() {
    let g = gpu();
    let (m, n) = (37, 200);
    // 3 uneven head groups (split 1 + 2 over two ranks) and 8 MLP-like blocks of a K that is
    // not a multiple of 8 (over 2 and 4 ranks).
    for (starts, worlds) in [
        (vec![0, 64, 160, 192], vec![2]),
        (vec![0, 18, 37, 56, 75, 93, 112, 131, 150], vec![2, 4]),
    ] {
        let k = *starts.last().unwrap();
        let (a, b) = (to_bf(&rnd(m * k, 5)), to_bf(&rnd(n * k, 6)));
        let whole = product(&g, &a, &b, (m, n, k), &starts);
        let units = starts.len() - 1;
        for world in worlds {
            // Rank r's units are the tree's node at depth log2(world): its K columns alone.
            let mut parts = vec![];
            for r in 0..world {
                let (mut lo, mut hi, mut bit) = (0, units, world >> 1);
                while bit > 0 {
                    let mid = lo + (hi - lo) / 2;
                    if r & bit != 0 {
                        lo = mid
                    } else {
                        hi = mid
                    }
                    bit >>= 1;
                }
                let kr = starts[lo]..starts[hi];
                let local: Vec<usize> = starts[lo..=hi].iter().map(|s| s - kr.start).collect();
                parts.extend(product(
                    &g,
                    &cols(&a, k, kr.clone()),
                    &cols(&b, k, kr.clone()),
                    (m, n, kr.len()),
                    &local,
                ));
            }
            let pd = g.upload(&parts).unwrap();
            let mut sum = g.zeros::<f32>(m * n).unwrap();
            g.tree_sum_f32(&pd, world, &mut sum).unwrap();
            let sum = g.download(&sum).unwrap();
            let same = sum
                .iter()
                .zip(&whole)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{units} units over {world} ranks: the sums differ");
        }
        // And the tree matters: adding the units left to right gives other bits somewhere.
        let mut seq = vec![0f32; m * n];
        for u in 0..units {
            let kr = starts[u]..starts[u + 1];
            let p = product(
                &g,
                &cols(&a, k, kr.clone()),
                &cols(&b, k, kr.clone()),
                (m, n, kr.len()),
                &[0, kr.len()],
            );
            seq.iter_mut().zip(p).for_each(|(s, x)| *s += x);
        }
        let differ = seq
            .iter()
            .zip(&whole)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        eprintln!(
            "{units} units: left-to-right sums differ from the tree's in {differ} of {}",
            m * n
        );
    }
}

#[test]
#[ignore]
fn the_tree_kernel_adds_like_the_host_tree() {
    let g = gpu();
    let count = 1000;
    for units in [1, 2, 3, 5, 8, 13, 64] {
        // Values of mixed magnitude so that the association shows in the bits.
        let parts: Vec<f32> = rnd(units * count, units as u64)
            .iter()
            .enumerate()
            .map(|(i, v)| v * 10f32.powi((i % 7) as i32 - 3))
            .collect();
        let mut out = g.zeros::<f32>(count).unwrap();
        g.tree_sum_f32(&g.upload(&parts).unwrap(), units, &mut out)
            .unwrap();
        let got = g.download(&out).unwrap();
        for (i, x) in got.iter().enumerate() {
            let col: Vec<f32> = (0..units).map(|u| parts[u * count + i]).collect();
            assert_eq!(
                x.to_bits(),
                tree_sum_host(&col).to_bits(),
                "{units} units, value {i}"
            );
        }
    }
    let mut out = g.zeros::<f32>(4).unwrap();
    let e = g
        .tree_sum_f32(&g.zeros::<f32>(65 * 4).unwrap(), 65, &mut out)
        .unwrap_err();
    assert!(e.to_string().contains("65 units"), "{e}");
}

#[test]
#[ignore]
fn split_k_attention_does_not_depend_on_the_other_heads() {
    // One key/value head's query heads alone (a rank's share) against all six heads: with long
    // contexts the keys are split over blocks, and the split must not follow the head count.
    let g = gpu();
    let (b, h, hk, d) = (1, 6, 3, 64);
    for (past, t) in [(3000, 1), (6000, 1), (2999, 3)] {
        let cap = past + t;
        let kc = to_bf(&rnd(b * cap * hk * d, 7));
        let vc = to_bf(&rnd(b * cap * hk * d, 8));
        let q = to_bf(&rnd(b * t * h * d, 9));
        let run = |q: &[bf16], kc: &[bf16], vc: &[bf16], h: usize, hk: usize| -> Vec<bf16> {
            let mut o = g.zeros::<bf16>(b * t * h * d).unwrap();
            g.attention_bf16(
                &g.upload(q).unwrap(),
                &g.upload(kc).unwrap(),
                &g.upload(vc).unwrap(),
                &mut o,
                (b, t, h, hk, d),
                cap,
                past,
                0,
            )
            .unwrap();
            g.download(&o).unwrap()
        };
        let all = run(&q, &kc, &vc, h, hk);
        // Key/value head 1 and its query heads 2, 3.
        let one = run(
            &cols(&q, h * d, 2 * d..4 * d),
            &cols(&kc, hk * d, d..2 * d),
            &cols(&vc, hk * d, d..2 * d),
            2,
            1,
        );
        let want = cols(&all, h * d, 2 * d..4 * d);
        assert!(
            one.iter()
                .zip(&want)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "past {past}, t {t}: a head's output changed with the heads beside it"
        );
    }
}
