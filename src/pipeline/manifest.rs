//! Stage manifests: what a stage consumed (its configuration and the SHA-256 of every upstream
//! file it read) and what it produced (the SHA-256 of every file it wrote).
//!
//! `manifest.json` is written last, after every output is in place, so a stage interrupted at any
//! point has no manifest (only `.pending.json`, naming the inputs it was started with) and is
//! resumed, never skipped. SHA-256 is implemented here (FIPS 180-4, checked against its test
//! vectors in `tests/pipeline.rs`) rather than pulled in as a dependency: it hashes a few
//! megabytes of checkpoints per run.

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

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be,
    0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa,
    0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85,
    0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3,
    0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f,
    0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// SHA-256 (FIPS 180-4) of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let bits = (data.len() as u64).wrapping_mul(8);
    let full = data.len() / 64 * 64;
    for block in data[..full].chunks_exact(64) {
        compress(&mut h, block);
    }
    // Padding: 0x80, zeros, the length in bits as a big-endian u64; one or two blocks.
    let rest = &data[full..];
    let mut tail = [0u8; 128];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    let n = if rest.len() < 56 { 64 } else { 128 };
    tail[n - 8..n].copy_from_slice(&bits.to_be_bytes());
    for block in tail[..n].chunks_exact(64) {
        compress(&mut h, block);
    }
    let mut out = [0u8; 32];
    for (o, v) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&v.to_be_bytes());
    }
    out
}

fn compress(h: &mut [u32; 8], block: &[u8]) {
    let mut w = [0u32; 64];
    for (i, c) in block.chunks_exact(4).enumerate() {
        w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
    }
    for i in 16..64 {
        let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
        let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = *h;
    for i in 0..64 {
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(maj);
        hh = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    for (x, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
        *x = x.wrapping_add(v);
    }
}

/// Standard base64 with padding (RFC 4648), for `data:` URIs.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        s.push(A[(n >> 18) as usize & 63] as char);
        s.push(A[(n >> 12) as usize & 63] as char);
        s.push(if c.len() > 1 { A[(n >> 6) as usize & 63] as char } else { '=' });
        s.push(if c.len() > 2 { A[n as usize & 63] as char } else { '=' });
    }
    s
}
