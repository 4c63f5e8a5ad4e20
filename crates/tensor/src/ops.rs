//! Device-dispatching ops on [`Tensor`]s. Each checks shapes, then calls the backend kernel
//! for the tensors' device (the CPU kernels in [`crate::cpu`]; CUDA arrives with its backend).
use crate::{cpu, Device, Error, Result, Tensor};

fn cpu_only(op: &'static str, t: &Tensor) -> Result<()> {
    match t.device() {
        Device::Cpu => Ok(()),
        d => Err(Error::Device {
            op,
            device: d,
            why: "no kernel for this device yet",
        }),
    }
}

/// x: [.., D], w: [D] -> [.., D]
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    cpu_only("rms_norm", x)?;
    let d = w.numel();
    if x.shape().last() != Some(&d) {
        return Err(Error::shape(
            "rms_norm",
            format!("x {:?} vs weight [{d}]", x.shape()),
        ));
    }
    let mut out = vec![0.0; x.numel()];
    cpu::rms_norm(x.as_f32()?, w.as_f32()?, eps, &mut out);
    Tensor::from_vec(out, x.shape())
}

/// a: [M, K], b: [N, K] -> [M, N]
pub fn matmul_nt(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    cpu_only("matmul_nt", a)?;
    let (m, k) = (a.dim(0), a.dim(1));
    let n = b.dim(0);
    if b.dim(1) != k {
        return Err(Error::shape(
            "matmul_nt",
            format!("{:?} x {:?}^T", a.shape(), b.shape()),
        ));
    }
    let mut out = vec![0.0; m * n];
    cpu::matmul_nt(a.as_f32()?, b.as_f32()?, &mut out, m, n, k, false);
    Tensor::from_vec(out, &[m, n])
}
