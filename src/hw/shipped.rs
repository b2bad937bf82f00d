//! The profiles shipped in `hw-profiles/`, compiled into the library so that a profile can be
//! named (`--profile npu-int2-array`) from any folder, with no clone at hand.

use std::path::{Path, PathBuf};

/// One shipped profile: its file stem (= its `name`) and its text.
#[derive(Clone, Copy, Debug)]
pub struct Shipped {
    pub name: &'static str,
    pub text: &'static str,
}

macro_rules! shipped {
    ($($name:literal),* $(,)?) => {
        &[$(Shipped { name: $name, text: include_str!(concat!("../../hw-profiles/", $name, ".toml")) }),*]
    };
}

/// Every shipped profile, sorted by name.
pub const PROFILES: &[Shipped] =
    shipped!["local-cpu", "mcu-cortex-m7", "mobile-cpu-a76", "nce-flops-params", "nce-flops-params-0.75x", "npu-int2-array"];

/// The latency tables the shipped profiles name, by their path relative to `hw-profiles/`.
const TABLES: &[(&str, &str)] = &[
    ("tables/cortex-m7-insn.csv", include_str!("../../hw-profiles/tables/cortex-m7-insn.csv")),
    ("tables/local-cpu.csv", include_str!("../../hw-profiles/tables/local-cpu.csv")),
];

/// The folder shown as a shipped profile's location (`<built-in>/npu-int2-array.toml`).
const FOLDER: &str = "<built-in>";

/// The shipped profile called `name` (with or without `.toml`).
pub fn find(name: &str) -> Option<Shipped> {
    let stem = name.strip_suffix(".toml").unwrap_or(name);
    PROFILES.iter().copied().find(|p| p.name == stem)
}

/// The names of the shipped profiles.
pub fn names() -> Vec<&'static str> {
    PROFILES.iter().map(|p| p.name).collect()
}

/// The path a shipped profile reports as its file.
pub fn path(p: &Shipped) -> PathBuf {
    Path::new(FOLDER).join(format!("{}.toml", p.name))
}

/// The embedded text of a file a shipped profile refers to (its latency table), given the path
/// the profile resolved it to.
pub(super) fn file(resolved: &Path) -> Option<&'static str> {
    let rel = resolved.strip_prefix(FOLDER).ok()?;
    TABLES.iter().find(|(p, _)| Path::new(p) == rel).map(|(_, text)| *text)
}
