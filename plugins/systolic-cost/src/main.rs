//! The stock nce CLI with the systolic plugin linked in. This is how a user ships their own
//! plugins: name the crate so the linker keeps its registry entry, then reuse `nce::cli`.
use nce_systolic_cost as _;

fn main() -> std::process::ExitCode {
    nce::cli::main()
}
