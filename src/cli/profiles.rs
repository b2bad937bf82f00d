//! `nce profiles list | show | check`.

use crate::hw::Profile;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum Action {
    /// List the profiles in a directory.
    List {
        #[arg(long, default_value = "hw-profiles")]
        dir: PathBuf,
    },
    /// Show one profile: a file path, or a profile name looked up in --dir.
    Show {
        name: String,
        #[arg(long, default_value = "hw-profiles")]
        dir: PathBuf,
    },
    /// Validate profile files; exits non-zero if any is invalid.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(action: Action) -> Result<ExitCode> {
    match action {
        Action::List { dir } => {
            for path in profile_files(&dir)? {
                match crate::cost::load_profile(&path) {
                    Ok(p) => println!("{:<24} {:<40} {}", p.name, path.display(), p.description),
                    Err(e) => println!("{:<24} {:<40} INVALID: {e}", "?", path.display()),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Show { name, dir } => {
            let path = resolve(&name, &dir)?;
            let p = crate::cost::load_profile(&path)?;
            show(&p);
            Ok(ExitCode::SUCCESS)
        }
        Action::Check { files } => {
            let mut bad = 0;
            for f in &files {
                match crate::cost::load_profile(f) {
                    Ok(p) => println!("ok      {} ({})", f.display(), p.name),
                    Err(e) => {
                        bad += 1;
                        println!("INVALID {e}");
                    }
                }
            }
            Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

/// The `.toml` files of `dir`, sorted.
pub fn profile_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list profiles in {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    Ok(v)
}

/// A path if it exists, else the profile in `dir` whose file stem or `name` matches.
pub fn resolve(name: &str, dir: &Path) -> Result<PathBuf> {
    let p = PathBuf::from(name);
    if p.is_file() {
        return Ok(p);
    }
    let files = profile_files(dir)?;
    for f in &files {
        if f.file_stem().is_some_and(|s| s == name) {
            return Ok(f.clone());
        }
    }
    for f in &files {
        if crate::cost::load_profile(f).is_ok_and(|p| p.name == name) {
            return Ok(f.clone());
        }
    }
    let known: Vec<String> = files.iter().filter_map(|f| f.file_stem().map(|s| s.to_string_lossy().into_owned())).collect();
    bail!("no profile `{name}` (not a file, and not in {}: {})", dir.display(), known.join(", "))
}

fn show(p: &Profile) {
    println!("{} ({})", p.name, p.path.display());
    println!("  {}", p.description);
    for s in &p.sources {
        println!("  source: {s}");
    }
    let u = &p.unit;
    println!(
        "unit:    W{}A{}, {}-bit words ({} values/word), {} lanes, {} MHz, {} cycles/packed op, channel granularity {}",
        u.weight_bits,
        u.activation_bits,
        u.word_bits,
        u.word_bits / u.weight_bits as u32,
        u.lanes,
        u.clock_mhz,
        u.cycles_per_packed_op,
        u.channel_granularity
    );
    println!("         peak {:.2} GMAC/s at {} bits", p.macs_per_second(u.weight_bits) / 1e9, u.weight_bits);
    let m = &p.memory;
    println!(
        "memory:  weights {} B, activations {} B, bandwidth {} GB/s",
        m.weight_buffer_bytes, m.activation_buffer_bytes, m.bandwidth_gbps
    );
    for b in &p.budgets {
        println!("budget:  {} <= {}{}", b.metric, b.limit, b.plugin.as_ref().map(|p| format!(" (from {p})")).unwrap_or_default());
    }
    for (name, opts) in &p.plugins {
        println!("plugin:  {name} {}", if opts.is_empty() { String::new() } else { opts.to_string().replace('\n', " ") });
    }
    if let Some(t) = &p.latency_table {
        println!("latency table: {} ({} entries)", t.path.display(), t.entries.len());
    }
    if let Some(m) = &p.measurement {
        println!("measured: {m:?}");
    }
}
