//! Hugging Face checkpoints: a folder with `config.json` and `model.safetensors` (or shards listed
//! in `model.safetensors.index.json`). Tensors are read with positioned reads and converted to f32
//! (BF16, F16, F32 are supported); each backend then stores them in its own format.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

#[derive(Clone, Debug)]
struct Entry {
    file: usize,
    dtype: String,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// An opened checkpoint folder.
#[derive(Debug)]
pub struct SafetensorsDir {
    dir: PathBuf,
    files: Vec<(PathBuf, File)>,
    tensors: HashMap<String, Entry>,
}

fn bad(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Gguf { path: path.to_path_buf(), reason: reason.into() }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.to_path_buf(), source }
}

impl SafetensorsDir {
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let index = dir.join("model.safetensors.index.json");
        let names: Vec<String> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(io(&index))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&index, e.to_string()))?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad(&index, "no weight_map"))?;
            let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
            files.sort();
            files.dedup();
            files
        } else {
            vec!["model.safetensors".into()]
        };
        let mut out = SafetensorsDir { dir: dir.clone(), files: Vec::new(), tensors: HashMap::new() };
        for name in names {
            if name.contains('/') || name.contains("..") {
                return Err(bad(&index, format!("shard name `{name}` leaves the folder")));
            }
            let path = dir.join(&name);
            let mut f = File::open(&path).map_err(io(&path))?;
            let size = f.metadata().map_err(io(&path))?.len();
            let mut len = [0u8; 8];
            f.read_exact(&mut len).map_err(io(&path))?;
            let n = u64::from_le_bytes(len);
            if n > 100 << 20 || 8 + n > size {
                return Err(bad(&path, format!("header of {n} bytes does not fit a {size}-byte file")));
            }
            let mut header = vec![0u8; n as usize];
            f.read_exact(&mut header).map_err(io(&path))?;
            let v: serde_json::Value = serde_json::from_slice(&header).map_err(|e| bad(&path, e.to_string()))?;
            let obj = v.as_object().ok_or_else(|| bad(&path, "header is not an object"))?;
            let file = out.files.len();
            for (tname, t) in obj {
                if tname == "__metadata__" {
                    continue;
                }
                let dtype =
                    t.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad(&path, format!("{tname}: dtype")))?;
                let shape: Vec<usize> = t
                    .get("shape")
                    .and_then(|s| s.as_array())
                    .map(|a| a.iter().filter_map(|x| x.as_u64().map(|x| x as usize)).collect())
                    .ok_or_else(|| bad(&path, format!("{tname}: shape")))?;
                let off: Vec<u64> = t
                    .get("data_offsets")
                    .and_then(|s| s.as_array())
                    .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
                    .filter(|o: &Vec<u64>| o.len() == 2)
                    .ok_or_else(|| bad(&path, format!("{tname}: data_offsets")))?;
                let (start, end) = (8 + n + off[0], 8 + n + off[1]);
                let elem = match dtype {
                    "F32" => 4,
                    "BF16" | "F16" => 2,
                    other => {
                        return Err(bad(&path, format!("{tname}: dtype {other} is not supported (BF16, F16, F32)")));
                    }
                };
                let count: usize = shape.iter().product();
                if end > size || start > end || (end - start) as usize != count * elem {
                    return Err(bad(
                        &path,
                        format!("{tname}: data range {start}..{end} does not hold {shape:?} {dtype}"),
                    ));
                }
                out.tensors.insert(tname.clone(), Entry { file, dtype: dtype.into(), shape, start, end });
            }
            out.files.push((path, f));
        }
        Ok(out)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name`, which must have `shape`, as f32.
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let e = self.tensors.get(name).ok_or_else(|| bad(&self.dir, format!("tensor `{name}` is missing")))?;
        if e.shape != shape {
            return Err(bad(&self.dir, format!("tensor `{name}` has shape {:?}, expected {shape:?}", e.shape)));
        }
        let (path, f) = &self.files[e.file];
        let mut raw = vec![0u8; (e.end - e.start) as usize];
        f.read_exact_at(&mut raw, e.start).map_err(io(path))?;
        Ok(match e.dtype.as_str() {
            "F32" => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            "BF16" => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            _ => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        })
    }
}

/// Writes tensors `(name, shape, f32 data)` as one safetensors file (tests and tools).
pub fn write_f32(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        let end = offset + data.len() * 4;
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}));
        offset = end;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for (_, _, data) in tensors {
        data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    }
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_raw(path: &Path, header: &str, data: &[u8]) {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        std::fs::write(path, out).unwrap();
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hearth-st-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn half_types_convert_and_shapes_are_checked() {
        let d = tmp("half");
        let bf: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
        let f16: Vec<u8> = [0.25f32, 3.0].iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        let header = r#"{"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"F16","shape":[1,2],"data_offsets":[4,8]},"__metadata__":{"format":"pt"}}"#;
        write_raw(&d.join("model.safetensors"), header, &[bf, f16].concat());
        let st = SafetensorsDir::open(&d).unwrap();
        assert_eq!(st.tensor_f32("a", &[2]).unwrap(), vec![1.5, -2.0]);
        assert_eq!(st.tensor_f32("b", &[1, 2]).unwrap(), vec![0.25, 3.0]);
        assert!(st.tensor_f32("b", &[2]).unwrap_err().to_string().contains("shape"));
        assert!(st.tensor_f32("c", &[1]).unwrap_err().to_string().contains("missing"));
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn bad_files_are_errors() {
        let d = tmp("bad");
        // Data range past the end of the file.
        write_raw(&d.join("model.safetensors"), r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &[0; 8]);
        assert!(SafetensorsDir::open(&d).unwrap_err().to_string().contains("data range"));
        // Unsupported dtype.
        write_raw(&d.join("model.safetensors"), r#"{"a":{"dtype":"I8","shape":[4],"data_offsets":[0,4]}}"#, &[0; 4]);
        assert!(SafetensorsDir::open(&d).unwrap_err().to_string().contains("not supported"));
        // A shard name that leaves the folder.
        std::fs::write(d.join("model.safetensors.index.json"), r#"{"weight_map":{"a":"../x.safetensors"}}"#).unwrap();
        assert!(SafetensorsDir::open(&d).unwrap_err().to_string().contains("leaves the folder"));
        std::fs::remove_dir_all(&d).ok();
    }
}
