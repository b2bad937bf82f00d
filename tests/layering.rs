//! The module layering of `docs/architecture.md`, kept by a cheap grep over `src/`:
//! - `engine` owns execution and does not import `export` (the file reader imports the engine);
//! - `hw` is a pure description layer: it imports neither `cost`, `engine` nor `export`;
//! - backends are chosen through `engine::BackendKind`, so no backend name is string-matched
//!   outside `src/engine/`.
//!
//! Comment lines are skipped: docs may name other modules.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively, in a stable order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.expect("dir entry").path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

/// `(file, line number, line)` of every non-comment line under `src/<under>` containing any of
/// `needles`.
fn offending(under: &str, needles: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut hits = Vec::new();
    for f in rust_files(&root.join(under)) {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for (i, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if needles.iter().any(|n| code.contains(n)) {
                hits.push(format!("{}:{}: {}", f.strip_prefix(&root).unwrap_or(&f).display(), i + 1, code));
            }
        }
    }
    hits
}

#[test]
fn engine_does_not_import_export() {
    let hits = offending("engine", &["crate::export"]);
    assert!(hits.is_empty(), "src/engine/ must not import crate::export (export imports engine):\n{}", hits.join("\n"));
}

#[test]
fn hw_is_a_description_layer() {
    let hits = offending("hw", &["crate::cost", "crate::engine", "crate::export"]);
    assert!(hits.is_empty(), "src/hw/ must not import cost, engine or export:\n{}", hits.join("\n"));
}

#[test]
fn backends_are_not_string_matched_outside_the_engine() {
    let names = ["\"wgpu\"", "\"cpu-scalar\"", "\"cpu\""];
    let mut patterns = Vec::new();
    for n in names {
        patterns.extend([format!("== {n}"), format!("!= {n}"), format!("{n} =>"), format!("{n} |"), format!("| {n}")]);
    }
    patterns.push("\"cpu-scalar\"".into());
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(&root).expect("src/") {
        let p = entry.expect("dir entry").path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name == "engine" {
            continue;
        }
        if p.is_dir() {
            hits.extend(offending(&name, &patterns));
        } else if name.ends_with(".rs") {
            let text = std::fs::read_to_string(&p).expect("read");
            hits.extend(
                text.lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim_start().starts_with("//") && patterns.iter().any(|n| l.contains(n)))
                    .map(|(i, l)| format!("{name}:{}: {}", i + 1, l.trim())),
            );
        }
    }
    assert!(hits.is_empty(), "backend names are matched through engine::BackendKind, not strings:\n{}", hits.join("\n"));
}

/// The grep itself finds what it looks for (a test that can never fail keeps nothing).
#[test]
fn the_grep_sees_the_engine() {
    assert!(!offending("engine", &["pub trait Backend"]).is_empty());
    assert!(!offending("engine", &["\"wgpu\""]).is_empty(), "BackendKind names its backends in src/engine/");
}
