//! Charts: both files written, valid PNG of the chart's size, SVG with the title, clear errors.
#![cfg(feature = "train")]

use nce::plot::{bar_chart, bar_chart_with_lines, line_chart, small_multiples, PlotError, Series};
use std::path::Path;

fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

fn check_pair(paths: &[std::path::PathBuf], stem: &Path, title: &str) {
    assert_eq!(paths.len(), 2);
    assert_eq!(paths[0], stem.with_extension("svg"));
    assert_eq!(paths[1], stem.with_extension("png"));
    let svg = std::fs::read_to_string(&paths[0]).unwrap();
    assert!(svg.starts_with("<svg") || svg.contains("<svg"), "not an SVG");
    assert!(svg.contains(title), "SVG lacks the title `{title}`");
    let (w, h) = png_size(&paths[1]);
    assert!((400..=4000).contains(&w) && (300..=4000).contains(&h), "PNG is {w}x{h}");
}

#[test]
fn line_chart_writes_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("costs");
    let series = vec![
        Series::new("macs argmax", (0..10).map(|e| (e as f64, 1.3 - 0.04 * e as f64)).collect()),
        Series::new("macs expected", (0..10).map(|e| (e as f64, 1.2 - 0.03 * e as f64)).collect()),
        // A non-separable budget has no expected cost: NaN points are skipped.
        Series::new("peak expected", vec![(0.0, f64::NAN), (1.0, f64::NAN)]),
    ];
    let paths = line_chart(&stem, "Budget use per epoch", "epoch", "cost / target", &series, &[("budget".into(), 1.0)]).unwrap();
    check_pair(&paths, &stem, "Budget use per epoch");
    let svg = std::fs::read_to_string(&paths[0]).unwrap();
    assert!(svg.contains("macs expected") && svg.contains("budget"), "legend missing");
    if let Ok(d) = std::env::var("NCE_PLOT_DEMO") {
        for p in &paths {
            std::fs::copy(p, Path::new(&d).join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn bar_chart_writes_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("widths");
    let cats: Vec<String> = (0..19).map(|i| format!("layer{}.{}.conv_a", i / 6 + 1, i % 3)).collect();
    let base: Vec<f64> = (0..19).map(|i| 16.0 * (1 << (i / 7)) as f64).collect();
    let fin: Vec<f64> = base.iter().enumerate().map(|(i, b)| b * (0.5 + 0.1 * (i % 8) as f64)).collect();
    let paths = bar_chart(&stem, "Searched widths", "output channels", &cats, &[("base".into(), base), ("searched".into(), fin)]).unwrap();
    check_pair(&paths, &stem, "Searched widths");
    // Negative values (a layer whose quantization helps) get bars below zero.
    let stem2 = dir.path().join("sens");
    let paths2 = bar_chart(&stem2, "Sensitivity", "accuracy (pp)", &cats[..3], &[("drop".into(), vec![1.0, -0.5, 2.0])]).unwrap();
    check_pair(&paths2, &stem2, "Sensitivity");
    if let Ok(d) = std::env::var("NCE_PLOT_DEMO") {
        for p in paths.iter().chain(&paths2) {
            std::fs::copy(p, Path::new(&d).join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn missing_output_dir_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let err = line_chart(&missing.join("x"), "t", "x", "y", &[Series::new("s", vec![(0.0, 1.0), (1.0, 2.0)])], &[]).unwrap_err();
    assert!(matches!(err, PlotError::OutputDir { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-dir"), "{err}");
    let err = bar_chart(&missing.join("y"), "t", "y", &["a".into()], &[("g".into(), vec![1.0])]).unwrap_err();
    assert!(err.to_string().contains("no-such-dir"), "{err}");
}

#[test]
fn bad_data_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = bar_chart(&dir.path().join("b"), "t", "y", &["a".into(), "b".into()], &[("g".into(), vec![1.0])]).unwrap_err();
    assert!(err.to_string().contains("1 values for 2 categories"), "{err}");
    let err = line_chart(&dir.path().join("l"), "t", "x", "y", &[Series::new("s", vec![(0.0, f64::NAN)])], &[]).unwrap_err();
    assert!(err.to_string().contains("no finite points"), "{err}");
}

#[cfg(feature = "train")]
#[test]
fn search_plots_from_a_synthetic_log() {
    use nce::graph::ModelKind;
    use nce::search::derive::{ArchFile, ArchLayer};
    use nce::search::space::Expansion;
    use nce::search::{plots, EpochLog};

    let dir = tempfile::tempdir().unwrap();
    let names = ["conv1", "layer1.0.conv_a", "layer2.0.conv_a"];
    let base = vec![16, 16, 32];
    let widths = vec![16, 20, 24];
    let log: Vec<EpochLog> = (0..4)
        .map(|e| {
            let p = 0.3 + 0.1 * e as f64;
            // Slot 1 expands after epoch 1: one more candidate from then on.
            let probs =
                vec![vec![0.3, 0.3, 0.4], if e < 2 { vec![0.2, 0.2, p] } else { vec![0.1, 0.2, 0.3, p - 0.2] }, vec![0.5, 0.3, 0.2]];
            EpochLog {
                epoch: e,
                tau: 5.0 - e as f64,
                weight_loss: 1.0,
                weight_acc: 0.5,
                arch_loss: 1.0,
                arch_acc: 0.5,
                argmax_test_acc: 0.5,
                argmax_val_acc: 0.5,
                argmax_pass: true,
                widths: widths.clone(),
                candidates: probs.iter().map(|p| (1..=p.len()).map(|i| 8 * i).collect()).collect(),
                probs,
                budgets: vec![
                    ("macs".into(), 1.1e6 - 5e4 * e as f64, 1.2e6 - 6e4 * e as f64, 1.0e6),
                    ("peak_activation_bytes".into(), f64::NAN, 9e3, 1e4),
                ],
                expansions: if e == 1 {
                    vec![Expansion { epoch: 1, slot: 1, layer: names[1].into(), old_widest: 16, new_widest: 20 }]
                } else {
                    vec![]
                },
                seconds: 1.0,
            }
        })
        .collect();
    let arch = ArchFile {
        model: ModelKind::Resnet20,
        input: nce::graph::Shape::new(1, 28, 28),
        classes: 10,
        profile: "hw-profiles/mcu-cortex-m7.toml".into(),
        widths: widths.clone(),
        base_widths: base.clone(),
        derivation: "cost-aware".into(),
        repaired: vec![],
        layers: names
            .iter()
            .zip(base.iter().zip(&widths))
            .map(|(n, (&b, &w))| ArchLayer {
                name: (*n).into(),
                base: b,
                width: w,
                candidates: vec![b / 2, b, w],
                probs: vec![0.2, 0.3, 0.5],
            })
            .collect(),
        costs: vec![],
        budgets: vec![],
        expansions: vec![],
    };
    let files = plots::write_all(dir.path(), &log, &arch, 0.5).unwrap();
    for stem in ["widths", "probs", "costs"] {
        for ext in ["svg", "png"] {
            let f = dir.path().join(format!("{stem}.{ext}"));
            assert!(files.contains(&f), "{} not reported", f.display());
            assert!(std::fs::metadata(&f).unwrap().len() > 100, "{} is empty", f.display());
        }
    }
    let costs = std::fs::read_to_string(dir.path().join("costs.svg")).unwrap();
    assert!(costs.contains("macs expected") && costs.contains("peak_activation_bytes argmax"));
    assert!(!costs.contains("peak_activation_bytes expected"), "a non-separable budget has no expected line");
    assert!(std::fs::read_to_string(dir.path().join("probs.svg")).unwrap().contains("layer2.0.conv_a"));
    if let Ok(d) = std::env::var("NCE_PLOT_DEMO") {
        for p in &files {
            std::fs::copy(p, Path::new(&d).join(format!("search-{}", p.file_name().unwrap().to_string_lossy()))).unwrap();
        }
    }

    // An empty log (zero epochs) still gets the widths chart.
    let empty = tempfile::tempdir().unwrap();
    let files = plots::write_all(empty.path(), &[], &arch, 0.5).unwrap();
    assert_eq!(files.len(), 2);
}

/// Whether the SVG has a text element reading exactly `t`.
fn has_text(svg: &str, t: &str) -> bool {
    svg.contains(&format!(">{t}<")) || svg.contains(&format!(">\n{t}\n</text>"))
}

#[test]
fn few_bars_carry_their_values_and_many_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("acc");
    let cats: Vec<String> = ["FP32", "uniform W2A2", "NCE W2A2"].map(String::from).to_vec();
    let paths =
        bar_chart_with_lines(&stem, "Accuracy", "%", &cats, &[("acc".into(), vec![94.8, 91.9, 88.25])], &[("goal".into(), 90.0)]).unwrap();
    let svg = std::fs::read_to_string(&paths[0]).unwrap();
    assert!(has_text(&svg, "94.8") && has_text(&svg, "91.9"), "value labels missing");
    assert!(has_text(&svg, "goal"), "the reference line has no legend entry");
    let many: Vec<String> = (0..30).map(|i| format!("layer{i}")).collect();
    let stem = dir.path().join("many");
    let paths = bar_chart(&stem, "Widths", "channels", &many, &[("w".into(), vec![7.77; 30])]).unwrap();
    let svg = std::fs::read_to_string(&paths[0]).unwrap();
    assert!(!has_text(&svg, "7.77"), "30 bars are too many for value labels");
}

#[test]
fn small_multiples_draw_one_panel_per_series_on_a_fixed_axis() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("probs");
    let series: Vec<Series> =
        (0..7).map(|i| Series::new(format!("slot{i}"), (0..5).map(|e| (e as f64, 0.3 + 0.05 * (e + i) as f64)).collect())).collect();
    let paths = small_multiples(&stem, "Widest probability", "epoch", &series, (0.0, 1.0), Some(0.5)).unwrap();
    check_pair(&paths, &stem, "Widest probability");
    let svg = std::fs::read_to_string(&paths[0]).unwrap();
    for i in 0..7 {
        assert!(has_text(&svg, &format!("slot{i}")), "panel slot{i} missing");
    }
    let empty = vec![Series::new("x", vec![(0.0, f64::NAN)])];
    assert!(matches!(small_multiples(&stem, "t", "e", &empty, (0.0, 1.0), None), Err(PlotError::Data { .. })));
}
