//! Checkpoints: one file holding every variable of the model, the optimiser's momentum buffers
//! and a JSON metadata record, written atomically (temp file + rename) so an interrupted write
//! never replaces a good checkpoint.

use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

const META: &str = "__meta_json__";
const OPT_PREFIX: &str = "__opt__.";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: cannot write checkpoint: {msg}", file.display())]
    Write { file: PathBuf, msg: String },
    #[error("{}: not a readable nce checkpoint: {msg}", file.display())]
    Read { file: PathBuf, msg: String },
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
    let err = |msg: String| CheckpointError::Write { file: path.into(), msg };
    let json = serde_json::to_vec(meta).map_err(|e| err(e.to_string()))?;
    let mut named: Vec<(String, Tensor)> = Vec::with_capacity(vars.len() + opt.len() + 1);
    named.push((META.to_string(), Tensor::from_slice(&json)));
    for (n, t) in vars {
        named.push((n.clone(), t.shallow_clone()));
    }
    for (n, t) in opt {
        named.push((format!("{OPT_PREFIX}{n}"), t.shallow_clone()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let tmp = path.with_extension("tmp");
    Tensor::save_multi(&named, &tmp).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Reads a checkpoint written by [`save`].
pub fn load<M: DeserializeOwned>(path: &Path) -> Result<Checkpoint<M>, CheckpointError> {
    let err = |msg: String| CheckpointError::Read { file: path.into(), msg };
    if !path.is_file() {
        return Err(err("no such file".into()));
    }
    let all = Tensor::load_multi(path).map_err(|e| err(e.to_string()))?;
    let mut meta = None;
    let mut vars = Vec::new();
    let mut opt = Vec::new();
    for (name, t) in all {
        if name == META {
            let bytes = Vec::<u8>::try_from(&t).map_err(|e| err(e.to_string()))?;
            meta = Some(serde_json::from_slice(&bytes).map_err(|e| err(format!("metadata: {e}")))?);
        } else if let Some(n) = name.strip_prefix(OPT_PREFIX) {
            opt.push((n.to_string(), t));
        } else {
            vars.push((name, t));
        }
    }
    let meta = meta.ok_or_else(|| err("no metadata record (not written by nce?)".into()))?;
    Ok(Checkpoint { meta, vars, opt })
}

/// Copies a checkpoint without its optimiser state: what to distribute once training is over
/// (half the size; it still evaluates, exports and initialises runs, but cannot `--resume`).
pub fn strip(input: &Path, output: &Path) -> Result<(), CheckpointError> {
    let ck = load::<serde_json::Value>(input)?;
    save(output, &ck.meta, &ck.vars, &[])
}
