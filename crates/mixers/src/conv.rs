//! Short causal depthwise convolution followed by SiLU (FLA `ShortConvolution`, kernel W=4):
//! `y[t,c] = silu(Σ_w weight[c,w] · x[t − (W−1) + w, c])`, with x before the sequence taken
//! from `state` (the last W−1 inputs of the previous call; zeros at the start).
//!
//! Layouts: x, y [B, T, C]; weight [C, W] (checkpoints store [C, 1, W]); state [B, W−1, C].

pub struct ConvOut {
    pub y: Vec<f32>,
    /// Pre-activation values, kept for the backward pass.
    pub pre: Vec<f32>,
}

/// Forward over T tokens of B sequences; `state` (if given) is read as history and updated.
pub fn forward(
    x: &[f32],
    weight: &[f32],
    b: usize,
    t: usize,
    c: usize,
    w: usize,
    state: Option<&mut [f32]>,
) -> ConvOut {
    let hist = w - 1;
    let mut pre = vec![0f32; b * t * c];
    let st: Option<&[f32]> = state.as_deref();
    for bi in 0..b {
        for ti in 0..t {
            for ch in 0..c {
                let mut acc = 0f32;
                for wi in 0..w {
                    let src = ti as isize - hist as isize + wi as isize;
                    let xv = if src >= 0 {
                        x[(bi * t + src as usize) * c + ch]
                    } else {
                        st.map_or(0.0, |s| {
                            s[(bi * hist + (hist as isize + src) as usize) * c + ch]
                        })
                    };
                    acc += weight[ch * w + wi] * xv;
                }
                pre[(bi * t + ti) * c + ch] = acc;
            }
        }
    }
    if let Some(s) = state {
        // New history: the last W−1 inputs of (old history ++ x).
        let old = s.to_vec();
        for bi in 0..b {
            for j in 0..hist {
                let src = t as isize - hist as isize + j as isize;
                for ch in 0..c {
                    s[(bi * hist + j) * c + ch] = if src >= 0 {
                        x[(bi * t + src as usize) * c + ch]
                    } else {
                        old[(bi * hist + (hist as isize + src) as usize) * c + ch]
                    };
                }
            }
        }
    }
    let y = pre.iter().map(|&p| tensor::cpu::silu(p)).collect();
    ConvOut { y, pre }
}

/// Backward of [`forward`] (zero initial history): returns (dx, dweight).
pub fn backward(
    x: &[f32],
    weight: &[f32],
    pre: &[f32],
    dy: &[f32],
    b: usize,
    t: usize,
    c: usize,
    w: usize,
) -> (Vec<f32>, Vec<f32>) {
    let hist = w - 1;
    let dpre: Vec<f32> = pre
        .iter()
        .zip(dy)
        .map(|(&p, &g)| g * tensor::cpu::silu_grad(p))
        .collect();
    let mut dx = vec![0f32; x.len()];
    let mut dw = vec![0f32; weight.len()];
    for bi in 0..b {
        for ti in 0..t {
            for ch in 0..c {
                let g = dpre[(bi * t + ti) * c + ch];
                for wi in 0..w {
                    let src = ti as isize - hist as isize + wi as isize;
                    if src >= 0 {
                        let xi = (bi * t + src as usize) * c + ch;
                        dw[ch * w + wi] += g * x[xi];
                        dx[xi] += g * weight[ch * w + wi];
                    }
                }
            }
        }
    }
    (dx, dw)
}
