//! Quantization-aware training: SGD with (Nesterov) momentum, cosine schedule with warm-up,
//! weight decay kept off quantizer parameters (PACT clips get their own L2), optional
//! initialisation from a full-precision checkpoint and knowledge distillation, per-epoch JSON
//! metrics and atomic checkpoints from which `--resume` continues bit-identically.

pub mod checkpoint;
pub mod dist;
pub mod metrics;
pub mod schedule;
pub mod sgd;
mod trainer;

pub use checkpoint::CheckpointError;
pub use metrics::EpochMetrics;
pub use schedule::CosineSchedule;
pub(crate) use trainer::copy_leading;
pub use trainer::{
    calibrate_clips, evaluate, inherit_vars, load_model, mse_clip, train, widen_quietly, LoadedModel, Meta, TrainConfig, TrainError,
    TrainSummary, WidenInit, QUIET_SCALE,
};
