//! Small elementwise and per-row ops of the mixer layers, each with its backward.

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// softplus with FLA's threshold: identity above 20 (fla/ops/utils/softplus.py).
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// d softplus / dx (sigmoid; 1 above the threshold).
pub fn softplus_grad(x: f32) -> f32 {
    if x > 20.0 {
        1.0
    } else {
        sigmoid(x)
    }
}

/// log(sigmoid(x)), stable for large |x|.
pub fn logsigmoid(x: f32) -> f32 {
    -softplus(-x)
}

/// L2-normalises each row of width `w` in place: `x / sqrt(Σx² + 1e-6)` (FLA's l2norm eps).
/// Returns the per-row inverse norms for the backward.
pub fn l2norm_rows(x: &mut [f32], w: usize) -> Vec<f32> {
    x.chunks_exact_mut(w)
        .map(|r| {
            let inv = 1.0 / (r.iter().map(|v| v * v).sum::<f32>() + 1e-6).sqrt();
            r.iter_mut().for_each(|v| *v *= inv);
            inv
        })
        .collect()
}

/// Backward of [`l2norm_rows`]: y = x·inv, dx = inv·(dy − y (y·dy)).
pub fn l2norm_rows_backward(y: &[f32], inv: &[f32], dy: &[f32], w: usize) -> Vec<f32> {
    let mut dx = vec![0f32; y.len()];
    for (((yr, dyr), dxr), &n) in y
        .chunks_exact(w)
        .zip(dy.chunks_exact(w))
        .zip(dx.chunks_exact_mut(w))
        .zip(inv)
    {
        let s = tensor::cpu::dot(yr, dyr);
        for i in 0..w {
            dxr[i] = n * (dyr[i] - yr[i] * s);
        }
    }
    dx
}

/// Output gate activation of a gated RMSNorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateAct {
    /// `silu(z)` (GDN, GLA: FLA's "swish")
    Silu,
    /// `sigmoid(z)` (KDA)
    Sigmoid,
}

impl GateAct {
    fn f(self, z: f32) -> f32 {
        match self {
            GateAct::Silu => z * sigmoid(z),
            GateAct::Sigmoid => sigmoid(z),
        }
    }
    fn df(self, z: f32) -> f32 {
        match self {
            GateAct::Silu => tensor::cpu::silu_grad(z),
            GateAct::Sigmoid => sigmoid(z) * (1.0 - sigmoid(z)),
        }
    }
}

/// Gated RMSNorm per row of width w: `y = rmsnorm(o)·weight ⊙ act(z)` (norm before gate,
/// FLA `FusedRMSNormGated`). Returns y and the per-row inverse RMS.
pub fn gated_rmsnorm(
    o: &[f32],
    z: &[f32],
    weight: &[f32],
    eps: f32,
    act: GateAct,
) -> (Vec<f32>, Vec<f32>) {
    let w = weight.len();
    let mut y = vec![0f32; o.len()];
    let mut rs = Vec::with_capacity(o.len() / w);
    for ((or, zr), yr) in o
        .chunks_exact(w)
        .zip(z.chunks_exact(w))
        .zip(y.chunks_exact_mut(w))
    {
        let r = 1.0 / (or.iter().map(|v| v * v).sum::<f32>() / w as f32 + eps).sqrt();
        for i in 0..w {
            yr[i] = or[i] * r * weight[i] * act.f(zr[i]);
        }
        rs.push(r);
    }
    (y, rs)
}

/// Backward of [`gated_rmsnorm`]: returns (do, dz) and accumulates dweight.
pub fn gated_rmsnorm_backward(
    o: &[f32],
    z: &[f32],
    weight: &[f32],
    rs: &[f32],
    dy: &[f32],
    act: GateAct,
    dweight: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let w = weight.len();
    let mut d_o = vec![0f32; o.len()];
    let mut dz = vec![0f32; z.len()];
    for (row, &r) in rs.iter().enumerate() {
        let (or, zr, dyr) = (&o[row * w..][..w], &z[row * w..][..w], &dy[row * w..][..w]);
        // n = o·r (normalised); y = n·weight·a(z)
        let mut dn = vec![0f32; w];
        for i in 0..w {
            let a = act.f(zr[i]);
            let n = or[i] * r;
            dweight[i] += dyr[i] * n * a;
            dz[row * w + i] = dyr[i] * n * weight[i] * act.df(zr[i]);
            dn[i] = dyr[i] * weight[i] * a;
        }
        // n = o·r, r = (mean(o²)+eps)^-1/2: do = r·dn − o·r³·(Σ dn·o)/w
        let s: f32 = dn.iter().zip(or).map(|(a, b)| a * b).sum();
        for i in 0..w {
            d_o[row * w + i] = r * dn[i] - or[i] * r * r * r * s / w as f32;
        }
    }
    (d_o, dz)
}
