//! The `nce` command-line tool. Custom cost plugins are linked by building a binary like this
//! one that also names the plugin crate (see `plugins/systolic-cost/src/main.rs`).
fn main() -> std::process::ExitCode {
    nce::cli::main()
}
