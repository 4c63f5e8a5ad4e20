//! A GGUF v3 writer for tests: metadata of the common types, then tensors whose data is a
//! fixed byte pattern of the right size (the seeds and regression inputs need shapes, not
//! values).
#![allow(dead_code)] // each test crate uses part of it
use tensor::quant::GgmlType;

#[derive(Default)]
pub struct GgufWriter {
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

pub const ALIGN: usize = 32;

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

impl GgufWriter {
    fn key(&mut self, k: &str, ty: u32) {
        put_str(&mut self.kv, k);
        self.kv.extend(ty.to_le_bytes());
        self.n_kv += 1;
    }
    pub fn u32(&mut self, k: &str, v: u32) -> &mut Self {
        self.key(k, 4);
        self.kv.extend(v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k, 10);
        self.kv.extend(v.to_le_bytes());
        self
    }
    pub fn f32(&mut self, k: &str, v: f32) -> &mut Self {
        self.key(k, 6);
        self.kv.extend(v.to_le_bytes());
        self
    }
    pub fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        self.key(k, 7);
        self.kv.push(v as u8);
        self
    }
    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k, 8);
        put_str(&mut self.kv, v);
        self
    }
    pub fn strs(&mut self, k: &str, v: &[String]) -> &mut Self {
        self.key(k, 9);
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for s in v {
            put_str(&mut self.kv, s);
        }
        self
    }
    pub fn i32s(&mut self, k: &str, v: &[i32]) -> &mut Self {
        self.key(k, 9);
        self.kv.extend(5u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        v.iter().for_each(|x| self.kv.extend(x.to_le_bytes()));
        self
    }
    pub fn f32s(&mut self, k: &str, v: &[f32]) -> &mut Self {
        self.key(k, 9);
        self.kv.extend(6u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        v.iter().for_each(|x| self.kv.extend(x.to_le_bytes()));
        self
    }
    /// A tensor's info (name, dims, ggml type id, offset), its data aligned to start next.
    fn info(&mut self, name: &str, dims: &[usize], type_id: u32) {
        self.data.resize(self.data.len().div_ceil(ALIGN) * ALIGN, 0);
        put_str(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        dims.iter()
            .for_each(|&d| self.infos.extend((d as u64).to_le_bytes()));
        self.infos.extend(type_id.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
    }
    /// A tensor of GGUF dims `dims` (fastest first) and ggml type `ty`, its data a pattern.
    pub fn tensor(&mut self, name: &str, dims: &[usize], ty: GgmlType, id: u32) -> &mut Self {
        let n: usize = dims.iter().product();
        let bytes = ty.bytes_for(n).unwrap();
        self.info(name, dims, id);
        // Small finite values whatever the type (0x11 is a small positive f16/bf16/scale).
        self.data.extend(std::iter::repeat_n(0x11u8, bytes));
        self.n_tensors += 1;
        self
    }
    /// An f32 tensor of GGUF dims `dims` (fastest first) holding `values`.
    pub fn tensor_f32(&mut self, name: &str, dims: &[usize], values: &[f32]) -> &mut Self {
        assert_eq!(dims.iter().product::<usize>(), values.len(), "{name}");
        self.info(name, dims, 0); // GGML_TYPE_F32
        values
            .iter()
            .for_each(|v| self.data.extend(v.to_le_bytes()));
        self.n_tensors += 1;
        self
    }
    pub fn finish(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.infos);
        if self.n_tensors > 0 {
            out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
            out.extend(&self.data);
        }
        out
    }
}
