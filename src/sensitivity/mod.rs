//! Per-layer 2-bit quantization sensitivity: where extra channels are predicted to pay.
//!
//! - `measure` (feature `train`): `nce sensitivity`, the measurements on a checkpoint;
//! - [`table`]: the `sensitivity.csv` they are written to and read from;
//! - [`slots`]: per-layer scores turned into per-width-slot scores, for `nce allocate` and
//!   `nce search --expansion sensitivity`.

pub mod slots;
pub mod table;

pub use table::{LayerSensitivity, Measure, TableError};

#[cfg(feature = "train")]
mod measure;
#[cfg(feature = "train")]
pub use measure::*;
