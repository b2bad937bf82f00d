//! nce: neural channel expansion for uniform 2-bit CNNs.
//!
//! - [`hw`]: hardware profiles (TOML) with budgets and measured latency tables;
//! - [`cost`]: the cost-plugin registry (built-ins and user crates via `linkme`);
//! - [`graph`]: the network description every other part is built from;
//! - [`data`]: real dataset readers;
//! - [`engine`]: execution: the integer engine, its runnable plan and the backends (CPU, wgpu,
//!   the C runtime under QEMU, ONNX Runtime) behind one `Backend` trait, backend comparison and
//!   latency measurement, without libtorch;
//! - [`export`]: the `.nce` file format, reading a file into the engine's plan, and (feature
//!   `train`) checkpoint conversion and the integer simulation;
//! - [`fsutil`]: the atomic, clobber-refusing writer every output file goes through;
//! - [`plot`]: SVG/PNG charts (feature `plot`);
//! - `quant`, `models`, `train`, `search`, `sensitivity`, `pipeline` (feature `train`, links
//!   libtorch through tch): quantizers, models, QAT, the NCE search, per-layer sensitivity and
//!   the end-to-end pipeline with its report;
//! - `cli` (feature `cli`): the `nce` command line.
//!
//! Which module may import which, and where to add a backend, quantizer, model, cost plugin or
//! pipeline stage: `docs/architecture.md`.

pub mod allocate;
pub mod cost;
pub mod data;
pub mod engine;
pub mod export;
pub mod fsutil;
pub mod graph;
pub mod hw;
pub mod import;
#[cfg(feature = "plot")]
pub mod plot;
pub mod sensitivity;

#[cfg(feature = "train")]
pub mod models;
#[cfg(feature = "train")]
pub mod pipeline;
#[cfg(feature = "train")]
pub mod quant;
#[cfg(feature = "train")]
pub mod search;
#[cfg(feature = "train")]
pub mod train;

#[cfg(feature = "cli")]
pub mod cli;
