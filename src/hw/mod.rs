//! Hardware profiles: what the target's packed 2-bit arithmetic unit and memories look like,
//! which budgets a network must meet on it, which cost plugins measure those budgets, and the
//! latency tables measured for it. A pure description layer: measuring a table is the engine's
//! job (`crate::engine::measure`).

mod latency_table;
mod locate;
mod profile;
pub mod shipped;

pub use latency_table::{LatencyEntry, LatencyTable, TableError};
pub use locate::Location;
pub use profile::{ArithmeticUnit, Budget, BudgetLimit, Measurement, Memory, Profile, ProfileError};
