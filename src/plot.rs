//! Small charts for run folders (search trajectories, widths, sensitivities), each written as
//! both SVG (for the web and papers) and PNG (for terminals and issue trackers).
//!
//! Text is drawn with DejaVu Sans, registered at run time from [`FONT_PATH`] (Debian's
//! `fonts-dejavu-core`, installed by `scripts/setup`), so the build needs no system font
//! libraries (plotters' `ab_glyph` backend instead of fontconfig/freetype) and every chart looks
//! the same on every machine. The legend sits in a panel right of the plot so that charts with
//! many series (one per layer) stay readable.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The font every chart uses.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const SIZE: (u32, u32) = (1000, 600);
const FONT: &str = "sans-serif";

/// One line of a [`line_chart`]. Non-finite points are skipped.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.into(), points }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("font {}: {source} (install Debian's fonts-dejavu-core, e.g. with scripts/setup)", path.display())]
    FontMissing { path: PathBuf, source: std::io::Error },
    #[error("font {}: not a TrueType/OpenType font", path.display())]
    FontInvalid { path: PathBuf },
    #[error("{}: output directory does not exist", dir.display())]
    OutputDir { dir: PathBuf },
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{}: drawing failed: {msg}", file.display())]
    Draw { file: PathBuf, msg: String },
    #[error("{}: {msg}", file.display())]
    Data { file: PathBuf, msg: String },
}

/// Registers DejaVu Sans as plotters' `sans-serif` once per process. plotters keeps fonts as
/// `&'static [u8]`, so the file's bytes are leaked deliberately (once, ~750 KB).
fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: Mutex<bool> = Mutex::new(false);
    let mut done = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(());
    }
    let path = PathBuf::from(FONT_PATH);
    let bytes = std::fs::read(&path).map_err(|source| PlotError::FontMissing { path: path.clone(), source })?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, bytes).map_err(|_| PlotError::FontInvalid { path })?;
    *done = true;
    Ok(())
}

/// `<stem>.svg` and `<stem>.png`, after checking that their directory exists (plotters' own
/// error for a missing directory does not say which).
fn outputs(stem: &Path) -> Result<(PathBuf, PathBuf), PlotError> {
    if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(PlotError::OutputDir { dir: dir.to_path_buf() });
        }
    }
    let with = |ext: &str| {
        let mut s = stem.as_os_str().to_owned();
        s.push(".");
        s.push(ext);
        PathBuf::from(s)
    };
    Ok((with("svg"), with("png")))
}

/// A chart that can be drawn on any backend (closures cannot be generic over it).
trait Chart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Draws the same chart on an SVG and a PNG backend and writes both files.
fn render(stem: &Path, chart: &impl Chart) -> Result<Vec<PathBuf>, PlotError> {
    render_sized(stem, chart, SIZE)
}

fn render_sized(stem: &Path, chart: &impl Chart, size: (u32, u32)) -> Result<Vec<PathBuf>, PlotError> {
    ensure_font()?;
    let (svg, png) = outputs(stem)?;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
        chart.draw(&root).map_err(|msg| PlotError::Draw { file: svg.clone(), msg })?;
        root.present().map_err(|e| PlotError::Draw { file: svg.clone(), msg: e.to_string() })?;
    }
    std::fs::write(&svg, text).map_err(|source| PlotError::Io { file: svg.clone(), source })?;
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        chart.draw(&root).map_err(|msg| PlotError::Draw { file: png.clone(), msg })?;
        root.present().map_err(|e| PlotError::Draw { file: png.clone(), msg: e.to_string() })?;
    }
    Ok(vec![svg, png])
}

/// `(lo, hi)` padded by 5 % (and widened when empty or flat) so that lines at the extremes stay
/// visible.
fn padded(values: impl Iterator<Item = f64>, include_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    if include_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let d = if lo.abs() > 1e-12 { lo.abs() * 0.1 } else { 1.0 };
        return (lo - d, hi + d);
    }
    let pad = (hi - lo) * 0.05;
    (if include_zero && lo == 0.0 { 0.0 } else { lo - pad }, hi + pad)
}

/// Tick labels without float noise: `3` rather than `3.0`, `0.25` rather than `0.25000000001`.
fn tick(v: &f64) -> String {
    if v.abs() < 1e15 && (v - v.round()).abs() < 1e-9 * v.abs().max(1.0) {
        format!("{}", v.round() as i64)
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').to_string()
    }
}

fn color(i: usize) -> RGBColor {
    // Tableau 10, then plotters' 99-colour palette for long series lists.
    const T10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    match T10.get(i) {
        Some(&(r, g, b)) => RGBColor(r, g, b),
        None => {
            let c = Palette99::pick(i).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

/// A legend entry: a line sample (for series) or a filled box (for bar groups).
enum Swatch {
    Line { color: RGBColor, dashed: bool },
    Box(RGBColor),
}

/// Splits `root` into the plot (left) and a legend panel (right) sized to the longest name.
fn with_legend<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, entries: &[(String, Swatch)]) -> Result<DrawingArea<DB, Shift>, String> {
    if entries.is_empty() {
        return Ok(root.clone());
    }
    let style = TextStyle::from((FONT, 13).into_font());
    let mut widest = 0;
    for (name, _) in entries {
        widest = widest.max(root.estimate_text_size(name, &style).map_err(|e| e.to_string())?.0);
    }
    let panel = (widest + 50).min(SIZE.0 / 3);
    let (plot, legend) = root.split_horizontally(SIZE.0 - panel);
    let row = 18;
    for (i, (name, swatch)) in entries.iter().enumerate() {
        let y = 60 + row * i as i32;
        let e = match swatch {
            Swatch::Line { color, dashed: false } => legend.draw(&PathElement::new(vec![(5, y), (30, y)], color.stroke_width(2))),
            Swatch::Line { color, dashed: true } => {
                legend.draw(&PathElement::new(vec![(5, y), (12, y)], color.stroke_width(2))).map_err(|e| e.to_string())?;
                legend.draw(&PathElement::new(vec![(18, y), (25, y)], color.stroke_width(2)))
            }
            Swatch::Box(color) => legend.draw(&Rectangle::new([(8, y - 6), (26, y + 6)], color.filled())),
        };
        e.map_err(|e| e.to_string())?;
        let text = style.clone().pos(Pos::new(HPos::Left, VPos::Center));
        legend.draw(&Text::new(name.as_str(), (36, y), text)).map_err(|e| e.to_string())?;
    }
    Ok(plot)
}

/// Lines (`series`) plus horizontal reference lines (`hlines`, e.g. budgets at 1.0), written to
/// `<path_stem>.svg` and `<path_stem>.png`; returns both paths.
pub fn line_chart(
    path_stem: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    hlines: &[(String, f64)],
) -> Result<Vec<PathBuf>, PlotError> {
    let pts = || series.iter().flat_map(|s| s.points.iter().filter(|p| finite(p)));
    if pts().next().is_none() {
        return Err(PlotError::Data { file: path_stem.to_path_buf(), msg: format!("chart `{title}` has no finite points") });
    }
    let x = padded(pts().map(|p| p.0), false);
    let y = padded(pts().map(|p| p.1).chain(hlines.iter().map(|h| h.1)), false);
    render(path_stem, &Lines { title, x_label, y_label, series, hlines, x, y })
}

fn finite(p: &(f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

struct Lines<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    series: &'a [Series],
    hlines: &'a [(String, f64)],
    x: (f64, f64),
    y: (f64, f64),
}

impl Chart for Lines<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let mut entries: Vec<(String, Swatch)> =
            self.series.iter().enumerate().map(|(i, s)| (s.name.clone(), Swatch::Line { color: color(i), dashed: false })).collect();
        entries.extend(self.hlines.iter().map(|(n, _)| (n.clone(), Swatch::Line { color: BLACK, dashed: true })));
        root.fill(&WHITE).map_err(err)?;
        let plot = with_legend(root, &entries)?;
        let (x0, x1) = self.x;
        // Integer x (epochs) over a short span: one tick per integer instead of 0.5 steps.
        let integral = self.series.iter().flat_map(|s| &s.points).filter(|p| finite(p)).all(|p| p.0.fract() == 0.0);
        let x_ticks = if integral && x1 - x0 <= 16.0 { (x1 - x0).ceil() as usize + 1 } else { 10 };
        let mut chart = ChartBuilder::on(&plot)
            .caption(self.title, (FONT, 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, self.y.0..self.y.1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(x_ticks)
            .x_desc(self.x_label)
            .y_desc(self.y_label)
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        for (i, s) in self.series.iter().enumerate() {
            let c = color(i);
            let p: Vec<(f64, f64)> = s.points.iter().filter(|p| finite(p)).copied().collect();
            chart.draw_series(LineSeries::new(p.iter().copied(), c.stroke_width(2))).map_err(err)?;
            if p.len() <= 40 {
                chart.draw_series(p.iter().map(|&q| Circle::new(q, 3, c.filled()))).map_err(err)?;
            }
        }
        for (_, y) in self.hlines {
            chart.draw_series(DashedLineSeries::new(vec![(x0, *y), (x1, *y)], 8, 5, BLACK.stroke_width(2))).map_err(err)?;
        }
        Ok(())
    }
}

/// Grouped bars: one cluster per category, one bar per group (`groups[g].1[c]` is group `g`'s
/// value for category `c`). Category labels are horizontal where they fit and rotated where
/// they do not; bars carry their values when there are few enough to read. Writes
/// `<path_stem>.{svg,png}`.
pub fn bar_chart(
    path_stem: &Path,
    title: &str,
    y_label: &str,
    categories: &[String],
    groups: &[(String, Vec<f64>)],
) -> Result<Vec<PathBuf>, PlotError> {
    bar_chart_with_lines(path_stem, title, y_label, categories, groups, &[])
}

/// [`bar_chart`] with dashed horizontal reference lines (`hlines`, e.g. a budget at 1.0).
pub fn bar_chart_with_lines(
    path_stem: &Path,
    title: &str,
    y_label: &str,
    categories: &[String],
    groups: &[(String, Vec<f64>)],
    hlines: &[(String, f64)],
) -> Result<Vec<PathBuf>, PlotError> {
    let bad = |msg: String| PlotError::Data { file: path_stem.to_path_buf(), msg };
    if categories.is_empty() || groups.is_empty() {
        return Err(bad(format!("chart `{title}` needs at least one category and one group")));
    }
    if let Some((g, v)) = groups.iter().find(|(_, v)| v.len() != categories.len()) {
        return Err(bad(format!("group `{g}` has {} values for {} categories", v.len(), categories.len())));
    }
    let y = padded(groups.iter().flat_map(|(_, v)| v.iter().copied()).chain(hlines.iter().map(|h| h.1)), true);
    // Room above the tallest bar for its value label.
    let y = (y.0, y.1 + 0.05 * (y.1 - y.0));
    render(path_stem, &Bars { title, y_label, categories, groups, hlines, y })
}

/// Bars get value labels up to this many bars.
const MAX_LABELLED_BARS: usize = 24;

struct Bars<'a> {
    title: &'a str,
    y_label: &'a str,
    categories: &'a [String],
    groups: &'a [(String, Vec<f64>)],
    hlines: &'a [(String, f64)],
    y: (f64, f64),
}

/// A bar's value as its label: three significant digits at most.
fn value_label(v: f64) -> String {
    let digits = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

impl Chart for Bars<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let mut entries: Vec<(String, Swatch)> =
            self.groups.iter().enumerate().map(|(i, (g, _))| (g.clone(), Swatch::Box(color(i)))).collect();
        entries.extend(self.hlines.iter().map(|(n, _)| (n.clone(), Swatch::Line { color: BLACK, dashed: true })));
        root.fill(&WHITE).map_err(err)?;
        let plot = with_legend(root, &entries)?;
        let font = TextStyle::from((FONT, 12).into_font());
        let mut longest = 0;
        for c in self.categories {
            longest = longest.max(plot.estimate_text_size(c, &font).map_err(err)?.0);
        }
        let n = self.categories.len() as f64;
        // Horizontal labels when the longest fits in its cluster's width (plot minus the axis).
        let slot = (plot.dim_in_pixel().0.saturating_sub(100)) as f64 / n;
        let horizontal = (longest as f64) < slot * 0.95;
        let label_area = if horizontal { 30 } else { longest.min(SIZE.1 / 3) + 15 };
        let (y0, y1) = self.y;
        let mut chart = ChartBuilder::on(&plot)
            .caption(self.title, (FONT, 22))
            .margin(15)
            .x_label_area_size(label_area)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..n - 0.5, y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(self.y_label)
            .y_label_formatter(&tick)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        let width = 0.8 / self.groups.len() as f64;
        let labelled = self.groups.len() * self.categories.len() <= MAX_LABELLED_BARS;
        let value_style = TextStyle::from((FONT, 13).into_font());
        for (g, (_, values)) in self.groups.iter().enumerate() {
            let c = color(g);
            let bars =
                || values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(move |(i, &v)| (i as f64 - 0.4 + g as f64 * width, v));
            chart.draw_series(bars().map(|(left, v)| Rectangle::new([(left, 0.0), (left + width, v)], c.filled()))).map_err(err)?;
            if labelled {
                let at = |v: f64| if v >= 0.0 { Pos::new(HPos::Center, VPos::Bottom) } else { Pos::new(HPos::Center, VPos::Top) };
                chart
                    .draw_series(bars().map(|(left, v)| Text::new(value_label(v), (left + width / 2.0, v), value_style.clone().pos(at(v)))))
                    .map_err(err)?;
            }
        }
        if y0 < 0.0 {
            chart.draw_series(LineSeries::new(vec![(-0.5, 0.0), (n - 0.5, 0.0)], BLACK)).map_err(err)?;
        }
        for (_, y) in self.hlines {
            chart.draw_series(DashedLineSeries::new(vec![(-0.5, *y), (n - 0.5, *y)], 8, 5, BLACK.stroke_width(2))).map_err(err)?;
        }
        // Category names below the axis, in pixel coordinates on the root (the plotting area
        // clips everything outside it).
        let style = if horizontal {
            font.pos(Pos::new(HPos::Center, VPos::Top))
        } else {
            font.transform(FontTransform::Rotate90).pos(Pos::new(HPos::Left, VPos::Center))
        };
        for (i, c) in self.categories.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64, y0));
            root.draw(&Text::new(c.as_str(), (px, py + 8), style.clone())).map_err(err)?;
        }
        Ok(())
    }
}

/// One small panel per series on shared axes (x over every series, `y` fixed, e.g. 0..1 for
/// probabilities) with an optional dashed reference line: where one chart of many lines is a
/// tangle, a grid of panels stays readable. Writes `<path_stem>.{svg,png}`.
pub fn small_multiples(
    path_stem: &Path,
    title: &str,
    x_label: &str,
    series: &[Series],
    y: (f64, f64),
    hline: Option<f64>,
) -> Result<Vec<PathBuf>, PlotError> {
    let pts = || series.iter().flat_map(|s| s.points.iter().filter(|p| finite(p)));
    if pts().next().is_none() {
        return Err(PlotError::Data { file: path_stem.to_path_buf(), msg: format!("chart `{title}` has no finite points") });
    }
    let x = padded(pts().map(|p| p.0), false);
    let cols = (series.len() as f64).sqrt().ceil().max(1.0) as usize;
    let rows = series.len().div_ceil(cols);
    let size = (SIZE.0, (60 + 170 * rows as u32).max(SIZE.1 / 2));
    render_sized(path_stem, &Panels { title, x_label, series, x, y, hline, grid: (rows, cols) }, size)
}

struct Panels<'a> {
    title: &'a str,
    x_label: &'a str,
    series: &'a [Series],
    x: (f64, f64),
    y: (f64, f64),
    hline: Option<f64>,
    grid: (usize, usize),
}

impl Chart for Panels<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(&format!("{} (x: {})", self.title, self.x_label), (FONT, 20)).map_err(err)?;
        let panels = root.split_evenly(self.grid);
        for (s, panel) in self.series.iter().zip(&panels) {
            let mut chart = ChartBuilder::on(panel)
                .caption(&s.name, (FONT, 13))
                .margin(6)
                .x_label_area_size(18)
                .y_label_area_size(32)
                .build_cartesian_2d(self.x.0..self.x.1, self.y.0..self.y.1)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_labels(4)
                .y_labels(3)
                .x_label_formatter(&tick)
                .y_label_formatter(&tick)
                .label_style((FONT, 10))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(err)?;
            if let Some(h) = self.hline {
                let line = vec![(self.x.0, h), (self.x.1, h)];
                chart.draw_series(DashedLineSeries::new(line, 5, 4, BLACK.mix(0.6).stroke_width(1))).map_err(err)?;
            }
            let p: Vec<(f64, f64)> = s.points.iter().filter(|p| finite(p)).copied().collect();
            chart.draw_series(LineSeries::new(p.iter().copied(), color(0).stroke_width(2))).map_err(err)?;
            chart.draw_series(p.iter().map(|&q| Circle::new(q, 2, color(0).filled()))).map_err(err)?;
        }
        Ok(())
    }
}
