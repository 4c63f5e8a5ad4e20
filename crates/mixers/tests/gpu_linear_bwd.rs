//! The chunked GDN / KDA / GLA backward on the GPU (tensor/cuda/kernels/chunk_linear_bwd.cu)
//! against the CPU reverse mode `linear_core::backward`: every gradient (dq, dk, dv, dg, dβ,
//! dh0). `#[ignore]`d: CI has no GPU; they run on the device machine.
mod common;

use common::{l2_normalize_rows, max_rel_err, to64, Rng};
use half::bf16;
use mixers::linear_core::{self, Dims, Inputs};
use tensor::cuda::{ChunkDims, Gpu};

/// bf16 tolerance of the GPU issue (max abs error / max abs value).
const TOL: f64 = 2e-2;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Gdn,
    Kda,
    Gla,
}

/// Inputs rounded to bf16 where the kernels take bf16 (q, k, v, do), so that the reference
/// sees exactly what the GPU sees.
struct Case {
    d: Dims,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Per key channel [B,T,HV,K] (GDN: broadcast); `g_head` is GDN's [B,T,HV].
    g: Vec<f32>,
    g_head: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
    h0: Vec<f32>,
    d_o: Vec<f32>,
    dht: Option<Vec<f32>>,
}

fn round_bf16(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32());
}

fn case(kind: Kind, d: Dims, seed: u64, with_dht: bool) -> Case {
    let mut r = Rng::new(seed);
    let mut q = r.normals(d.b * d.t * d.h * d.k, 1.0);
    let mut k = r.normals(d.b * d.t * d.h * d.k, 1.0);
    l2_normalize_rows(&mut q, d.k);
    l2_normalize_rows(&mut k, d.k);
    let mut v = r.normals(d.b * d.t * d.hv * d.v, 1.0);
    let mut d_o = r.normals(d.b * d.t * d.hv * d.v, 1.0);
    for x in [&mut q, &mut k, &mut v, &mut d_o] {
        round_bf16(x);
    }
    let mut logsig = || (-(1.0 + r.normal().exp()).ln() * 0.5) as f32;
    let (g, g_head) = if kind == Kind::Gdn {
        let gh: Vec<f32> = (0..d.b * d.t * d.hv).map(|_| logsig()).collect();
        let g = gh
            .iter()
            .flat_map(|&x| std::iter::repeat_n(x, d.k))
            .collect();
        (g, Some(gh))
    } else {
        (
            (0..d.b * d.t * d.hv * d.k).map(|_| logsig()).collect(),
            None,
        )
    };
    let beta = (kind != Kind::Gla).then(|| {
        (0..d.b * d.t * d.hv)
            .map(|_| (0.05 + 0.9 * r.uniform()) as f32)
            .collect()
    });
    let h0 = r.normals(d.state_len(), 0.1);
    let dht = with_dht.then(|| r.normals(d.state_len(), 0.5));
    Case {
        d,
        q,
        k,
        v,
        g,
        g_head,
        beta,
        h0,
        d_o,
        dht,
    }
}

/// Gradients in the CPU's layouts (dg per key channel; dβ empty for GLA).
struct Got {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dg: Vec<f32>,
    dbeta: Vec<f32>,
    dh0: Vec<f32>,
}

impl Case {
    fn cpu(&self, scale: f32) -> linear_core::Grads {
        let x = Inputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            g: &self.g,
            beta: self.beta.as_deref(),
        };
        let fwd = linear_core::chunked(self.d, x, scale, Some(&self.h0), 64);
        linear_core::backward(self.d, x, scale, &fwd, &self.d_o, self.dht.as_deref())
    }

    fn gpu(&self, gpu: &Gpu, scale: f32) -> Got {
        let d = self.d;
        let bf = |x: &[f32]| -> Vec<bf16> { x.iter().map(|&v| bf16::from_f32(v)).collect() };
        let cd = ChunkDims {
            b: d.b,
            t: d.t,
            h: d.h,
            hv: d.hv,
            k: d.k,
            v: d.v,
        };
        let q = gpu.upload(&bf(&self.q)).unwrap();
        let k = gpu.upload(&bf(&self.k)).unwrap();
        let v = gpu.upload(&bf(&self.v)).unwrap();
        let d_o = gpu.upload(&bf(&self.d_o)).unwrap();
        let per_head = self.g_head.is_some();
        let g = gpu.upload(self.g_head.as_ref().unwrap_or(&self.g)).unwrap();
        let beta = self.beta.as_ref().map(|b| gpu.upload(b).unwrap());
        let dht = self.dht.as_ref().map(|s| gpu.upload(s).unwrap());
        let mut st = gpu.upload(&self.h0).unwrap();
        let mut o = gpu.zeros::<bf16>(d.b * d.t * d.hv * d.v).unwrap();
        let mut scratch = gpu.chunk_linear_scratch(cd).unwrap();
        scratch.keep_states(gpu).unwrap();
        gpu.chunk_linear_fwd(
            cd,
            &q,
            &k,
            &v,
            &g,
            per_head,
            beta.as_ref(),
            scale,
            &mut st,
            &mut o,
            &mut scratch,
        )
        .unwrap();
        let mut gr = gpu.chunk_linear_grads(cd, per_head).unwrap();
        gpu.chunk_linear_bwd(
            cd,
            &q,
            &k,
            &v,
            &g,
            per_head,
            beta.as_ref(),
            scale,
            &scratch,
            &d_o,
            dht.as_ref(),
            &mut gr,
        )
        .unwrap();
        Got {
            dq: gpu.download(&gr.dq).unwrap(),
            dk: gpu.download(&gr.dk).unwrap(),
            dv: gpu.download(&gr.dv).unwrap(),
            dg: gpu.download(&gr.dg).unwrap(),
            dbeta: gpu.download(&gr.dbeta).unwrap(),
            dh0: gpu.download(&gr.dh0).unwrap(),
        }
    }
}

fn check(kind: Kind, d: Dims, seed: u64, with_dht: bool) {
    let gpu = Gpu::open(0).unwrap();
    let c = case(kind, d, seed, with_dht);
    let scale = (d.k as f32).powf(-0.5);
    let want = c.cpu(scale);
    let got = c.gpu(&gpu, scale);
    // GDN's dg is one value per (token, head): the CPU's per-channel gradients summed.
    let dg_want: Vec<f32> = if kind == Kind::Gdn {
        want.dg.chunks_exact(d.k).map(|r| r.iter().sum()).collect()
    } else {
        want.dg.clone()
    };
    let mut errs = vec![
        ("dq", max_rel_err(&to64(&want.dq), &got.dq)),
        ("dk", max_rel_err(&to64(&want.dk), &got.dk)),
        ("dv", max_rel_err(&to64(&want.dv), &got.dv)),
        ("dg", max_rel_err(&to64(&dg_want), &got.dg)),
        ("dh0", max_rel_err(&to64(&want.dh0), &got.dh0)),
    ];
    if let Some(db) = &want.dbeta {
        errs.push(("dbeta", max_rel_err(&to64(db), &got.dbeta)));
    }
    let line: Vec<String> = errs.iter().map(|(n, e)| format!("{n} {e:.2e}")).collect();
    eprintln!("{kind:?} {d:?} dht={with_dht}: {}", line.join(", "));
    for (n, e) in errs {
        assert!(e < TOL, "{kind:?} {d:?}: {n} max rel err {e}");
    }
}

fn dims(b: usize, t: usize, h: usize, hv: usize, k: usize, v: usize) -> Dims {
    Dims { b, t, h, hv, k, v }
}

#[test]
#[ignore]
fn gdn_backward_matches_cpu() {
    check(Kind::Gdn, dims(2, 150, 1, 2, 64, 64), 1, false);
    check(Kind::Gdn, dims(1, 200, 2, 2, 128, 128), 2, true);
    check(Kind::Gdn, dims(1, 40, 1, 1, 100, 32), 3, false);
}

#[test]
#[ignore]
fn kda_backward_matches_cpu() {
    check(Kind::Kda, dims(2, 150, 1, 2, 64, 64), 4, true);
    check(Kind::Kda, dims(1, 130, 1, 1, 128, 128), 5, false);
}

#[test]
#[ignore]
fn gla_backward_matches_cpu() {
    check(Kind::Gla, dims(2, 150, 1, 2, 64, 64), 6, false);
    check(Kind::Gla, dims(1, 100, 1, 1, 128, 128), 7, true);
}
