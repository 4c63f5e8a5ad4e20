/// Errors of the tensor runtime. Every variant names what is wrong in one sentence.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("{op} does not support dtype {dtype:?} here")]
    DType {
        op: &'static str,
        dtype: crate::DType,
    },
    #[error("{op} is not available on device {device}: {why}")]
    Device {
        op: &'static str,
        device: crate::Device,
        why: &'static str,
    },
    #[error("{0}")]
    Msg(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }
}
