//! Named parameters of a layer or model, keyed by their checkpoint names (Hugging Face style),
//! so that saving, loading, optimisers, freezing and gradient checks iterate one map.
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    pub map: BTreeMap<String, Param>,
}

impl Params {
    pub fn insert(&mut self, name: &str, shape: &[usize], data: Vec<f32>) {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "{name}: shape {shape:?} vs {} values",
            data.len()
        );
        self.map.insert(
            name.to_string(),
            Param {
                shape: shape.to_vec(),
                data,
            },
        );
    }

    pub fn get(&self, name: &str) -> &[f32] {
        &self
            .map
            .get(name)
            .unwrap_or_else(|| panic!("parameter '{name}' is missing"))
            .data
    }

    pub fn get_mut(&mut self, name: &str) -> &mut [f32] {
        &mut self
            .map
            .get_mut(name)
            .unwrap_or_else(|| panic!("parameter '{name}' is missing"))
            .data
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Same names and shapes, all zeros (a gradient buffer).
    pub fn zeros_like(&self) -> Params {
        Params {
            map: self
                .map
                .iter()
                .map(|(k, p)| {
                    (
                        k.clone(),
                        Param {
                            shape: p.shape.clone(),
                            data: vec![0.0; p.data.len()],
                        },
                    )
                })
                .collect(),
        }
    }

    pub fn n_params(&self) -> usize {
        self.map.values().map(|p| p.data.len()).sum()
    }

    /// Adds `other` (same names) into self.
    pub fn add(&mut self, other: &Params) {
        for (k, p) in &other.map {
            let d = self.get_mut(k);
            d.iter_mut().zip(&p.data).for_each(|(a, b)| *a += b);
        }
    }

    /// Prefixes every name (`q_proj.weight` -> `model.layers.3.self_attn.q_proj.weight`).
    pub fn prefixed(self, prefix: &str) -> Params {
        Params {
            map: self
                .map
                .into_iter()
                .map(|(k, p)| (format!("{prefix}{k}"), p))
                .collect(),
        }
    }

    /// The entries whose names start with `prefix`, with the prefix removed.
    pub fn strip_prefix(&self, prefix: &str) -> Params {
        Params {
            map: self
                .map
                .iter()
                .filter_map(|(k, p)| k.strip_prefix(prefix).map(|s| (s.to_string(), p.clone())))
                .collect(),
        }
    }
}

/// The initialisation RNG: the project's SplitMix64, so a seed gives the same weights on
/// every platform.
pub type InitRng = tensor::rng::SplitMix64;

/// `y[N, out] = x[N, in] · Wᵀ` (+ bias).
pub fn linear(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    out: usize,
    inp: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; n * out];
    tensor::cpu::matmul_nt(x, w, &mut y, n, out, inp, false);
    if let Some(b) = bias {
        y.chunks_exact_mut(out)
            .for_each(|r| r.iter_mut().zip(b).for_each(|(a, c)| *a += c));
    }
    y
}

/// Backward of [`linear`]: accumulates dW (and dbias), returns dx.
pub fn linear_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    n: usize,
    out: usize,
    inp: usize,
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
) -> Vec<f32> {
    tensor::cpu::matmul_tn(dy, x, dw, out, inp, n, true);
    if let Some(db) = dbias {
        dy.chunks_exact(out)
            .for_each(|r| db.iter_mut().zip(r).for_each(|(a, c)| *a += c));
    }
    let mut dx = vec![0f32; n * inp];
    tensor::cpu::matmul_nn(dy, w, &mut dx, n, inp, out, false);
    dx
}
