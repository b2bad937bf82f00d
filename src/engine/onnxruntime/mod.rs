//! ONNX Runtime as a backend: the plan exported in memory as exact QDQ ONNX
//! ([`super::onnx::OnnxForm::Qdq`]) and run by the `libonnxruntime.so` that `scripts/setup`
//! unpacks from the `onnxruntime` PyPI wheel, loaded at run time (`ort`'s `load-dynamic`).
//!
//! The QDQ graph computes the convs (dense, grouped and depthwise) with `ConvInteger` and
//! requantises, pools and classifies in int64, so the integer logits read back
//! ([`onnx::INTEGER_LOGITS`]) are the engine's exactly (docs/onnx.md).

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

/// Opens an ONNX Runtime session on ONNX bytes with `threads` intra-op threads (ONNX Runtime's
/// defaults otherwise: its workers spin after each run).
pub fn session(bytes: &[u8], threads: usize) -> Result<Session, OrtError> {
    session_spinning(bytes, threads, true)
}

/// [`session`] with the intra-op workers' spin-wait after each run on or off. Off, they sleep
/// between runs and leave the cores to whatever else runs in the process (a benchmark's other
/// contenders); on, the next run starts a little sooner.
pub fn session_spinning(bytes: &[u8], threads: usize, spin: bool) -> Result<Session, OrtError> {
    let env = environment()?;
    let builder = Session::builder(env).map_err(rt)?;
    let builder = builder.with_optimization_level(GraphOptimizationLevel::All).map_err(rt)?;
    let builder = builder.with_intra_threads(threads.max(1)).map_err(rt)?.with_inter_threads(1).map_err(rt)?;
    let builder = builder.with_intra_op_spinning(spin).map_err(rt)?;
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

/// Runs `session` (a QDQ graph from [`onnx::to_bytes_with_integer_logits`]) on `n` images
/// given as float `pixel / 255` and returns the integer logits, `classes` per image.
pub fn run_session_integer(session: &mut Session, pixels: Vec<f32>, n: usize, chw: [usize; 3]) -> Result<Vec<i64>, OrtError> {
    let shape = vec![n as i64, chw[0] as i64, chw[1] as i64, chw[2] as i64];
    let input = Tensor::from_array((shape, pixels)).map_err(rt)?;
    let out = session.run(ort::inputs![onnx::INPUT => input]).map_err(rt)?;
    let (_, logits) = out[onnx::INTEGER_LOGITS].try_extract_tensor::<i64>().map_err(rt)?;
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
        Ok(OrtBackend { threads: opts.threads(), max_batch: opts.max_batch.unwrap_or(256).max(1) })
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
        let bytes = onnx::to_bytes_with_integer_logits(model).map_err(OrtError::from)?;
        let session = Mutex::new(session(&bytes, self.threads)?);
        let s = model.net().input;
        Ok(Box::new(OrtModel { session, chw: [s.c, s.h, s.w], max_batch: self.max_batch, threads: self.threads }))
    }
    fn min_model_runs(&self) -> (usize, usize) {
        (10, 100)
    }
}

/// A model in an ONNX Runtime session.
struct OrtModel {
    session: Mutex<Session>,
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
            let logits = run_session_integer(&mut session, pixels, n, self.chw)?;
            let classes = logits.len() / n.max(1);
            for l in logits.chunks(classes.max(1)) {
                let l: Result<Vec<i32>, _> = l.iter().map(|&v| i32::try_from(v)).collect();
                out.push(l.map_err(|_| OrtError::Runtime("an integer logit outside int32".into()))?);
            }
        }
        Ok(out)
    }
    fn details(&self) -> Vec<(String, String)> {
        vec![("form".into(), OnnxForm::Qdq.name().into()), ("threads".into(), self.threads.to_string())]
    }
}
