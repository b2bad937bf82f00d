//! nce: neural channel expansion for uniform 2-bit CNNs.
//!
//! - [`hw`]: hardware profiles (TOML) with budgets and measured latency tables;
//! - [`cost`]: the cost-plugin registry (built-ins and user crates via `linkme`);
//! - [`graph`]: the network description every other part is built from.

pub mod cost;
pub mod graph;
pub mod hw;

#[cfg(feature = "cli")]
pub mod cli;
