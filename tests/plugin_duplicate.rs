//! A plugin crate that registers a name nce already uses (`macs`) does not silently shadow the
//! built-in: loading any profile is an error naming both registrations.

use linkme::distributed_slice;
use nce::cost::{CostPlugin, Evaluator, COST_PLUGINS};

#[distributed_slice(COST_PLUGINS)]
static SHADOW: CostPlugin = CostPlugin {
    name: "macs",
    origin: module_path!(),
    summary: "a second `macs`",
    create: |_| Err(nce::cost::PluginError::Requirement("never created".into())),
};

#[test]
fn duplicate_plugin_names_are_an_error_naming_both() {
    // The profile loader validates plugins against the registry, so the error may come from it
    // or from the evaluator; either way it names both registrations and the profile.
    let e = match nce::cost::load_profile("hw-profiles/nce-flops-params.toml") {
        Err(e) => e.to_string(),
        Ok(p) => Evaluator::new(&p).err().expect("a duplicate name must be refused").to_string(),
    };
    assert!(e.starts_with("hw-profiles/nce-flops-params.toml"), "{e}");
    assert!(e.contains("`macs` is registered more than once"), "{e}");
    assert!(e.contains("nce::cost::macs") && e.contains("plugin_duplicate"), "{e}");
}
