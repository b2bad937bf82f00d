//! Stage manifests: what a stage consumed (its configuration and the SHA-256 of every upstream
//! file it read) and what it produced (the SHA-256 of every file it wrote).
//!
//! `manifest.json` is written last, after every output is in place, so a stage interrupted at any
//! point has no manifest (only `.pending.json`, naming the inputs it was started with) and is
//! resumed, never skipped. Hashes are SHA-256 (`sha2`, checked against the FIPS 180-4 test
//! vectors in `tests/pipeline.rs`).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// The file every finished stage writes into its folder.
pub const MANIFEST: &str = "manifest.json";
/// Written when a stage starts and removed when it finishes: an interrupted stage's marker.
pub const PENDING: &str = ".pending.json";

/// What a stage was run with. Two runs with equal `Inputs` must produce equivalent outputs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Inputs {
    /// The stage's own configuration (schedule, hyperparameters, implementation version).
    pub config: serde_json::Value,
    /// Upstream files by label: label → SHA-256 (hex).
    pub files: BTreeMap<String, String>,
}

impl Inputs {
    /// One hash over the configuration and every input hash (the stage's identity).
    pub fn key(&self) -> String {
        hex(&sha256(serde_json::to_string(self).expect("inputs serialise").as_bytes()))
    }
}

/// A finished stage's record (`<stage>/manifest.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub stage: String,
    /// [`Inputs::key`] of `inputs`.
    pub key: String,
    pub inputs: Inputs,
    /// Every file the stage produced, as a path relative to the run folder → SHA-256.
    pub outputs: BTreeMap<String, String>,
    /// Wall time of the run that produced the outputs (not of later skips).
    pub seconds: f64,
    /// Whether that run resumed an interrupted one.
    pub resumed: bool,
    /// Seconds since the Unix epoch when the stage finished.
    pub finished_at: u64,
}

/// `.pending.json`: the inputs an unfinished stage was started with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Pending {
    pub stage: String,
    pub key: String,
}

impl Manifest {
    pub fn read(path: &Path) -> Option<Manifest> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }
}

/// Writes `value` as pretty JSON through a temporary file and a rename.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    write_atomic(path, text.as_bytes())
}

/// Writes `bytes` to `path` through [`crate::fsutil::write_atomic`] (temp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::fsutil::write_atomic(path, bytes, &Default::default()).map_err(std::io::Error::other)
}

/// Every regular file under `dir` (recursively), sorted, except the manifest, the pending marker
/// and temporary files.
pub fn stage_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == MANIFEST || name == PENDING || name.ends_with(".tmp") {
                    continue;
                }
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// SHA-256 of files, memoised by (path, length, modification time) so that a run hashes each
/// checkpoint once even though it is both one stage's output and later stages' input.
#[derive(Default)]
pub struct HashCache {
    seen: Mutex<HashMap<PathBuf, Seen>>,
}

/// A file's length and modification time when it was hashed, and the hash.
type Seen = (u64, Option<SystemTime>, String);

impl HashCache {
    pub fn file(&self, path: &Path) -> std::io::Result<String> {
        let meta = std::fs::metadata(path)?;
        let (len, mtime) = (meta.len(), meta.modified().ok());
        let key = path.to_path_buf();
        if let Some((l, m, h)) = self.seen.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if *l == len && *m == mtime && mtime.is_some() {
                return Ok(h.clone());
            }
        }
        let h = hex(&sha256(&std::fs::read(path)?));
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (len, mtime, h.clone()));
        Ok(h)
    }
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (FIPS 180-4) of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Standard base64 with padding (RFC 4648), for `data:` URIs.
pub fn base64(data: &[u8]) -> String {
    use base64ct::Encoding;
    base64ct::Base64::encode_string(data)
}
