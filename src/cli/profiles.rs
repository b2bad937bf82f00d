//! `nce profiles list | show | check`.

use crate::hw::Profile;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum Action {
    /// List the shipped profiles (compiled into nce), or the profiles in a folder.
    List {
        /// List the `.toml` profiles in this folder instead of the shipped ones.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Show one profile: a file path, a profile in --dir, or a shipped profile's name.
    Show {
        /// A profile file, or a profile name (file stem or `name`).
        name: String,
        /// Look the name up in this folder before the shipped profiles.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the profile as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate profile files; exits 1 if any is invalid.
    Check {
        /// Profile files (or shipped profile names).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(action: Action) -> Result<ExitCode> {
    match action {
        Action::List { dir } => list(dir.as_deref()),
        Action::Show { name, dir, json } => {
            let p = crate::cost::load_profile(resolve(&name, dir.as_deref())?)?;
            if json {
                super::emit_json(&ProfileJson::from(&p))?;
            } else {
                super::emit(&show(&p))?;
            }
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

/// One line per profile: name, where it comes from, description (cut to fit 100 columns).
fn list(dir: Option<&Path>) -> Result<ExitCode> {
    let entries: Vec<(PathBuf, String)> = match dir {
        Some(d) => profile_files(d)?.into_iter().map(|p| (p.clone(), p.display().to_string())).collect(),
        None => crate::hw::shipped::PROFILES.iter().map(|p| (PathBuf::from(p.name), "(shipped)".to_string())).collect(),
    };
    let mut out = String::new();
    for (path, source) in entries {
        let line = match crate::cost::load_profile(&path) {
            Ok(p) => format!("{:<18} {:<12} {}", p.name, source, p.description),
            Err(e) => format!("{:<18} {:<12} INVALID: {e}", "?", source),
        };
        out += &truncate(&line, 100);
        out.push('\n');
    }
    super::emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n - 1) {
        Some((i, _)) if s.chars().count() > n => format!("{}…", &s[..i]),
        _ => s.to_string(),
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

/// A path if it exists; else the profile in `dir` whose file stem or `name` matches; else the
/// shipped profile of that name (returned as its name, which `Profile::load` understands).
pub fn resolve(name: &str, dir: Option<&Path>) -> Result<PathBuf> {
    let p = PathBuf::from(name);
    if p.is_file() {
        return Ok(p);
    }
    if let Some(dir) = dir {
        let files = profile_files(dir)?;
        if let Some(f) = files.iter().find(|f| f.file_stem().is_some_and(|s| s == name)) {
            return Ok(f.clone());
        }
        if let Some(f) = files.iter().find(|f| crate::cost::load_profile(f).is_ok_and(|p| p.name == name)) {
            return Ok(f.clone());
        }
    }
    match crate::hw::shipped::find(name) {
        Some(s) => Ok(PathBuf::from(s.name)),
        None => {
            let place = dir.map(|d| format!(", not in {}", d.display())).unwrap_or_default();
            bail!("no profile `{name}` (not a file{place}, and not a shipped profile: {})", crate::hw::shipped::names().join(", "))
        }
    }
}

/// `nce profiles show --json`.
#[derive(serde::Serialize)]
struct ProfileJson<'a> {
    name: &'a str,
    description: &'a str,
    file: &'a Path,
    sources: &'a [String],
    unit: &'a crate::hw::ArithmeticUnit,
    memory: &'a crate::hw::Memory,
    /// Peak MACs per second at the unit's weight precision.
    peak_macs_per_second: f64,
    budgets: Vec<BudgetJson<'a>>,
    plugins: &'a std::collections::BTreeMap<String, toml::Table>,
    latency_table: Option<TableJson<'a>>,
    measurement: Option<&'a crate::hw::Measurement>,
}

#[derive(serde::Serialize)]
struct BudgetJson<'a> {
    metric: &'a str,
    /// As written: a number, or a multiple of the base network such as `1x base`.
    limit: String,
    plugin: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct TableJson<'a> {
    file: &'a Path,
    entries: usize,
}

impl<'a> From<&'a Profile> for ProfileJson<'a> {
    fn from(p: &'a Profile) -> ProfileJson<'a> {
        ProfileJson {
            name: &p.name,
            description: &p.description,
            file: &p.path,
            sources: &p.sources,
            unit: &p.unit,
            memory: &p.memory,
            peak_macs_per_second: p.macs_per_second(p.unit.weight_bits),
            budgets: p
                .budgets
                .iter()
                .map(|b| BudgetJson { metric: &b.metric, limit: b.limit.to_string(), plugin: b.plugin.as_deref() })
                .collect(),
            plugins: &p.plugins,
            latency_table: p.latency_table.as_ref().map(|t| TableJson { file: &t.path, entries: t.entries.len() }),
            measurement: p.measurement.as_ref(),
        }
    }
}

/// `text` in lines of at most 100 columns, the first starting with `first`, the rest with
/// `rest` (words longer than a line stay whole).
fn wrap(text: &str, first: &str, rest: &str) -> String {
    let mut out = String::new();
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > 100 {
            out += &line;
            out.push('\n');
            line = rest.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out + &line + "\n"
}

fn show(p: &Profile) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{} ({})", p.name, p.path.display());
    out += &wrap(&p.description, "  ", "  ");
    for s in &p.sources {
        out += &wrap(s, "  source: ", "          ");
    }
    let u = &p.unit;
    let _ = writeln!(
        out,
        "unit:    W{}A{}, {}-bit words ({} values/word), {} lanes, {} MHz\n         {} cycles/packed op, channel granularity {}",
        u.weight_bits,
        u.activation_bits,
        u.word_bits,
        u.word_bits / u.weight_bits as u32,
        u.lanes,
        u.clock_mhz,
        u.cycles_per_packed_op,
        u.channel_granularity
    );
    let _ = writeln!(out, "         peak {:.2} GMAC/s at {} bits", p.macs_per_second(u.weight_bits) / 1e9, u.weight_bits);
    let m = &p.memory;
    let _ = writeln!(
        out,
        "memory:  weights {} B, activations {} B, bandwidth {} GB/s",
        m.weight_buffer_bytes, m.activation_buffer_bytes, m.bandwidth_gbps
    );
    for b in &p.budgets {
        let _ =
            writeln!(out, "budget:  {} <= {}{}", b.metric, b.limit, b.plugin.as_ref().map(|p| format!(" (from {p})")).unwrap_or_default());
    }
    for (name, opts) in &p.plugins {
        let opts = if opts.is_empty() { String::new() } else { opts.to_string().replace('\n', " ") };
        out += &wrap(&format!("{name} {opts}"), "plugin:  ", "           ");
    }
    if let Some(t) = &p.latency_table {
        let _ = writeln!(out, "latency table: {} ({} entries)", t.path.display(), t.entries.len());
    }
    if let Some(m) = &p.measurement {
        let _ = writeln!(out, "measured: {m:?}");
    }
    out
}
