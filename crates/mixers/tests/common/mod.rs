//! Test helpers: a seeded RNG, random inputs shaped like FLA's test recipe, error metrics,
//! and safetensors fixture reading.
#![allow(dead_code)]

/// The project's SplitMix64 with a mixed seed, plus the helpers the tests use.
pub struct Rng(tensor::rng::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(tensor::rng::SplitMix64::new(
            seed.wrapping_mul(0x9E3779B97F4A7C15) ^ 0xD1B54A32D192ED03,
        ))
    }
    pub fn uniform(&mut self) -> f64 {
        self.0.uniform()
    }
    pub fn normal(&mut self) -> f64 {
        self.0.normal()
    }
    pub fn normals(&mut self, n: usize, scale: f64) -> Vec<f32> {
        self.0.normals(n, scale)
    }
    pub fn below(&mut self, n: usize) -> usize {
        self.0.below(n as u64) as usize
    }
}

pub fn l2_normalize_rows(x: &mut [f32], width: usize) {
    for r in x.chunks_exact_mut(width) {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
        r.iter_mut().for_each(|v| *v /= n);
    }
}

pub fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// FLA's err_ratio: RMSE(ref − out) / RMS(ref).
pub fn err_ratio(want: &[f64], got: &[f32]) -> f64 {
    assert_eq!(want.len(), got.len());
    let num: f64 = want
        .iter()
        .zip(got)
        .map(|(a, &b)| (a - b as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|a| a * a).sum();
    (num / den.max(1e-300)).sqrt()
}

pub fn max_rel_err(want: &[f64], got: &[f32]) -> f64 {
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    want.iter()
        .zip(got)
        .map(|(a, &b)| (a - b as f64).abs())
        .fold(0.0, f64::max)
        / scale
}

pub fn read_safetensors(
    path: &std::path::Path,
) -> std::collections::HashMap<String, (Vec<f32>, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            let v = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, (v, t.shape().to_vec()))
        })
        .collect()
}

pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}
