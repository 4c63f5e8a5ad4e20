//! GGUF v2/v3 reader: header, metadata of every value type, tensor infos, alignment, and
//! bounds-checked access to tensor data.
//!
//! Layout (llama.cpp `docs/gguf.md`): magic "GGUF", u32 version, u64 tensor_count,
//! u64 kv_count, then kv pairs (string key, u32 type, value), then tensor infos (string name,
//! u32 n_dims, u64 dims[n_dims], u32 type, u64 offset), padding to `general.alignment`
//! (default 32), then tensor data; offsets are relative to the start of that data.
//!
//! Nothing here trusts the file: every length is checked against the bytes that remain, so
//! a truncated or corrupt file gives an error naming what is wrong, never a panic.
use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use tensor::quant::GgmlType;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Any integer value as u64 (negative values are refused).
    pub fn as_u64(&self) -> Option<u64> {
        Some(match *self {
            Value::U8(v) => v as u64,
            Value::U16(v) => v as u64,
            Value::U32(v) => v as u64,
            Value::U64(v) => v,
            Value::I8(v) if v >= 0 => v as u64,
            Value::I16(v) if v >= 0 => v as u64,
            Value::I32(v) if v >= 0 => v as u64,
            Value::I64(v) if v >= 0 => v as u64,
            _ => return None,
        })
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's description; `dims[0]` is the fastest-varying (ggml's ne[0]).
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    pub offset: usize,
    pub bytes: usize,
}

/// The bytes of a GGUF: a memory-mapped file, or bytes already in memory (tests, fuzzing).
enum Bytes {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An opened GGUF file, memory-mapped (or read from bytes with [`Gguf::from_bytes`]).
pub struct Gguf {
    /// The file it was opened from; empty for [`Gguf::from_bytes`].
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    /// Keys in file order (for `inspect`).
    pub keys: Vec<String>,
    pub tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    data_start: usize,
    map: Bytes,
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                anyhow!(
                    "file is truncated: {what} needs {n} bytes at offset {}, file has {}",
                    self.pos,
                    self.b.len()
                )
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, w: &str) -> Result<u8> {
        Ok(self.take(1, w)?[0])
    }
    fn u16(&mut self, w: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, w)?.try_into().unwrap()))
    }
    fn u32(&mut self, w: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, w)?.try_into().unwrap()))
    }
    fn u64(&mut self, w: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, w)?.try_into().unwrap()))
    }
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
    /// A count that is about to drive allocation: refuse counts the remaining bytes cannot hold.
    fn count(&mut self, min_item_bytes: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        if n.saturating_mul(min_item_bytes as u64) > self.remaining() as u64 {
            bail!(
                "corrupt {what}: {n} items cannot fit in the {} bytes left",
                self.remaining()
            );
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(1, what)?;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| anyhow!("corrupt {what}: not valid UTF-8"))
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8(key)?),
            1 => Value::I8(self.u8(key)? as i8),
            2 => Value::U16(self.u16(key)?),
            3 => Value::I16(self.u16(key)? as i16),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(self.u32(key)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(key)?)),
            7 => match self.u8(key)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => bail!("corrupt metadata '{key}': bool byte is {b}"),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 4 {
                    bail!("corrupt metadata '{key}': arrays nested too deep");
                }
                let ety = self.u32(key)?;
                let n = self.count(min_value_bytes(ety), key)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(key)?)),
            t => bail!("corrupt metadata '{key}': unknown value type {t}"),
        })
    }
}

/// The fewest bytes a value of type `ty` takes in the file: what a claimed array length is
/// checked against before anything is allocated for it (unknown types fail when read).
fn min_value_bytes(ty: u32) -> usize {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => 8,  // the string's length
        9 => 12, // element type and length
        _ => 1,
    }
}

/// The fewest bytes of a metadata pair: key length, an empty key, value type, a 1-byte value.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// The fewest bytes of a tensor info: name length, n_dims, one dim, type, offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 8 + 4 + 8;

impl Gguf {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .with_context(|| format!("cannot open model file {}", path.display()))?;
        // SAFETY: the map is read-only; we never hand out references past its lifetime.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        Self::parse(path, Bytes::Map(map))
            .with_context(|| format!("{} is not a usable GGUF file", path.display()))
    }

    /// A GGUF held in memory; the same checks as [`Gguf::open`] (its `path` is empty).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Path::new(""), Bytes::Owned(bytes)).context("not a usable GGUF file")
    }

    fn parse(path: &Path, map: Bytes) -> Result<Self> {
        let mut c = Cursor { b: &map, pos: 0 };
        if map.len() < 4 || &map[0..4] != b"GGUF" {
            bail!("missing the GGUF magic bytes");
        }
        c.pos = 4;
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            bail!("GGUF version {version} is not supported (2 and 3 are)");
        }
        // Each count is checked against all the bytes that follow it, at its items' least size.
        let n_tensors = c.count(MIN_TENSOR_INFO_BYTES, "tensor count")?;
        let n_kv = c.count(MIN_KV_BYTES, "metadata count")?;
        let mut metadata = HashMap::new();
        let mut keys = Vec::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), v).is_some() {
                bail!("corrupt metadata: key '{key}' appears twice");
            }
            keys.push(key);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut by_name = HashMap::new();
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let nd = c.u32(&name)? as usize;
            if nd == 0 || nd > 4 {
                bail!("corrupt tensor '{name}': {nd} dimensions (1 to 4 allowed)");
            }
            let mut dims = Vec::with_capacity(nd);
            let mut numel: usize = 1;
            for _ in 0..nd {
                let d = c.u64(&name)?;
                numel = usize::try_from(d)
                    .ok()
                    .and_then(|d| numel.checked_mul(d))
                    .ok_or_else(|| anyhow!("corrupt tensor '{name}': dimensions overflow"))?;
                dims.push(d as usize);
            }
            let ty_id = c.u32(&name)?;
            let ty = GgmlType::from_id(ty_id).map_err(|e| anyhow!("tensor '{name}': {e}"))?;
            if dims[0] % ty.block_len() != 0 {
                bail!(
                    "corrupt tensor '{name}': row of {} is not a multiple of the {ty:?} block",
                    dims[0]
                );
            }
            let bytes = ty
                .bytes_for(numel)
                .map_err(|e| anyhow!("tensor '{name}': {e}"))?;
            let offset = c.u64(&name)? as usize;
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                bail!("corrupt file: tensor '{name}' appears twice");
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                bytes,
            });
        }
        let align = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => bail!("corrupt general.alignment {v:?}"),
            },
        };
        let data_start = c.pos.div_ceil(align) * align;
        if !tensors.is_empty() && data_start > map.len() {
            bail!(
                "file is truncated: the tensor data starts at offset {data_start}, file has {}",
                map.len()
            );
        }
        let data_len = map.len().saturating_sub(data_start);
        for t in &tensors {
            if t.offset % align != 0 {
                bail!(
                    "corrupt tensor '{}': offset {} is not aligned to {align}",
                    t.name,
                    t.offset
                );
            }
            if t.offset.checked_add(t.bytes).is_none_or(|e| e > data_len) {
                bail!(
                    "file is truncated: tensor '{}' needs bytes {}..{} of the data section, which has {data_len}",
                    t.name,
                    t.offset,
                    t.offset.saturating_add(t.bytes)
                );
            }
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            version,
            metadata,
            keys,
            tensors,
            by_name,
            data_start,
            map,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("metadata '{key}' is missing or not an integer"))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow!("metadata '{key}' is missing or not a number"))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("metadata '{key}' is missing or not a string"))
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The file offset just past the last tensor's data (what follows is padding).
    pub fn data_end(&self) -> usize {
        self.data_start
            + self
                .tensors
                .iter()
                .map(|t| t.offset + t.bytes)
                .max()
                .unwrap_or(0)
    }

    /// Raw bytes of a tensor (bounds were checked at open).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let s = self.data_start + info.offset;
        &self.map[s..s + info.bytes]
    }

    /// A tensor dequantised to f32, with its dims.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| anyhow!("tensor '{name}' is missing"))?;
        let n: usize = info.dims.iter().product();
        let mut out = vec![0f32; n];
        tensor::quant::dequantize(info.ty, self.tensor_bytes(info), &mut out)
            .map_err(|e| anyhow!("tensor '{name}': {e}"))?;
        Ok((out, info.dims.clone()))
    }
}
