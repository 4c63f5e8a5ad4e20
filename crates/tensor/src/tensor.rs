use crate::{DType, Device, Error, Result};
use half::{bf16, f16};

/// Host memory of a tensor, by element type.
#[derive(Clone, Debug)]
pub enum CpuStorage {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
}

/// The backing memory of a tensor. The CUDA backend adds its variant here; ops match on it.
#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(CpuStorage),
}

/// A contiguous row-major tensor (see the crate docs for why there are no strides).
#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl Tensor {
    /// A CPU f32 tensor; `data.len()` must equal the product of `shape`.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        check_len(data.len(), shape)?;
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cpu(CpuStorage::F32(data)),
        })
    }

    pub fn from_bf16(data: Vec<bf16>, shape: &[usize]) -> Result<Self> {
        check_len(data.len(), shape)?;
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cpu(CpuStorage::BF16(data)),
        })
    }

    pub fn from_f16(data: Vec<f16>, shape: &[usize]) -> Result<Self> {
        check_len(data.len(), shape)?;
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cpu(CpuStorage::F16(data)),
        })
    }

    pub fn zeros(shape: &[usize]) -> Self {
        let n = shape.iter().product();
        Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cpu(CpuStorage::F32(vec![0.0; n])),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::Cpu(CpuStorage::F32(_)) => DType::F32,
            Storage::Cpu(CpuStorage::BF16(_)) => DType::BF16,
            Storage::Cpu(CpuStorage::F16(_)) => DType::F16,
        }
    }

    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The same numbers under a new shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        check_len(self.numel(), shape)?;
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Borrow the f32 host data (errors for other dtypes or devices).
    pub fn as_f32(&self) -> Result<&[f32]> {
        match &self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(v),
            #[allow(unreachable_patterns)]
            _ => Err(Error::DType {
                op: "as_f32",
                dtype: self.dtype(),
            }),
        }
    }

    pub fn as_f32_mut(&mut self) -> Result<&mut [f32]> {
        let dtype = self.dtype();
        match &mut self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(v),
            #[allow(unreachable_patterns)]
            _ => Err(Error::DType {
                op: "as_f32_mut",
                dtype,
            }),
        }
    }

    /// Converts to f32 on the host (copying), whatever the dtype.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => v.clone(),
            Storage::Cpu(CpuStorage::BF16(v)) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::Cpu(CpuStorage::F16(v)) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// Converts to another dtype (f32 on the way; bf16/f16 round to nearest even).
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let v = self.to_f32_vec();
        let storage = match dtype {
            DType::F32 => CpuStorage::F32(v),
            DType::BF16 => CpuStorage::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => CpuStorage::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
        };
        Tensor {
            shape: self.shape.clone(),
            storage: Storage::Cpu(storage),
        }
    }

    pub fn into_f32_vec(self) -> Vec<f32> {
        match self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => v,
            _ => self.to_f32_vec(),
        }
    }

    /// Moves the tensor to `device`. Only the CPU exists in this build.
    pub fn to_device(self, device: Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(self),
            Device::Cuda(_) => Err(Error::Device {
                op: "to_device",
                device,
                why: "this build has no CUDA backend yet",
            }),
        }
    }
}

fn check_len(len: usize, shape: &[usize]) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != len {
        return Err(Error::shape(
            "tensor",
            format!("{len} elements do not fill shape {shape:?}"),
        ));
    }
    Ok(())
}
