//! Hardware profiles: what the target's packed 2-bit arithmetic unit and memories look like,
//! which budgets a network must meet on it, and which cost plugins measure those budgets.

mod latency_table;
mod locate;
mod profile;
pub mod measure;

pub use latency_table::{LatencyEntry, LatencyTable, TableError};
pub use locate::Location;
pub use profile::{ArithmeticUnit, Budget, BudgetLimit, Measurement, Memory, Profile, ProfileError};
