//! Weight matrices as a linear layer sees them: dense f32, or GGML-quantized rows.
use super::q8dot::{dot_row, dot_rows4, quantize_q8};
use super::{dequantize, GgmlType};
use crate::{cpu, Error, Result, Tensor};
use rayon::prelude::*;

/// A quantized weight matrix `[rows, cols]` in GGML block layout, rows contiguous.
/// Only types with a fast integer dot product (Q4_0, Q4_1, Q8_0) are kept quantized;
/// the loader dequantises the rest.
#[derive(Clone, Debug)]
pub struct QMatrix {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
}

impl QMatrix {
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        if !Self::supports(ty) {
            return Err(Error::Msg(format!("{ty:?} has no quantized matmul path")));
        }
        let need = ty.bytes_for(cols)? * rows;
        if data.len() != need {
            return Err(Error::Msg(format!(
                "{ty:?} matrix {rows}x{cols} needs {need} bytes, got {}",
                data.len()
            )));
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            data,
        })
    }

    pub fn supports(ty: GgmlType) -> bool {
        matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
    }

    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows
    }

    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Dequantises row `r` into `out` ([cols]).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize(self.ty, self.row(r), out).expect("row length checked at construction");
    }

    pub fn to_dense(&self) -> Tensor {
        let mut v = vec![0.0; self.rows * self.cols];
        for (r, o) in v.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(r, o);
        }
        Tensor::from_vec(v, &[self.rows, self.cols]).expect("shape matches")
    }

    /// x: [T, cols] -> out: [T, rows], via 8-bit activations and integer block dots.
    pub fn matmul_nt(&self, x: &[f32], t: usize, out: &mut [f32]) {
        let xq: Vec<Vec<_>> = x.chunks_exact(self.cols).map(quantize_q8).collect();
        let rb = self.row_bytes();
        if t == 1 {
            // A few chunks per thread: enough to balance, few enough that fork/join is cheap.
            let chunk = self.rows.div_ceil(4 * rayon::current_num_threads()).max(16);
            out.par_chunks_mut(chunk).enumerate().for_each(|(c, o)| {
                for (i, oi) in o.iter_mut().enumerate() {
                    let r = c * chunk + i;
                    *oi = dot_row(self.ty, &self.data[r * rb..(r + 1) * rb], &xq[0]);
                }
            });
            return;
        }
        // Many tokens: each task owns a block of weight rows (kept hot in cache) and walks
        // every token; the result is produced transposed and flipped back.
        let mut tr = vec![0f32; self.rows * t];
        tr.par_chunks_mut(8 * t).enumerate().for_each(|(c, o)| {
            for (i, orow) in o.chunks_exact_mut(t).enumerate() {
                let r = c * 8 + i;
                let w = &self.data[r * rb..(r + 1) * rb];
                // Four tokens per pass over the weight row (its blocks unpacked once).
                let full = t / 4 * 4;
                for t0 in (0..full).step_by(4) {
                    let four =
                        dot_rows4(self.ty, w, [&xq[t0], &xq[t0 + 1], &xq[t0 + 2], &xq[t0 + 3]]);
                    orow[t0..t0 + 4].copy_from_slice(&four);
                }
                for ti in full..t {
                    orow[ti] = dot_row(self.ty, w, &xq[ti]);
                }
            }
        });
        for r in 0..self.rows {
            for ti in 0..t {
                out[ti * self.rows + r] = tr[r * t + ti];
            }
        }
    }
}

/// The weight of a linear layer, `[out, in]`.
#[derive(Clone, Debug)]
pub enum Matrix {
    Dense(Tensor),
    Quant(QMatrix),
}

impl Matrix {
    pub fn rows(&self) -> usize {
        match self {
            Matrix::Dense(t) => t.dim(0),
            Matrix::Quant(q) => q.rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Matrix::Dense(t) => t.dim(1),
            Matrix::Quant(q) => q.cols,
        }
    }

    /// x: [T, in] -> [T, out]
    pub fn forward(&self, x: &[f32], t: usize) -> Vec<f32> {
        let mut out = vec![0.0; t * self.rows()];
        match self {
            Matrix::Dense(w) => {
                let w = w.as_f32().expect("dense weights are f32 on the CPU");
                cpu::matmul_nt(x, w, &mut out, t, self.rows(), self.cols(), false);
            }
            Matrix::Quant(q) => q.matmul_nt(x, t, &mut out),
        }
        out
    }

    /// Copies row `r` as f32 (embedding lookup from a possibly quantized table).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        match self {
            Matrix::Dense(w) => {
                let c = self.cols();
                out.copy_from_slice(
                    &w.as_f32().expect("dense weights are f32")[r * c..(r + 1) * c],
                );
            }
            Matrix::Quant(q) => q.dequantize_row(r, out),
        }
    }

    pub fn to_dense(&self) -> Tensor {
        match self {
            Matrix::Dense(t) => t.clone(),
            Matrix::Quant(q) => q.to_dense(),
        }
    }

    /// Bytes the weight occupies in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Matrix::Dense(t) => t.numel() * t.dtype().size_in_bytes(),
            Matrix::Quant(q) => q.data.len(),
        }
    }
}
