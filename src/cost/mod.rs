//! The cost-plugin registry.
//!
//! A cost plugin turns a [`Network`] into one or more metrics (MACs, bytes, milliseconds …)
//! for a given [`Profile`]. Plugins register themselves in the [`COST_PLUGINS`] distributed
//! slice, so a crate outside nce adds one without touching nce:
//!
//! ```ignore
//! use nce::cost::{CostModel, CostPlugin, PluginContext, PluginError, COST_PLUGINS};
//! #[linkme::distributed_slice(COST_PLUGINS)]
//! static MINE: CostPlugin = CostPlugin { name: "mine", origin: module_path!(), summary: "…", create: |ctx| Ok(Box::new(Mine::new(ctx)?)) };
//! ```
//!
//! Costs are *per layer* functions of the layer's shape, channels and bits, so the search can
//! take expectations of them over candidate widths; metrics that are not sums over layers
//! (peak memory) override [`CostModel::network_cost`] and say so with
//! [`CostModel::separable`].

mod bops;
mod evaluate;
mod latency_lut;
mod macs;
mod packed_memory;
mod params;
mod roofline;

pub use evaluate::{BudgetVerdict, CostReport, Evaluator, MetricReport};
pub use packed_memory::{packed_activation_bytes, packed_weight_bytes};

use crate::graph::{Layer, Network};
use crate::hw::{Profile, ProfileError};
use linkme::distributed_slice;
use std::path::Path;

/// Reads and validates a profile, including its cost plugins (they must be registered and
/// accept their options) and its budgets (each must be produced by exactly one plugin of the
/// profile, or name the plugin). [`Profile::load`] checks only the file's own fields: the
/// plugin checks live here so that `hw` does not depend on `cost`.
pub fn load_profile(path: impl AsRef<Path>) -> Result<Profile, ProfileError> {
    checked(Profile::load(path)?)
}

/// [`load_profile`] for text already read; `path` names the file in errors and resolves its
/// relative paths.
pub fn parse_profile(text: &str, path: &Path) -> Result<Profile, ProfileError> {
    checked(Profile::parse(text, path)?)
}

/// Plugins and budget/metric matching are checked by building the evaluator once.
fn checked(profile: Profile) -> Result<Profile, ProfileError> {
    Evaluator::new(&profile)?;
    Ok(profile)
}

/// Description of one metric a plugin produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    /// Name budgets refer to, e.g. `macs`, `latency_ms`.
    pub name: String,
    /// Unit for display, e.g. `MACs`, `ms`, `bytes`.
    pub unit: String,
}

impl Metric {
    pub fn new(name: &str, unit: &str) -> Metric {
        Metric { name: name.into(), unit: unit.into() }
    }
}

/// A configured cost model.
pub trait CostModel: Send + Sync {
    /// The metrics this model computes, in the order its cost vectors use.
    fn metrics(&self) -> Vec<Metric>;

    /// The cost of one layer, one value per metric. For non-separable metrics this is the
    /// layer's contribution for display only.
    fn layer_cost(&self, layer: &Layer) -> Result<Vec<f64>, CostError>;

    /// The whole network's cost. The default sums [`CostModel::layer_cost`].
    fn network_cost(&self, net: &Network) -> Result<Vec<f64>, CostError> {
        let mut total = vec![0.0; self.metrics().len()];
        for layer in &net.layers {
            for (t, c) in total.iter_mut().zip(self.layer_cost(layer)?) {
                *t += c;
            }
        }
        Ok(total)
    }

    /// Whether metric `i`'s network cost is the sum of its layer costs (the search may then
    /// take a differentiable expectation of it over candidate widths).
    fn separable(&self, _metric: usize) -> bool {
        true
    }
}

/// What a plugin is given when a profile instantiates it.
pub struct PluginContext<'a> {
    pub profile: &'a Profile,
    /// The `[plugins.NAME]` table of the profile.
    pub options: &'a toml::Table,
}

impl PluginContext<'_> {
    /// Deserialises the plugin's options; use `#[serde(deny_unknown_fields)]` on `T` so typos
    /// are reported.
    pub fn options<T: serde::de::DeserializeOwned>(&self) -> Result<T, PluginError> {
        toml::Value::Table(self.options.clone())
            .try_into()
            .map_err(|e: toml::de::Error| PluginError::Options(e.message().trim().to_string()))
    }
}

/// A registry entry.
pub struct CostPlugin {
    /// The name profiles use in `[plugins.NAME]`.
    pub name: &'static str,
    /// Where it is registered: write `module_path!()` (names both crates when two plugins
    /// claim one name).
    pub origin: &'static str,
    /// One line for `nce profiles plugins`/docs.
    pub summary: &'static str,
    pub create: fn(&PluginContext) -> Result<Box<dyn CostModel>, PluginError>,
}

/// Every cost plugin linked into this binary: nce's built-ins and any plugin crate the final
/// binary names (`use my_plugin as _;`).
#[distributed_slice]
pub static COST_PLUGINS: [CostPlugin];

/// Looks up a registered plugin by name.
pub fn find_plugin(name: &str) -> Option<&'static CostPlugin> {
    COST_PLUGINS.iter().find(|p| p.name == name)
}

/// Every plugin name registered more than once, with the modules that register it. Names are
/// how profiles select plugins, so a duplicate is an error (never a silent shadowing).
pub fn duplicate_plugins() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut dups: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for name in plugin_names() {
        let origins: Vec<&'static str> = COST_PLUGINS.iter().filter(|p| p.name == name).map(|p| p.origin).collect();
        if origins.len() > 1 && !dups.iter().any(|(n, _)| *n == name) {
            dups.push((name, origins));
        }
    }
    dups
}

/// Names of all registered plugins, sorted.
pub fn plugin_names() -> Vec<&'static str> {
    let mut v: Vec<_> = COST_PLUGINS.iter().map(|p| p.name).collect();
    v.sort_unstable();
    v
}

/// A plugin rejected its configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PluginError {
    #[error("{0}")]
    Options(String),
    #[error("{0}")]
    Requirement(String),
}

/// A cost could not be computed for a network.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CostError {
    #[error("{plugin}: {msg}")]
    Plugin { plugin: String, msg: String },
    #[error("cost plugin `{plugin}` returned {got} values for layer `{layer}`, but declares {expected} metrics")]
    Arity { plugin: String, layer: String, got: usize, expected: usize },
    #[error("cost plugin `{plugin}` returned {value} for metric `{metric}` of layer `{layer}`: costs must be finite and non-negative")]
    BadValue { plugin: String, metric: String, layer: String, value: f64 },
}
