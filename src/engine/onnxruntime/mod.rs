//! ONNX Runtime as a backend: the plan exported in memory as exact QDQ ONNX
//! ([`super::onnx::OnnxForm::Qdq`]) and run by the `libonnxruntime.so` that `scripts/setup`
//! unpacks from the `onnxruntime` PyPI wheel, loaded at run time (`ort`'s `load-dynamic`).
//!
//! ONNX Runtime computes the convs in float32 and rounds ties to even, so its integer logits
//! may differ from the engine's where a value lands within float error of a rounding boundary
//! (docs/onnx.md): `nce validate` reports agreement and the largest logit difference instead of
//! demanding bit-exactness.

use super::backend::{Backend, BackendError, BackendKind, BackendOptions, PreparedModel};
use super::onnx::{self, OnnxError, OnnxForm};
use super::plan::QModel;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// Where the shared library is looked for, in order: `$NCE_ONNXRUNTIME`, `$ORT_DYLIB_PATH`,
/// then `third_party/onnxruntime/libonnxruntime.so` of this source tree.
pub fn library_candidates() -> Vec<PathBuf> {
    let mut c: Vec<PathBuf> = ["NCE_ONNXRUNTIME", "ORT_DYLIB_PATH"].iter().filter_map(std::env::var_os).map(PathBuf::from).collect();
    c.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/third_party/onnxruntime/libonnxruntime.so")));
    c
}

/// Why ONNX Runtime could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrtError {
    #[error("libonnxruntime.so not found (looked at {}); run scripts/setup, or point NCE_ONNXRUNTIME at the library", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound(Vec<PathBuf>),
    #[error("loading ONNX Runtime from {path}: {msg}")]
    Load { path: PathBuf, msg: String },
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    #[error(transparent)]
    Export(#[from] OnnxError),
}

fn rt<E: std::fmt::Display>(e: E) -> OrtError {
    OrtError::Runtime(e.to_string())
}

/// The process-wide ONNX Runtime environment (the library loads once per process).
fn environment() -> Result<&'static ort::environment::Environment, OrtError> {
    static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    let candidates = library_candidates();
    let Some(path) = candidates.iter().find(|p| p.is_file()).cloned() else {
        return Err(OrtError::NotFound(candidates));
    };
    let env = ENV.get_or_init(|| {
        let builder = ort::init_from(&path).map_err(|e| e.to_string())?;
        builder.with_name("nce").build().map_err(|e| e.to_string())
    });
    env.as_ref().map_err(|msg| OrtError::Load { path, msg: msg.clone() })
}

/// Opens an ONNX Runtime session on ONNX bytes with `threads` intra-op threads.
pub fn session(bytes: &[u8], threads: usize) -> Result<Session, OrtError> {
    let env = environment()?;
    let builder = Session::builder(env).map_err(rt)?;
    let builder = builder.with_optimization_level(GraphOptimizationLevel::All).map_err(rt)?;
    let builder = builder.with_intra_threads(threads.max(1)).map_err(rt)?.with_inter_threads(1).map_err(rt)?;
    builder.with_parallel_execution(false).map_err(rt)?.commit_from_memory(bytes).map_err(rt)
}

/// Runs `session` on `n` images given as float `pixel / 255` (`n·numel` values) and returns
/// the real logits, `classes` per image.
pub fn run_session(session: &mut Session, pixels: Vec<f32>, n: usize, chw: [usize; 3]) -> Result<Vec<f32>, OrtError> {
    let shape = vec![n as i64, chw[0] as i64, chw[1] as i64, chw[2] as i64];
    let input = Tensor::from_array((shape, pixels)).map_err(rt)?;
    let out = session.run(ort::inputs![onnx::INPUT => input]).map_err(rt)?;
    let (_, logits) = out[onnx::OUTPUT].try_extract_tensor::<f32>().map_err(rt)?;
    Ok(logits.to_vec())
}

/// The ONNX Runtime backend (CPU execution provider).
pub struct OrtBackend {
    threads: usize,
    max_batch: usize,
}

impl OrtBackend {
    /// Loads the library (once per process) and remembers the options.
    pub fn open(opts: &BackendOptions) -> Result<Self, OrtError> {
        environment()?;
        Ok(OrtBackend { threads: opts.layer_threads.max(opts.image_threads).max(1), max_batch: opts.max_batch.unwrap_or(256).max(1) })
    }
}

impl Backend for OrtBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Onnxruntime
    }
    fn name(&self) -> String {
        "onnxruntime-qdq".into()
    }
    fn device(&self) -> String {
        format!("ONNX Runtime CPU, {} thread(s)", self.threads)
    }
    fn prepare<'a>(&'a self, model: &'a QModel) -> Result<Box<dyn PreparedModel + 'a>, BackendError> {
        let bytes = onnx::to_bytes(model, OnnxForm::Qdq).map_err(OrtError::from)?;
        let session = Mutex::new(session(&bytes, self.threads)?);
        let s = model.net().input;
        Ok(Box::new(OrtModel {
            session,
            unit: onnx::logit_scale(model),
            chw: [s.c, s.h, s.w],
            max_batch: self.max_batch,
            threads: self.threads,
        }))
    }
    fn min_model_runs(&self) -> (usize, usize) {
        (10, 100)
    }
}

/// A model in an ONNX Runtime session.
struct OrtModel {
    session: Mutex<Session>,
    /// Real value of one integer logit.
    unit: f64,
    chw: [usize; 3],
    max_batch: usize,
    threads: usize,
}

impl PreparedModel for OrtModel {
    fn run_batch(&self, images: &[u8]) -> Result<Vec<Vec<i32>>, BackendError> {
        let per = self.chw.iter().product::<usize>();
        if per == 0 || !images.len().is_multiple_of(per) {
            return Err(
                super::EngineError::Mismatch { what: "batch bytes (a multiple of one image)", expected: per, got: images.len() }.into()
            );
        }
        let mut session = self.session.lock().map_err(|_| OrtError::Runtime("session lock poisoned".into()))?;
        let mut out = Vec::with_capacity(images.len() / per);
        for chunk in images.chunks(per * self.max_batch) {
            let n = chunk.len() / per;
            let pixels = chunk.iter().map(|&p| f32::from(p) / 255.0).collect();
            let logits = run_session(&mut session, pixels, n, self.chw)?;
            let classes = logits.len() / n.max(1);
            out.extend(logits.chunks(classes.max(1)).map(|l| l.iter().map(|&v| (f64::from(v) / self.unit).round() as i32).collect()));
        }
        Ok(out)
    }
    fn details(&self) -> Vec<(String, String)> {
        vec![("form".into(), OnnxForm::Qdq.name().into()), ("threads".into(), self.threads.to_string())]
    }
}
