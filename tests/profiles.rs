//! Hardware profiles: every shipped profile loads; every class of bad input is an error that
//! names the file, the key and line:column.

use nce::hw::{BudgetLimit, Profile};
use std::path::Path;

const GOOD: &str = r#"name = "t"
description = "test"
sources = ["here"]

[unit]
weight_bits = 2
activation_bits = 2
word_bits = 32
lanes = 4
clock_mhz = 100
cycles_per_packed_op = 1
channel_granularity = 4

[memory]
weight_buffer_bytes = 65536
activation_buffer_bytes = 65536
bandwidth_gbps = 1.0

[budgets]
macs = "1.0x"
params = 300000
latency_ms = { max = 5.0, plugin = "roofline" }

[plugins.macs]
[plugins.params]
[plugins.roofline]
efficiency = 0.5
"#;

/// Parses and checks the plugins too (`Profile::parse` alone checks only the profile's own
/// fields: hw does not know the plugin registry).
fn parse(text: &str) -> Result<Profile, String> {
    nce::cost::parse_profile(text, Path::new("hw-profiles/t.toml")).map_err(|e| e.to_string())
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("profile unexpectedly accepted:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn shipped_profiles_load() {
    let mut n = 0;
    for entry in std::fs::read_dir("hw-profiles").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let p = nce::cost::load_profile(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!p.sources.is_empty(), "{}: cite sources", path.display());
            assert!(!p.budgets.is_empty(), "{}: no budgets", path.display());
            n += 1;
        }
    }
    assert!(n >= 3, "expected at least 3 shipped profiles, found {n}");
}

#[test]
fn good_profile_parses() {
    let p = parse(GOOD).unwrap();
    assert_eq!(p.unit.lanes, 4);
    assert_eq!(p.budgets.len(), 3);
    let macs = p.budgets.iter().find(|b| b.metric == "macs").unwrap();
    assert_eq!(macs.limit, BudgetLimit::Relative(1.0));
    let lat = p.budgets.iter().find(|b| b.metric == "latency_ms").unwrap();
    assert_eq!((lat.limit, lat.plugin.as_deref()), (BudgetLimit::Absolute(5.0), Some("roofline")));
    // 4 lanes × 16 values/word × 100 MHz
    assert_eq!(p.macs_per_second(2), 6.4e9);
}

#[test]
fn typo_key_names_file_key_and_position() {
    let e = err(&GOOD.replace("lanes = 4", "lanez = 4"));
    assert!(e.starts_with("hw-profiles/t.toml:9:1:"), "{e}");
    assert!(e.contains("lanez"), "{e}");
}

#[test]
fn wrong_type_is_located() {
    let e = err(&GOOD.replace("lanes = 4", "lanes = \"four\""));
    assert!(e.starts_with("hw-profiles/t.toml:9:"), "{e}");
    assert!(e.contains("four") || e.contains("integer"), "{e}");
}

#[test]
fn negative_and_zero_budgets_are_rejected() {
    let e = err(&GOOD.replace("params = 300000", "params = -5"));
    assert!(e.starts_with("hw-profiles/t.toml:21:1:") && e.contains("budgets.params") && e.contains("positive"), "{e}");
    let e = err(&GOOD.replace("macs = \"1.0x\"", "macs = \"0x\""));
    assert!(e.contains(":20:1:") && e.contains("budgets.macs"), "{e}");
    let e = err(&GOOD.replace("macs = \"1.0x\"", "macs = \"lots\""));
    assert!(e.contains("budgets.macs") && e.contains("1.0x"), "{e}");
}

#[test]
fn non_positive_unit_values_are_rejected() {
    let e = err(&GOOD.replace("clock_mhz = 100", "clock_mhz = 0"));
    assert!(e.contains(":10:1:") && e.contains("unit.clock_mhz"), "{e}");
    let e = err(&GOOD.replace("bandwidth_gbps = 1.0", "bandwidth_gbps = -1.0"));
    assert!(e.contains(":17:1:") && e.contains("memory.bandwidth_gbps"), "{e}");
}

#[test]
fn unknown_plugin_is_rejected() {
    let e = err(&GOOD.replace("[plugins.params]", "[plugins.parms]"));
    assert!(e.contains(":25:1:") && e.contains("unknown cost plugin `parms`") && e.contains("registered:"), "{e}");
}

#[test]
fn bad_plugin_options_are_rejected() {
    let e = err(&GOOD.replace("efficiency = 0.5", "eficiency = 0.5"));
    assert!(e.contains(":27:1:") && e.contains("eficiency"), "{e}");
    let e = err(&GOOD.replace("efficiency = 0.5", "efficiency = 2.0"));
    assert!(e.contains("efficiency must be in (0, 1]"), "{e}");
}

#[test]
fn budgets_must_match_a_plugin_metric() {
    let e = err(&GOOD.replace("params = 300000", "bops = 300000"));
    assert!(e.contains("budgets.bops") && e.contains("no plugin"), "{e}");
    let e = err(&GOOD.replace("latency_ms = { max = 5.0, plugin = \"roofline\" }", "latency_ms = { max = 5.0, plugin = \"macs\" }"));
    assert!(e.contains("budgets.latency_ms") && e.contains("named `macs`"), "{e}");
}

#[test]
fn ambiguous_metric_needs_a_plugin() {
    let text = GOOD.replace("latency_ms = { max = 5.0, plugin = \"roofline\" }", "latency_ms = 5.0")
        + "\n[plugins.latency-lut]\nallow_missing = true\n\n[latency_table]\nfile = \"tables/t.csv\"\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tables")).unwrap();
    std::fs::write(dir.path().join("tables/t.csv"), "signature,count,mean_us,var_us2\n").unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, &text).unwrap();
    let e = nce::cost::load_profile(&path).unwrap_err().to_string();
    assert!(e.contains("several plugins") && e.contains("latency-lut") && e.contains("roofline"), "{e}");
}

#[test]
fn missing_latency_table_is_rejected() {
    let text = GOOD.to_string() + "\n[latency_table]\nfile = \"tables/nope.csv\"\n";
    let e = err(&text);
    assert!(e.starts_with("hw-profiles/t.toml:30:1: latency table") && e.contains("nope.csv"), "{e}");
}

#[test]
fn latency_lut_requires_a_table() {
    let e = err(&GOOD.replace("[plugins.macs]", "[plugins.latency-lut]\n[plugins.macs]"));
    assert!(e.contains("latency-lut") && e.contains("[latency_table]"), "{e}");
}

#[test]
fn missing_file_names_it() {
    let e = Profile::load("hw-profiles/does-not-exist.toml").unwrap_err().to_string();
    assert!(e.contains("hw-profiles/does-not-exist.toml") && e.contains("cannot read"), "{e}");
}

#[test]
fn malformed_toml_is_located() {
    let e = err(&GOOD.replace("lanes = 4", "lanes = = 4"));
    assert!(e.starts_with("hw-profiles/t.toml:9:"), "{e}");
    // An error that points at no key (an unclosed table header) prints no empty key.
    let e = err(&GOOD.replace("[unit]", "[unit"));
    assert!(e.contains("unclosed table") && !e.contains("``"), "{e}");
}

/// Malformed budgets are named by key and described in the user's terms; serde's internal
/// "untagged enum RawBudget" never reaches the user.
#[test]
fn malformed_budgets_name_the_key_not_serde_internals() {
    for (bad, want) in [
        ("macs = true", "got a boolean"),
        ("macs = { max = \"1.0x\", plugn = \"macs\" }", "unknown key `plugn`"),
        ("macs = { plugin = \"macs\" }", "needs `max`"),
        ("macs = [1]", "got a array"),
        ("macs = { max = true }", "`max` must be"),
        ("macs = { max = 1.0, plugin = 3 }", "`plugin` must be"),
    ] {
        let e = err(&GOOD.replace("macs = \"1.0x\"", bad));
        assert!(e.starts_with("hw-profiles/t.toml:20:1: `budgets.macs`: "), "{bad}: {e}");
        assert!(e.contains(want) && !e.contains("untagged"), "{bad}: {e}");
    }
}
