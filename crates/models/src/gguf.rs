//! GGUF files: metadata and quantized tensors, read through candle-core's parser.
//!
//! The file is read with positioned reads, not mapped: candle's `QTensor` owns its storage, so a
//! mapping would only add a second copy of every page. [`GgufFile::open`] checks the header, the
//! metadata and that every tensor's bytes lie inside the file, so a truncated download fails at
//! open with a message naming the file, never later inside a matmul.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use crate::error::{ModelError, Result};

pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: Mutex<BufReader<File>>,
    file_size: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile").field("path", &self.path).field("tensors", &self.content.tensor_infos.len()).finish()
    }
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| ModelError::Io { path: path.clone(), source };
        let file = File::open(&path).map_err(io)?;
        let file_size = file.metadata().map_err(io)?.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let content =
            Content::read(&mut reader).map_err(|e| ModelError::Gguf { path: path.clone(), reason: e.to_string() })?;
        let this = GgufFile { path, content, reader: Mutex::new(reader), file_size };
        this.check_extents()?;
        Ok(this)
    }

    /// Every tensor's data must lie inside the file (a truncated download fails here).
    fn check_extents(&self) -> Result<()> {
        for (name, info) in &self.content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            if !elems.is_multiple_of(block) {
                return Err(
                    self.tensor_err(name, format!("{elems} elements is not a multiple of the block size {block}"))
                );
            }
            let bytes = (elems / block * info.ggml_dtype.type_size()) as u64;
            let end = self.content.tensor_data_offset.saturating_add(info.offset).saturating_add(bytes);
            if end > self.file_size {
                return Err(ModelError::Gguf {
                    path: self.path.clone(),
                    reason: format!(
                        "tensor `{name}` ends at byte {end} but the file has {} bytes (truncated download?)",
                        self.file_size
                    ),
                });
            }
        }
        Ok(())
    }

    /// The distinct tensor types of the file, sorted by name (`["F32", "Q4K", "Q5_0", …]`).
    pub fn tensor_types(&self) -> Vec<String> {
        let mut t: Vec<String> = self.content.tensor_infos.values().map(|i| format!("{:?}", i.ggml_dtype)).collect();
        t.sort();
        t.dedup();
        t
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    fn meta(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| self.meta_err(key, "missing"))
    }

    fn meta_err(&self, key: &str, reason: impl Into<String>) -> ModelError {
        ModelError::Metadata { path: self.path.clone(), key: key.to_string(), reason: reason.into() }
    }

    fn tensor_err(&self, name: &str, reason: impl Into<String>) -> ModelError {
        ModelError::Tensor { path: self.path.clone(), name: name.to_string(), reason: reason.into() }
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.meta(key)?.to_string().map(String::as_str).map_err(|e| self.meta_err(key, e.to_string()))
    }

    /// Any unsigned or signed integer type, as u64 (GGUF writers differ in the width they pick).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.meta(key)?;
        let n = match v {
            Value::U8(x) => Some(*x as u64),
            Value::U16(x) => Some(*x as u64),
            Value::U32(x) => Some(*x as u64),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.ok_or_else(|| self.meta_err(key, format!("expected a non-negative integer, found {v:?}")))
    }

    pub fn get_usize(&self, key: &str) -> Result<usize> {
        Ok(self.get_u64(key)? as usize)
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.meta(key)? {
            Value::F32(x) => Ok(*x),
            Value::F64(x) => Ok(*x as f32),
            v => Err(self.meta_err(key, format!("expected a float, found {v:?}"))),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.meta(key)?.to_bool().map_err(|e| self.meta_err(key, e.to_string()))
    }

    fn get_array(&self, key: &str) -> Result<&Vec<Value>> {
        self.meta(key)?.to_vec().map_err(|e| self.meta_err(key, e.to_string()))
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get_array(key)?
            .iter()
            .map(|v| v.to_string().map(String::as_str).map_err(|e| self.meta_err(key, e.to_string())))
            .collect()
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.get_array(key)?.iter().map(|v| v.to_f32().map_err(|e| self.meta_err(key, e.to_string()))).collect()
    }

    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.get_array(key)?.iter().map(|v| v.to_i32().map_err(|e| self.meta_err(key, e.to_string()))).collect()
    }

    /// Shape as stored in GGUF order reversed, i.e. row-major `[rows, cols]` for a matrix.
    pub fn tensor_shape(&self, name: &str) -> Result<Vec<usize>> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| self.tensor_err(name, "missing"))?;
        Ok(info.shape.dims().to_vec())
    }

    pub fn tensor_dtype(&self, name: &str) -> Result<GgmlDType> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| self.tensor_err(name, "missing"))?;
        Ok(info.ggml_dtype)
    }

    /// Reads a tensor, keeping its GGUF block format.
    pub fn tensor(&self, name: &str) -> Result<QTensor> {
        let mut reader = self.reader.lock().expect("gguf reader lock poisoned. This is a bug.");
        reader.seek(SeekFrom::Start(0)).map_err(|source| ModelError::Io { path: self.path.clone(), source })?;
        self.content.tensor(&mut *reader, name, &Device::Cpu).map_err(|e| self.tensor_err(name, e.to_string()))
    }

    /// Reads a tensor and checks its shape (row-major, e.g. `[out, in]` for a weight matrix).
    pub fn tensor_with_shape(&self, name: &str, shape: &[usize]) -> Result<QTensor> {
        let got = self.tensor_shape(name)?;
        if got != shape {
            return Err(self.tensor_err(name, format!("expected shape {shape:?}, found {got:?}")));
        }
        self.tensor(name)
    }

    /// Reads a tensor of `len` elements as f32 (norm weights).
    pub fn vector_f32(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.tensor_with_shape(name, &[len])?;
        t.dequantize(&Device::Cpu).and_then(|t| t.to_vec1::<f32>()).map_err(|e| self.tensor_err(name, e.to_string()))
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.content.tensor_infos.keys().map(String::as_str)
    }
}
