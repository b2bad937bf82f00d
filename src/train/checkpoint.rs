//! Checkpoints: one file holding every variable of the model, the optimiser's momentum buffers,
//! a JSON metadata record and a SHA-256 checksum over all of them (`docs/safety.md`).
//!
//! Writing serialises into memory first and then goes through [`crate::fsutil::write_atomic`]:
//! libtorch never touches the disk, so a full disk is an ordinary error (libtorch's own file
//! writer throws from a destructor and aborts the process), and an interrupted or failed write
//! never replaces a good checkpoint. Reading takes the bytes into memory, rejects what is not a
//! libtorch archive before libtorch sees it, trims libtorch's multi-line C++ errors to one line,
//! verifies the checksum and rejects non-finite values.

use crate::fsutil::{self, WriteError, WriteOptions};
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tch::{Kind, Tensor};

const META: &str = "__meta_json__";
const OPT_PREFIX: &str = "__opt__.";
/// The record holding the SHA-256 of every other record (absent in files written before it).
const CHECKSUM: &str = "__sha256__";
/// Hashed first, so that a future change of what is hashed can change the tag.
const CHECKSUM_TAG: &[u8] = b"nce-checkpoint-sha256-v1";
/// What a libtorch archive (a zip file) starts with.
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: cannot write checkpoint: {msg}", file.display())]
    Write { file: PathBuf, msg: String },
    /// Writing the file failed or was refused (full disk, permissions, an input, a link).
    #[error(transparent)]
    Output(#[from] WriteError),
    #[error("{}: not a readable nce checkpoint: {msg}", file.display())]
    Read { file: PathBuf, msg: String },
    #[error("{}: checksum mismatch: the file is corrupt or was modified", file.display())]
    Checksum { file: PathBuf },
    #[error("{}: not a usable nce checkpoint: `{name}` holds NaN or infinite values", file.display())]
    NonFinite { file: PathBuf, name: String },
}

/// What a checkpoint holds.
pub struct Checkpoint<M> {
    pub meta: M,
    /// Model variables by name (parameters and BatchNorm statistics).
    pub vars: Vec<(String, Tensor)>,
    /// Optimiser state by parameter name.
    pub opt: Vec<(String, Tensor)>,
}

/// Writes `vars`, `opt` and `meta` to `path` atomically.
pub fn save<M: Serialize>(path: &Path, meta: &M, vars: &[(String, Tensor)], opt: &[(String, Tensor)]) -> Result<(), CheckpointError> {
    save_with(path, meta, vars, opt, &WriteOptions::default())
}

/// [`save`], refusing to overwrite the inputs named in `opts`.
pub fn save_with<M: Serialize>(
    path: &Path,
    meta: &M,
    vars: &[(String, Tensor)],
    opt: &[(String, Tensor)],
    opts: &WriteOptions,
) -> Result<(), CheckpointError> {
    let err = |msg: String| CheckpointError::Write { file: path.into(), msg };
    fsutil::check_target(path, opts)?;
    let json = serde_json::to_vec(meta).map_err(|e| err(e.to_string()))?;
    let mut named: Vec<(String, Tensor)> = Vec::with_capacity(vars.len() + opt.len() + 2);
    named.push((META.to_string(), Tensor::from_slice(&json)));
    for (n, t) in vars {
        named.push((n.clone(), t.shallow_clone()));
    }
    for (n, t) in opt {
        named.push((format!("{OPT_PREFIX}{n}"), t.shallow_clone()));
    }
    let digest = checksum(&named).map_err(err)?;
    named.push((CHECKSUM.to_string(), Tensor::from_slice(&digest)));
    let bytes = serialise(&named).map_err(err)?;
    fsutil::write_atomic(path, &bytes, opts)?;
    Ok(())
}

/// Reads a checkpoint written by [`save`] (or by nce before checksums existed).
pub fn load<M: DeserializeOwned>(path: &Path) -> Result<Checkpoint<M>, CheckpointError> {
    let err = |msg: String| CheckpointError::Read { file: path.into(), msg };
    if path.is_dir() {
        return Err(err("it is a directory".into()));
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if !bytes.starts_with(ZIP_MAGIC) {
        return Err(err(format!(
            "expected a checkpoint written by `nce train` or `nce search` (a libtorch archive), found {}",
            describe(&bytes)
        )));
    }
    verify_archive(&bytes).map_err(|m| err(format!("damaged archive: {m}")))?;
    let mut all = Tensor::load_multi_from_stream(std::io::Cursor::new(bytes))
        .map_err(|e| err(format!("damaged libtorch archive ({})", torch_message(&e))))?;
    match all.iter().position(|(n, _)| n == CHECKSUM) {
        Some(i) => {
            let stored = Vec::<u8>::try_from(&all.swap_remove(i).1).map_err(|e| err(torch_message(&e)))?;
            if checksum(&all).map_err(err)?.as_slice() != stored.as_slice() {
                return Err(CheckpointError::Checksum { file: path.into() });
            }
        }
        None => tracing::warn!("{}: this checkpoint predates checksums; loading it without an integrity check", path.display()),
    }
    split(path, all)
}

/// Reads every entry of the zip archive, which checks its CRC-32, before libtorch parses it:
/// libtorch does not check them, and a damaged record (e.g. a tensor name that is no longer
/// UTF-8) can otherwise abort the process inside tch's FFI callback instead of returning an
/// error. A file crafted with valid CRCs can still reach libtorch's own checks.
fn verify_archive(bytes: &[u8]) -> Result<(), String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| e.to_string())?;
        let name = entry.name().to_string();
        std::io::copy(&mut entry, &mut std::io::sink()).map_err(|e| format!("entry `{name}`: {e}"))?;
    }
    Ok(())
}

/// Separates the metadata, model variables and optimiser state, rejecting non-finite values.
fn split<M: DeserializeOwned>(path: &Path, all: Vec<(String, Tensor)>) -> Result<Checkpoint<M>, CheckpointError> {
    let err = |msg: String| CheckpointError::Read { file: path.into(), msg };
    let mut meta = None;
    let mut vars = Vec::new();
    let mut opt = Vec::new();
    for (name, t) in all {
        if name == META {
            let bytes = Vec::<u8>::try_from(&t).map_err(|e| err(torch_message(&e)))?;
            meta = Some(serde_json::from_slice(&bytes).map_err(|e| err(format!("metadata: {e}")))?);
            continue;
        }
        if !all_finite(&t) {
            return Err(CheckpointError::NonFinite { file: path.into(), name });
        }
        match name.strip_prefix(OPT_PREFIX) {
            Some(n) => opt.push((n.to_string(), t)),
            None => vars.push((name, t)),
        }
    }
    let meta = meta.ok_or_else(|| err("no metadata record (not written by nce?)".into()))?;
    Ok(Checkpoint { meta, vars, opt })
}

/// Copies a checkpoint without its optimiser state: what to distribute once training is over
/// (half the size; it still evaluates, exports and initialises runs, but cannot `--resume`).
pub fn strip(input: &Path, output: &Path) -> Result<(), CheckpointError> {
    let opts = WriteOptions::protecting([input]);
    fsutil::check_target(output, &opts)?;
    let ck = load::<serde_json::Value>(input)?;
    save_with(output, &ck.meta, &ck.vars, &[], &opts)
}

/// SHA-256 over every record's name, dtype, shape and bytes, in name order (libtorch does not
/// promise to return records in the order they were written).
fn checksum(named: &[(String, Tensor)]) -> Result<[u8; 32], String> {
    let mut order: Vec<&(String, Tensor)> = named.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    h.update(CHECKSUM_TAG);
    for (name, t) in order {
        let t = t.detach().contiguous();
        let kind = format!("{:?}", t.f_kind().map_err(|e| format!("`{name}`: {}", torch_message(&e)))?);
        let shape = t.size();
        let data = raw_bytes(&t).map_err(|e| format!("`{name}`: {e}"))?;
        field(&mut h, name.as_bytes());
        field(&mut h, kind.as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for d in shape {
            h.update(d.to_le_bytes());
        }
        field(&mut h, &data);
    }
    Ok(h.finalize().into())
}

/// A length-prefixed field, so that no two different record lists hash the same byte stream.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// The in-memory bytes of a contiguous CPU tensor.
fn raw_bytes(t: &Tensor) -> Result<Vec<u8>, String> {
    let kind = t.f_kind().map_err(|e| torch_message(&e))?;
    let numel = t.numel();
    let mut buf = vec![0u8; numel * kind.elt_size_in_bytes()];
    t.f_copy_data_u8(&mut buf, numel).map_err(|e| torch_message(&e))?;
    Ok(buf)
}

/// Whether a floating-point tensor holds only finite values (other kinds always do).
fn all_finite(t: &Tensor) -> bool {
    let floating = matches!(t.kind(), Kind::Half | Kind::Float | Kind::Double | Kind::BFloat16);
    !floating || t.isfinite().all().int64_value(&[]) != 0
}

/// The archive bytes of `named`, produced in memory.
fn serialise(named: &[(String, Tensor)]) -> Result<Vec<u8>, String> {
    let buf = SharedBuf::default();
    Tensor::save_multi_to_stream(named, buf.clone()).map_err(|e| torch_message(&e))?;
    let bytes = buf.0.borrow().clone();
    Ok(bytes)
}

/// A `Write` into a shared vector: libtorch takes ownership of the stream it writes to.
#[derive(Clone, Default)]
struct SharedBuf(Rc<RefCell<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The first line of a libtorch error, without tch's prefix: libtorch appends a C++ stack trace
/// to its messages, which says nothing to a user holding a bad file.
fn torch_message(e: &tch::TchError) -> String {
    let text = e.to_string();
    let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("unknown libtorch error");
    first.trim_start_matches("Internal torch error:").trim().to_string()
}

/// What a file that is not a libtorch archive looks like, for the error message.
fn describe(bytes: &[u8]) -> &'static str {
    if bytes.is_empty() {
        "an empty file"
    } else if bytes.starts_with(&crate::export::format::MAGIC) {
        "an exported nce model (.nce), which `nce validate` reads; checkpoints are what `nce train` writes"
    } else if bytes.starts_with(b"\x1f\x8b") {
        "gzip-compressed data"
    } else if looks_like_text(&bytes[..bytes.len().min(4096)]) {
        "a text file"
    } else {
        "unrecognised binary data"
    }
}

/// UTF-8 without NUL bytes (a multi-byte character cut off at the end of the sample counts).
fn looks_like_text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default(),
        Err(_) => return false,
    };
    !valid.contains('\0')
}
