//! Export of trained 2-bit models: the `.nce` container ([`mod@format`], documented in
//! `docs/format.md`), the reader that turns a container into the engine's runnable plan
//! ([`model`], building [`crate::engine::plan::QModel`]), and — with the `train` feature —
//! conversion from checkpoints ([`convert`]), the tch integer simulation the engines are
//! validated against ([`simulate`]) and a C header writer for microcontrollers ([`c_header`]).

pub mod c_header;
#[cfg(feature = "train")]
pub mod convert;
#[cfg(feature = "train")]
mod error;
pub mod format;
pub mod model;
#[cfg(feature = "train")]
pub mod simulate;
pub mod validate;

#[cfg(feature = "train")]
pub use error::ExportError;
pub use model::{DecodeError, ModelFileError};
