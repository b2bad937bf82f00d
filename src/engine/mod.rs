//! The pure-Rust integer engine for exported 2-bit models.
