//! A plugin's values are checked: one per declared metric, finite and non-negative (a negative
//! or NaN cost would pass any budget). Each bad plugin is registered here, in its own test
//! binary, like a user's plugin crate would be.

use linkme::distributed_slice;
use nce::cost::{CostError, CostModel, CostPlugin, Evaluator, Metric, COST_PLUGINS};
use nce::graph::{self, BitConfig, Layer, ModelKind, Shape};
use nce::hw::Profile;
use std::path::Path;

struct Bad {
    value: f64,
    values: usize,
}

impl CostModel for Bad {
    fn metrics(&self) -> Vec<Metric> {
        vec![Metric { name: "bad_a".into(), unit: "x".into() }, Metric { name: "bad_b".into(), unit: "x".into() }]
    }
    fn layer_cost(&self, _layer: &Layer) -> Result<Vec<f64>, CostError> {
        Ok(vec![self.value; self.values])
    }
}

#[distributed_slice(COST_PLUGINS)]
static NEGATIVE: CostPlugin = CostPlugin {
    name: "test-negative",
    origin: module_path!(),
    summary: "returns -1",
    create: |_| Ok(Box::new(Bad { value: -1.0, values: 2 })),
};
#[distributed_slice(COST_PLUGINS)]
static NAN: CostPlugin = CostPlugin {
    name: "test-nan",
    origin: module_path!(),
    summary: "returns NaN",
    create: |_| Ok(Box::new(Bad { value: f64::NAN, values: 2 })),
};
#[distributed_slice(COST_PLUGINS)]
static SHORT: CostPlugin = CostPlugin {
    name: "test-short",
    origin: module_path!(),
    summary: "returns one value for two metrics",
    create: |_| Ok(Box::new(Bad { value: 1.0, values: 1 })),
};

fn evaluate(plugin: &str) -> Result<(), CostError> {
    let text = format!(
        "name = \"t\"\ndescription = \"t\"\nsources = [\"t\"]\n[unit]\nweight_bits = 2\nactivation_bits = 2\nword_bits = 8\nlanes = 1\n\
         clock_mhz = 1\ncycles_per_packed_op = 1\nchannel_granularity = 1\n[memory]\nweight_buffer_bytes = 1\nactivation_buffer_bytes = 1\n\
         bandwidth_gbps = 1.0\n[budgets]\nbad_a = 10.0\n[plugins.{plugin}]\n"
    );
    let profile = Profile::parse(&text, Path::new("t.toml")).unwrap();
    let eval = Evaluator::new(&profile).unwrap();
    let net = graph::build(ModelKind::Resnet20, Shape::new(1, 28, 28), 10, None, &BitConfig::uniform(2)).unwrap();
    eval.evaluate(&net, &net).map(|_| ())
}

#[test]
fn a_negative_cost_is_an_error_naming_plugin_and_layer() {
    let e = evaluate("test-negative").unwrap_err();
    assert!(matches!(&e, CostError::BadValue { plugin, layer, .. } if plugin == "test-negative" && layer == "conv1"), "{e}");
    assert!(e.to_string().contains("finite and non-negative"), "{e}");
}

#[test]
fn a_nan_cost_is_an_error() {
    assert!(matches!(evaluate("test-nan"), Err(CostError::BadValue { .. })));
}

#[test]
fn the_wrong_number_of_values_is_an_error_not_a_panic() {
    let e = evaluate("test-short").unwrap_err();
    assert!(matches!(e, CostError::Arity { got: 1, expected: 2, .. }), "{e}");
}

#[test]
fn absurd_widths_and_inputs_are_errors_not_wrapped_counts() {
    let huge = vec![1usize << 63; 19];
    let e = graph::build(ModelKind::Resnet20, Shape::new(1, 28, 28), 10, Some(&huge), &BitConfig::uniform(2)).unwrap_err();
    assert!(e.to_string().contains("above the supported maximum"), "{e}");
    let e = graph::build(ModelKind::Resnet20, Shape::new(3, 1 << 20, 32), 10, None, &BitConfig::uniform(2)).unwrap_err();
    assert!(e.to_string().contains("input height"), "{e}");
    // The largest accepted sizes count exactly (no wrap): MACs grow with the width.
    let wide = vec![1usize << 16; 19];
    let net = graph::build(ModelKind::Resnet20, Shape::new(1, 28, 28), 10, Some(&wide), &BitConfig::uniform(2));
    match net {
        Ok(n) => assert!(n.macs() > 1 << 40),
        Err(e) => assert!(e.to_string().contains("MACs of layer"), "{e}"),
    }
}
