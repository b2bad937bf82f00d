//! Loading and validating `hw-profiles/*.toml`.

use super::{LatencyTable, Location, TableError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A parsed, validated hardware profile.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Where the numbers in this profile come from (datasheets, papers, measurements).
    pub sources: Vec<String>,
    pub unit: ArithmeticUnit,
    pub memory: Memory,
    pub budgets: Vec<Budget>,
    /// Cost plugins to run, by registered name, with their options.
    pub plugins: BTreeMap<String, toml::Table>,
    pub latency_table: Option<LatencyTable>,
    pub measurement: Option<Measurement>,
    /// The file this profile came from and its text (kept to point errors at line:column).
    pub path: PathBuf,
    pub source: String,
}

/// The target's arithmetic unit for packed low-bit MACs.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArithmeticUnit {
    /// Native weight precision of the unit (the uniform bit width the search keeps).
    pub weight_bits: u8,
    pub activation_bits: u8,
    /// Width of one packed operand word (e.g. 32: sixteen 2-bit values per word).
    pub word_bits: u32,
    /// Packed-word operations issued per cycle.
    pub lanes: u32,
    pub clock_mhz: f64,
    /// Cycles one lane needs for one packed word operation.
    pub cycles_per_packed_op: f64,
    /// Output channels are computed in groups of this many; others are padding.
    pub channel_granularity: usize,
}

/// On-chip buffers and the bandwidth behind them.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    pub weight_buffer_bytes: u64,
    pub activation_buffer_bytes: u64,
    /// Bytes per second to the weight/activation memories, in GB/s (1e9 bytes/s).
    pub bandwidth_gbps: f64,
}

/// How a latency table was measured (issue: predictions drift when this is not recorded).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    pub backend: Option<String>,
    pub threads: Option<u32>,
    pub cpu: Option<String>,
    pub cpu_governor: Option<String>,
    pub notes: Option<String>,
}

/// An upper bound on one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    /// Metric name, e.g. `macs`, `params`, `latency_ms`, `packed_weight_bytes`.
    pub metric: String,
    pub limit: BudgetLimit,
    /// Which plugin provides the metric, when several in the profile do.
    pub plugin: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BudgetLimit {
    Absolute(f64),
    /// A multiple of the base network's value, written `"1.0x"`.
    Relative(f64),
}

impl BudgetLimit {
    /// The absolute limit, given the base network's value of the metric.
    pub fn resolve(&self, base: f64) -> f64 {
        match *self {
            BudgetLimit::Absolute(v) => v,
            BudgetLimit::Relative(r) => r * base,
        }
    }
}

impl std::fmt::Display for BudgetLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BudgetLimit::Absolute(v) => write!(f, "{v}"),
            BudgetLimit::Relative(r) => write!(f, "{r}x base"),
        }
    }
}

/// Everything that can be wrong with a profile; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{}: cannot read profile: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{}:{at}: {}{msg}", file.display(), key_prefix(key))]
    Invalid { file: PathBuf, at: Location, key: String, msg: String },
    /// Neither a file nor the name of a shipped profile.
    #[error("no profile `{name}`: not a file, and not a shipped profile ({known})")]
    Unknown { name: String, known: String },
    #[error("{}:{at}: latency table: {source}", file.display())]
    Table { file: PathBuf, at: Location, source: TableError },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    description: String,
    #[serde(default)]
    sources: Vec<String>,
    unit: ArithmeticUnit,
    memory: Memory,
    #[serde(default)]
    budgets: BTreeMap<String, toml::Value>,
    plugins: BTreeMap<String, toml::Table>,
    latency_table: Option<RawTable>,
    measurement: Option<Measurement>,
}

/// A budget's limit as written: a number (absolute) or a string such as `"1.0x"` (relative).
enum RawLimit {
    Number(f64),
    Text(String),
}

const BUDGET_FORMS: &str = "a number, a multiple of the base such as \"1.0x\", or { max = …, plugin = \"NAME\" }";

fn raw_limit(v: &toml::Value) -> Option<RawLimit> {
    match v {
        toml::Value::Integer(i) => Some(RawLimit::Number(*i as f64)),
        toml::Value::Float(f) => Some(RawLimit::Number(*f)),
        toml::Value::String(s) => Some(RawLimit::Text(s.clone())),
        _ => None,
    }
}

/// One `[budgets]` entry: its limit and the plugin it names, or a message saying what is
/// wrong in the user's terms (not serde's "untagged enum" wording).
fn raw_budget(v: &toml::Value) -> Result<(RawLimit, Option<String>), String> {
    if let Some(l) = raw_limit(v) {
        return Ok((l, None));
    }
    let toml::Value::Table(t) = v else { return Err(format!("expected {BUDGET_FORMS}, got a {}", v.type_str())) };
    if let Some(k) = t.keys().find(|k| !["max", "plugin"].contains(&k.as_str())) {
        return Err(format!("unknown key `{k}` (a budget table has `max` and `plugin`)"));
    }
    let max = t.get("max").ok_or_else(|| "a budget table needs `max`".to_string())?;
    let max = raw_limit(max).ok_or_else(|| format!("`max` must be a number or a string such as \"1.0x\", got a {}", max.type_str()))?;
    let plugin = match t.get("plugin") {
        None => None,
        Some(toml::Value::String(p)) => Some(p.clone()),
        Some(other) => return Err(format!("`plugin` must be a plugin name (a string), got a {}", other.type_str())),
    };
    Ok((max, plugin))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    file: PathBuf,
}

impl Profile {
    /// Reads, parses and validates a profile's own fields (units, memories, budgets' limits,
    /// its latency table). Its cost plugins and the budgets' metrics are checked against the
    /// plugin registry by `crate::cost::load_profile` (hw describes targets and does not know
    /// the plugins).
    ///
    /// A `path` that is not a file but the name of a shipped profile (`npu-int2-array`) loads
    /// that profile from the copy compiled into the library ([`super::shipped`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Profile, ProfileError> {
        let path = path.as_ref();
        if !path.exists() && path.components().count() == 1 {
            let name = path.to_string_lossy();
            return match super::shipped::find(&name) {
                Some(p) => Profile::parse(p.text, &super::shipped::path(&p)),
                None => Err(ProfileError::Unknown { name: name.into_owned(), known: super::shipped::names().join(", ") }),
            };
        }
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io { file: path.into(), source })?;
        Profile::parse(&text, path)
    }

    /// Parses profile text; `path` is used for error messages and to resolve relative files.
    pub fn parse(text: &str, path: &Path) -> Result<Profile, ProfileError> {
        let raw: Raw = toml::from_str(text).map_err(|e| syntax_error(text, path, &e))?;
        let invalid = |table: &str, key: &str, msg: String| ProfileError::Invalid {
            file: path.into(),
            at: Location::of_key(text, table, key),
            key: if table.is_empty() { key.to_string() } else { format!("{table}.{key}") },
            msg,
        };
        check_values(&raw).map_err(|(table, key, msg)| invalid(table, key, msg))?;
        let mut budgets = Vec::new();
        for (metric, rb) in &raw.budgets {
            let (raw_limit, plugin) = raw_budget(rb).map_err(|msg| invalid("budgets", metric, msg))?;
            let limit = parse_limit(&raw_limit).map_err(|msg| invalid("budgets", metric, msg))?;
            budgets.push(Budget { metric: metric.clone(), limit, plugin });
        }
        if raw.plugins.is_empty() {
            return Err(invalid("", "plugins", "a profile needs at least one cost plugin ([plugins.NAME])".into()));
        }
        let latency_table = raw.latency_table.as_ref().map(|t| load_latency_table(t, text, path)).transpose()?;
        Ok(Profile {
            name: raw.name,
            description: raw.description,
            sources: raw.sources,
            unit: raw.unit,
            memory: raw.memory,
            budgets,
            plugins: raw.plugins,
            latency_table,
            measurement: raw.measurement,
            path: path.into(),
            source: text.into(),
        })
    }

    /// An error located at `[table] key` of this profile's file.
    pub fn error_at(&self, table: &str, key: &str, msg: impl Into<String>) -> ProfileError {
        ProfileError::Invalid {
            file: self.path.clone(),
            at: Location::of_key(&self.source, table, key),
            key: match (table.is_empty(), key.is_empty()) {
                (true, _) => key.to_string(),
                (false, true) => table.to_string(),
                (false, false) => format!("{table}.{key}"),
            },
            msg: msg.into(),
        }
    }

    /// The unit's MACs per second for a layer with `bits`-bit operands: each lane handles one
    /// word of `word_bits / bits` values per `cycles_per_packed_op` cycles.
    pub fn macs_per_second(&self, bits: u8) -> f64 {
        let per_word = (self.unit.word_bits / bits.max(1) as u32).max(1) as f64;
        self.unit.lanes as f64 * per_word / self.unit.cycles_per_packed_op * self.unit.clock_mhz * 1e6
    }
}

/// "`key`: " before a message, or nothing where the error points at no key (a syntax error).
fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("`{key}`: ")
    }
}

/// A TOML syntax or type error, located at its offset, naming the text it points at.
fn syntax_error(text: &str, path: &Path, e: &toml::de::Error) -> ProfileError {
    let span = e.span().unwrap_or(0..0);
    let key = text.get(span.clone()).unwrap_or("").lines().next().unwrap_or("").trim().to_string();
    let msg = e.message().trim().to_string();
    ProfileError::Invalid { file: path.into(), at: Location::of_offset(text, span.start), key, msg }
}

/// The value checks the types cannot express, as `(table, key, problem)` of the first failure.
fn check_values(raw: &Raw) -> Result<(), (&'static str, &'static str, String)> {
    if raw.name.trim().is_empty() {
        return Err(("", "name", "must not be empty".into()));
    }
    let u = &raw.unit;
    for (key, bits) in [("weight_bits", u.weight_bits), ("activation_bits", u.activation_bits)] {
        if !(1..=8).contains(&bits) {
            return Err(("unit", key, format!("must be between 1 and 8, got {bits}")));
        }
    }
    let positive = [
        ("unit", "word_bits", u.word_bits as f64),
        ("unit", "lanes", u.lanes as f64),
        ("unit", "clock_mhz", u.clock_mhz),
        ("unit", "cycles_per_packed_op", u.cycles_per_packed_op),
        ("unit", "channel_granularity", u.channel_granularity as f64),
        ("memory", "weight_buffer_bytes", raw.memory.weight_buffer_bytes as f64),
        ("memory", "activation_buffer_bytes", raw.memory.activation_buffer_bytes as f64),
        ("memory", "bandwidth_gbps", raw.memory.bandwidth_gbps),
    ];
    for (table, key, v) in positive {
        if !(v.is_finite() && v > 0.0) {
            return Err((table, key, format!("must be a positive number, got {v}")));
        }
    }
    if !u.word_bits.is_multiple_of(u.weight_bits as u32) || u.word_bits > 1024 {
        let msg = format!("must be a multiple of weight_bits ({}) and at most 1024, got {}", u.weight_bits, u.word_bits);
        return Err(("unit", "word_bits", msg));
    }
    Ok(())
}

/// The profile's latency table: a shipped one by name, else the file beside the profile.
fn load_latency_table(t: &RawTable, text: &str, path: &Path) -> Result<LatencyTable, ProfileError> {
    let file = path.parent().unwrap_or(Path::new(".")).join(&t.file);
    let table = match super::shipped::file(&file) {
        Some(text) => LatencyTable::parse(text, &file),
        None => LatencyTable::load(&file),
    };
    table.map_err(|source| ProfileError::Table { file: path.into(), at: Location::of_key(text, "latency_table", "file"), source })
}

fn parse_limit(raw: &RawLimit) -> Result<BudgetLimit, String> {
    let limit = match raw {
        RawLimit::Number(v) => BudgetLimit::Absolute(*v),
        RawLimit::Text(s) => {
            let t = s.trim();
            let r = t
                .strip_suffix(['x', 'X'])
                .and_then(|n| n.trim().parse::<f64>().ok())
                .ok_or_else(|| format!("expected a number or a multiple of the base such as \"1.0x\", got \"{s}\""))?;
            BudgetLimit::Relative(r)
        }
    };
    let v = match limit {
        BudgetLimit::Absolute(v) | BudgetLimit::Relative(v) => v,
    };
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("a budget must be positive, got {v}"));
    }
    Ok(limit)
}
