//! RMSNorm: `y = x / sqrt(mean(x^2) + eps) * w` per row of width D.

/// x: [T, D], w: [D] -> out: [T, D]. The sum of squares accumulates in f64, as ggml does.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, yr) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = (xr.iter().map(|&v| (v * v) as f64).sum::<f64>() / d as f64) as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for ((y, xv), wv) in yr.iter_mut().zip(xr).zip(w) {
            *y = (xv * r) * wv;
        }
    }
}

/// Backward of [`rms_norm`]: given dy [T, D], accumulates dw [D] and writes dx [T, D].
pub fn rms_norm_backward(
    x: &[f32],
    w: &[f32],
    eps: f32,
    dy: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
) {
    let d = w.len();
    for ((xr, dyr), dxr) in x
        .chunks_exact(d)
        .zip(dy.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
    {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let r = 1.0 / (ms + eps).sqrt();
        // y = x r w ; dx = r (w dy) - x r^3 / d * sum(w dy x)
        let mut s = 0.0;
        for i in 0..d {
            s += w[i] * dyr[i] * xr[i];
            dw[i] += dyr[i] * xr[i] * r;
        }
        let c = r * r * r * s / d as f32;
        for i in 0..d {
            dxr[i] = r * w[i] * dyr[i] - xr[i] * c;
        }
    }
}
