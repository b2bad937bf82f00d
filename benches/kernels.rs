//! Packed 2-bit kernels against references (filled in by the engine work).
fn main() {}
