//! The local model store: manifests, pulling, verification.
//!
//! Models are described by manifests in the repository's `models/` folder (compiled in). A model
//! lives at `<dir>/<name>/<file>`, where `dir` is `--model-dir`, else `$HEARTH_MODEL_DIR`, else the
//! user's cache dir (`~/.cache/hearth/models`). [`ModelStore::pull`] is the only code that fetches
//! anything, and only when a person runs `hearth models pull`; serving calls
//! [`ModelStore::verified_path`], which checks size and sha256 and never downloads.

use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};

const MANIFESTS: &[(&str, &str)] = &[("gemma3-270m.toml", include_str!("../../../models/gemma3-270m.toml"))];

/// The model the server runs when none is named.
pub const DEFAULT_MODEL: &str = "gemma3-270m";

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub architecture: String,
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub license: String,
    pub source: Source,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// The file is split over several PyPI packages (wheels); each holds one part.
    PypiParts { packages: Vec<String>, parts: Vec<String> },
}

/// Every manifest compiled into this binary.
pub fn manifests() -> Result<Vec<Manifest>> {
    MANIFESTS
        .iter()
        .map(|(file, text)| {
            toml::from_str::<Manifest>(text)
                .map_err(|e| ModelError::Manifest { file: (*file).into(), reason: e.to_string() })
        })
        .collect()
}

pub fn manifest(name: &str) -> Result<Manifest> {
    let all = manifests()?;
    let known = all.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ");
    all.iter().find(|m| m.name == name).cloned().ok_or(ModelError::UnknownModel { name: name.into(), known })
}

#[derive(Clone, Debug)]
pub struct ModelStore {
    dir: PathBuf,
}

impl ModelStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ModelStore { dir: dir.into() }
    }

    /// `$HEARTH_MODEL_DIR`, else `<cache dir>/hearth/models`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("HEARTH_MODEL_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("hearth").join("models")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, m: &Manifest) -> PathBuf {
        self.dir.join(&m.name).join(&m.file)
    }

    /// The model's path after checking size and sha256. Never downloads.
    pub fn verified_path(&self, m: &Manifest) -> Result<PathBuf> {
        let path = self.path_of(m);
        if !path.exists() {
            return Err(ModelError::Missing { name: m.name.clone(), dir: self.dir.clone() });
        }
        let (size, sha) = hash_file(&path)?;
        if size != m.size || sha != m.sha256 {
            return Err(ModelError::Checksum {
                name: m.name.clone(),
                path,
                expected: m.sha256.clone(),
                actual: sha,
                expected_size: m.size,
                actual_size: size,
            });
        }
        Ok(path)
    }

    /// Fetches the model if it is missing or corrupt; idempotent. Returns its verified path.
    pub fn pull(&self, m: &Manifest, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
        match self.verified_path(m) {
            Ok(p) => {
                log(&format!("{} is present and verified at {}", m.name, p.display()));
                return Ok(p);
            }
            Err(ModelError::Missing { .. }) => {}
            Err(ModelError::Checksum { .. }) => {
                log(&format!("{}: existing file fails its checksum; fetching again", m.name))
            }
            Err(e) => return Err(e),
        }
        let pull_err = |reason: String| ModelError::Pull { name: m.name.clone(), reason };
        let dest_dir = self.dir.join(&m.name);
        fs::create_dir_all(&dest_dir).map_err(|e| pull_err(format!("creating {}: {e}", dest_dir.display())))?;
        let work = dest_dir.join(".download");
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).map_err(|e| pull_err(format!("creating {}: {e}", work.display())))?;
        let partial = dest_dir.join(format!("{}.partial", m.file));
        let result = match &m.source {
            Source::PypiParts { packages, parts } => fetch_pypi_parts(packages, parts, &work, &partial, log),
        }
        .map_err(pull_err);
        let _ = fs::remove_dir_all(&work);
        result?;
        let final_path = self.path_of(m);
        fs::rename(&partial, &final_path).map_err(|e| pull_err(format!("renaming into place: {e}")))?;
        self.verified_path(m).inspect_err(|_| {
            let _ = fs::remove_file(&final_path);
        })
    }
}

/// Size and lowercase hex sha256 of a file.
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    let io = |source| ModelError::Io { path: path.to_path_buf(), source };
    let mut r = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex(&h.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Python interpreter used for `pip download` (`$HEARTH_PYTHON`, else `python3`).
fn python() -> String {
    std::env::var("HEARTH_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into())
}

fn fetch_pypi_parts(
    packages: &[String],
    parts: &[String],
    work: &Path,
    partial: &Path,
    log: &mut dyn FnMut(&str),
) -> std::result::Result<(), String> {
    if packages.len() != parts.len() {
        return Err(format!("manifest lists {} packages but {} parts", packages.len(), parts.len()));
    }
    let mut out = File::create(partial).map_err(|e| format!("creating {}: {e}", partial.display()))?;
    for (pkg, part) in packages.iter().zip(parts) {
        log(&format!("downloading {pkg} with pip"));
        let pkg_dir = work.join(pkg);
        let status = Command::new(python())
            .args(["-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check", "-q", "-d"])
            .arg(&pkg_dir)
            .arg(pkg)
            .status()
            .map_err(|e| {
                format!("running {} -m pip: {e} (is Python with pip installed? set HEARTH_PYTHON)", python())
            })?;
        if !status.success() {
            return Err(format!("pip download {pkg} failed ({status})"));
        }
        let wheel = fs::read_dir(&pkg_dir)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| format!("pip download {pkg} produced no wheel"))?;
        let mut zip = zip::ZipArchive::new(File::open(&wheel).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", wheel.display()))?;
        let entry = (0..zip.len())
            .find(|&i| zip.by_index(i).is_ok_and(|f| f.name().rsplit('/').next() == Some(part.as_str())))
            .ok_or_else(|| format!("{} has no file named {part}", wheel.display()))?;
        let mut f = zip.by_index(entry).map_err(|e| e.to_string())?;
        std::io::copy(&mut f, &mut out).map_err(|e| format!("extracting {part}: {e}"))?;
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(())
}

/// The default model's verified path, for tests that need the real model. Panics with the command
/// that fetches it when it is missing: real-model tests never skip silently.
pub fn default_model_for_tests() -> PathBuf {
    let m = manifest(DEFAULT_MODEL).expect("compiled-in manifest must parse. This is a bug.");
    let store = ModelStore::new(ModelStore::default_dir());
    match store.verified_path(&m) {
        Ok(p) => p,
        Err(e) => panic!(
            "this test needs the default model: {e}\n\
             run `cargo run --release -p hearth-cli -- models pull {DEFAULT_MODEL}` (or `bash scripts/test.sh`, which does)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_parse() {
        let m = manifest(DEFAULT_MODEL).unwrap();
        assert_eq!(m.architecture, "gemma3");
        assert_eq!(m.sha256.len(), 64);
        let Source::PypiParts { packages, parts } = &m.source;
        assert_eq!(packages.len(), parts.len());
        assert!(matches!(manifest("nope"), Err(ModelError::UnknownModel { .. })));
    }

    #[test]
    fn missing_and_corrupt_files_are_named() {
        let dir = std::env::temp_dir().join(format!("hearth-store-test-{}", std::process::id()));
        let store = ModelStore::new(&dir);
        let m = manifest(DEFAULT_MODEL).unwrap();
        let err = store.verified_path(&m).unwrap_err();
        assert!(err.to_string().contains("hearth models pull gemma3-270m"), "{err}");
        fs::create_dir_all(store.path_of(&m).parent().unwrap()).unwrap();
        fs::write(store.path_of(&m), b"not a model").unwrap();
        let err = store.verified_path(&m).unwrap_err();
        assert!(matches!(err, ModelError::Checksum { actual_size: 11, .. }), "{err}");
        assert!(err.to_string().contains("corrupt"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hashes_known_input() {
        let p = std::env::temp_dir().join(format!("hearth-hash-{}", std::process::id()));
        fs::write(&p, b"abc").unwrap();
        let (n, h) = hash_file(&p).unwrap();
        fs::remove_file(&p).unwrap();
        assert_eq!(n, 3);
        assert_eq!(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
