//! Running a profile's plugins over a network and checking its budgets.

use super::{find_plugin, plugin_names, CostError, CostModel, Metric, PluginContext};
use crate::graph::Network;
use crate::hw::{Budget, BudgetLimit, Profile, ProfileError};
use serde::Serialize;

/// The instantiated plugins of one profile, with each budget bound to the metric it limits.
pub struct Evaluator {
    plugins: Vec<Instance>,
    budgets: Vec<BoundBudget>,
}

struct Instance {
    name: String,
    model: Box<dyn CostModel>,
    metrics: Vec<Metric>,
}

#[derive(Clone, Debug)]
struct BoundBudget {
    budget: Budget,
    plugin: usize,
    metric: usize,
}

/// One metric of one plugin over a network.
#[derive(Clone, Debug, Serialize)]
pub struct MetricReport {
    pub plugin: String,
    pub metric: String,
    pub unit: String,
    /// Per-layer values, in layer order.
    pub per_layer: Vec<f64>,
    pub total: f64,
    pub separable: bool,
}

/// A budget checked against a network.
#[derive(Clone, Debug, Serialize)]
pub struct BudgetVerdict {
    pub metric: String,
    pub plugin: String,
    /// The limit as written (`"1.0x base"` or a number).
    pub limit: String,
    /// The absolute limit.
    pub max: f64,
    pub value: f64,
    /// The base network's value of the metric.
    pub base: f64,
    pub pass: bool,
}

/// All metrics and budget verdicts for one network.
#[derive(Clone, Debug, Serialize)]
pub struct CostReport {
    pub metrics: Vec<MetricReport>,
    pub budgets: Vec<BudgetVerdict>,
}

impl CostReport {
    /// The report as an `arch.toml` records it: every metric's total beside `base`'s (the
    /// base network's report, same metrics in the same order), and the budget verdicts.
    pub fn arch_entries(&self, base: &CostReport) -> (Vec<crate::graph::arch::ArchCost>, Vec<crate::graph::arch::ArchBudget>) {
        let costs = self
            .metrics
            .iter()
            .zip(&base.metrics)
            .map(|(m, b)| crate::graph::arch::ArchCost {
                plugin: m.plugin.clone(),
                metric: m.metric.clone(),
                value: m.total,
                base: b.total,
            })
            .collect();
        let budgets = self
            .budgets
            .iter()
            .map(|b| crate::graph::arch::ArchBudget { metric: b.metric.clone(), value: b.value, max: b.max, pass: b.pass })
            .collect();
        (costs, budgets)
    }

    pub fn passes(&self) -> bool {
        self.budgets.iter().all(|b| b.pass)
    }
    /// The total of `metric` (from the first plugin that provides it).
    pub fn total(&self, metric: &str) -> Option<f64> {
        self.metrics.iter().find(|m| m.metric == metric).map(|m| m.total)
    }
}

impl Instance {
    /// A plugin's values for one layer (or the total), checked: one per declared metric, each
    /// finite and non-negative. A negative or NaN cost would pass any budget.
    fn checked(&self, layer: &str, v: Vec<f64>) -> Result<Vec<f64>, CostError> {
        if v.len() != self.metrics.len() {
            return Err(CostError::Arity { plugin: self.name.clone(), layer: layer.into(), got: v.len(), expected: self.metrics.len() });
        }
        if let Some((m, x)) = self.metrics.iter().zip(&v).find(|(_, x)| !x.is_finite() || **x < 0.0) {
            return Err(CostError::BadValue { plugin: self.name.clone(), metric: m.name.clone(), layer: layer.into(), value: *x });
        }
        Ok(v)
    }
}

impl Evaluator {
    /// Instantiates every plugin the profile names and binds every budget to one metric.
    pub fn new(profile: &Profile) -> Result<Evaluator, ProfileError> {
        if let Some((name, origins)) = super::duplicate_plugins().into_iter().next() {
            return Err(profile.error_at(
                "plugins",
                "",
                format!("cost plugin name `{name}` is registered more than once (by {}); rename one of them", origins.join(" and ")),
            ));
        }
        let plugins = profile.plugins.iter().map(|(name, options)| instantiate(profile, name, options)).collect::<Result<Vec<_>, _>>()?;
        let budgets = profile.budgets.iter().map(|b| bind(profile, &plugins, b)).collect::<Result<Vec<_>, _>>()?;
        Ok(Evaluator { plugins, budgets })
    }

    /// Every metric of every plugin, and each budget's verdict. Relative budgets are resolved
    /// against `base` (the unmodified network of the same model, input and bits).
    pub fn evaluate(&self, net: &Network, base: &Network) -> Result<CostReport, CostError> {
        let mut metrics = Vec::new();
        let mut totals = Vec::new();
        for p in &self.plugins {
            let per_layer: Vec<Vec<f64>> =
                net.layers.iter().map(|l| p.model.layer_cost(l).and_then(|v| p.checked(&l.name, v))).collect::<Result<_, _>>()?;
            let total = p.checked("(network total)", p.model.network_cost(net)?)?;
            for (j, m) in p.metrics.iter().enumerate() {
                metrics.push(MetricReport {
                    plugin: p.name.clone(),
                    metric: m.name.clone(),
                    unit: m.unit.clone(),
                    per_layer: per_layer.iter().map(|v| v[j]).collect(),
                    total: total[j],
                    separable: p.model.separable(j),
                });
            }
            totals.push(total);
        }
        let mut budgets = Vec::new();
        for b in &self.budgets {
            let p = &self.plugins[b.plugin];
            let value = totals[b.plugin][b.metric];
            let base_value = if matches!(b.budget.limit, BudgetLimit::Relative(_)) || !std::ptr::eq(net, base) {
                p.checked("(base network total)", p.model.network_cost(base)?)?[b.metric]
            } else {
                value
            };
            let max = b.budget.limit.resolve(base_value);
            budgets.push(BudgetVerdict {
                metric: b.budget.metric.clone(),
                plugin: p.name.clone(),
                limit: b.budget.limit.to_string(),
                max,
                value,
                base: base_value,
                // A hair of slack so a "1.0x" budget accepts the base network despite float sums.
                pass: value <= max * (1.0 + 1e-9),
            });
        }
        Ok(CostReport { metrics, budgets })
    }

    /// The plugin models with their names, for code (like the search) that needs per-layer
    /// costs under hypothetical widths.
    pub fn models(&self) -> impl Iterator<Item = (&str, &dyn CostModel, &[Metric])> {
        self.plugins.iter().map(|p| (p.name.as_str(), p.model.as_ref(), p.metrics.as_slice()))
    }

    /// Each budget with the index (into [`Evaluator::models`]) and metric index it is bound to.
    pub fn budgets(&self) -> impl Iterator<Item = (&Budget, usize, usize)> {
        self.budgets.iter().map(|b| (&b.budget, b.plugin, b.metric))
    }
}

/// The first option key of `options` that an error message mentions (to point at its line).
fn first_key_named_in(msg: &str, options: &toml::Table) -> Option<String> {
    if let Some(start) = msg.find("unknown field `") {
        let rest = &msg[start + 15..];
        return rest.split('`').next().map(str::to_string);
    }
    options.keys().find(|k| msg.contains(k.as_str())).cloned()
}

/// The plugin `[plugins.NAME]` names, created with its options.
fn instantiate(profile: &Profile, name: &str, options: &toml::Table) -> Result<Instance, ProfileError> {
    let plugin = find_plugin(name).ok_or_else(|| {
        profile.error_at(
            &format!("plugins.{name}"),
            "",
            format!("unknown cost plugin `{name}` (registered: {})", plugin_names().join(", ")),
        )
    })?;
    let ctx = PluginContext { profile, options };
    let model = (plugin.create)(&ctx).map_err(|e| {
        let key = first_key_named_in(&e.to_string(), options).unwrap_or_default();
        profile.error_at(&format!("plugins.{name}"), &key, format!("plugin `{name}`: {e}"))
    })?;
    let metrics = model.metrics();
    Ok(Instance { name: name.to_string(), model, metrics })
}

/// The one plugin metric a budget limits: the budget's `plugin` if it names one, else the only
/// plugin that computes the metric.
fn bind(profile: &Profile, plugins: &[Instance], b: &Budget) -> Result<BoundBudget, ProfileError> {
    let providers: Vec<(usize, usize)> = plugins
        .iter()
        .enumerate()
        .filter(|(_, p)| b.plugin.as_deref().is_none_or(|want| want == p.name))
        .filter_map(|(i, p)| p.metrics.iter().position(|m| m.name == b.metric).map(|j| (i, j)))
        .collect();
    match providers.as_slice() {
        [(plugin, metric)] => Ok(BoundBudget { budget: b.clone(), plugin: *plugin, metric: *metric }),
        [] => {
            let available: Vec<String> =
                plugins.iter().flat_map(|p| p.metrics.iter().map(move |m| format!("{} ({})", m.name, p.name))).collect();
            let named = b.plugin.as_ref().map(|p| format!(" named `{p}`")).unwrap_or_default();
            let msg = format!("no plugin of this profile{named} computes `{}`; available metrics: {}", b.metric, available.join(", "));
            Err(profile.error_at("budgets", &b.metric, msg))
        }
        many => {
            let names: Vec<&str> = many.iter().map(|(i, _)| plugins[*i].name.as_str()).collect();
            let msg = format!(
                "`{}` is computed by several plugins ({}); write `{} = {{ max = …, plugin = \"{}\" }}`",
                b.metric,
                names.join(", "),
                b.metric,
                names[0]
            );
            Err(profile.error_at("budgets", &b.metric, msg))
        }
    }
}
