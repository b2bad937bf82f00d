//! Measured per-layer latency tables (the format `nce measure` writes and `latency-lut` reads).
//!
//! CSV, one row per layer signature (see [`crate::graph::Layer::signature`]), in the spirit of
//! Once-for-All's `signature → {count, mean, var}` records. Lines starting with `#` carry
//! `key=value` metadata about how the table was measured (threads, backend, CPU):
//!
//! ```text
//! # backend=cpu threads=1
//! signature,count,mean_us,var_us2
//! conv3x3_s1_g1_i16_o16_h32_w32_w2a2,50,812.4,90.1
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One measured layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyEntry {
    pub count: u64,
    pub mean_us: f64,
    pub var_us2: f64,
}

/// A latency table: signature → measurement, plus measurement metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyTable {
    pub entries: BTreeMap<String, LatencyEntry>,
    pub meta: BTreeMap<String, String>,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{}: cannot read: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{}:{line}: {msg}", file.display())]
    Parse { file: PathBuf, line: usize, msg: String },
}

const HEADER: &str = "signature,count,mean_us,var_us2";

impl LatencyTable {
    pub fn load(path: &Path) -> Result<LatencyTable, TableError> {
        let text = std::fs::read_to_string(path).map_err(|source| TableError::Io { file: path.into(), source })?;
        LatencyTable::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<LatencyTable, TableError> {
        let err = |line: usize, msg: String| TableError::Parse { file: path.into(), line, msg };
        let mut table = LatencyTable { path: path.into(), ..Default::default() };
        // `#` lines are metadata; the CSV reader skips them as comments.
        for meta in text.lines().filter_map(|l| l.trim().strip_prefix('#')) {
            for (k, v) in meta.split_whitespace().filter_map(|kv| kv.split_once('=')) {
                table.meta.insert(k.to_string(), v.to_string());
            }
        }
        let mut rows = csv::ReaderBuilder::new()
            .has_headers(false)
            .comment(Some(b'#'))
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let mut saw_header = false;
        for row in rows.records() {
            let row = row.map_err(|e| err(e.position().map_or(1, |p| p.line() as usize), e.to_string()))?;
            let n = row.position().map_or(1, |p| p.line() as usize);
            if row.iter().all(str::is_empty) {
                continue;
            }
            let f: Vec<&str> = row.iter().collect();
            if !saw_header {
                if f.join(",") != HEADER {
                    return Err(err(n, format!("expected the header `{HEADER}`, got `{}`", f.join(","))));
                }
                saw_header = true;
                continue;
            }
            if f.len() != 4 {
                return Err(err(n, format!("expected 4 comma-separated fields, got {}", f.len())));
            }
            let count: u64 = f[1].parse().map_err(|_| err(n, format!("count `{}` is not an integer", f[1])))?;
            let num = |s: &str, what: &str| -> Result<f64, TableError> {
                match s.parse::<f64>() {
                    Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                    _ => Err(err(n, format!("{what} `{s}` is not a non-negative number"))),
                }
            };
            let mean_us = num(f[2], "mean_us")?;
            let var_us2 = num(f[3], "var_us2")?;
            if count == 0 {
                return Err(err(n, "count must be at least 1".into()));
            }
            if f[0].is_empty() || table.entries.contains_key(f[0]) {
                return Err(err(n, format!("signature `{}` is empty or repeated", f[0])));
            }
            table.entries.insert(f[0].to_string(), LatencyEntry { count, mean_us, var_us2 });
        }
        if !saw_header {
            return Err(err(1, format!("missing the header `{HEADER}`")));
        }
        Ok(table)
    }

    /// Serialises the table in the format [`LatencyTable::parse`] reads.
    pub fn to_csv(&self) -> String {
        let mut s = String::new();
        if !self.meta.is_empty() {
            let kv: Vec<String> = self.meta.iter().map(|(k, v)| format!("{k}={}", v.replace(' ', "_"))).collect();
            s.push_str(&format!("# {}\n", kv.join(" ")));
        }
        let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(s.into_bytes());
        let written = w.write_record(HEADER.split(',')).and_then(|()| {
            self.entries.iter().try_for_each(|(sig, e)| {
                w.write_record([sig.as_str(), &e.count.to_string(), &e.mean_us.to_string(), &e.var_us2.to_string()])
            })
        });
        written.expect("writing CSV to memory");
        String::from_utf8(w.into_inner().expect("writing CSV to memory")).expect("CSV of UTF-8 fields")
    }

    /// Mean latency in microseconds for `signature`, interpolating unmeasured channel counts.
    ///
    /// Exact hits are returned as measured. Otherwise the entries of the same *family* (the
    /// signature without its `i<in>`/`o<out>` channel fields) are put on a line over
    /// `in × out` (which MACs and weight bytes are proportional to) and the value is linearly
    /// interpolated between the two nearest points, or extrapolated from the end segment
    /// (proportionally through the origin when only one point exists). `None` when the family
    /// was never measured.
    pub fn lookup_us(&self, signature: &str) -> Option<f64> {
        if let Some(e) = self.entries.get(signature) {
            return Some(e.mean_us);
        }
        let (family, x) = split_signature(signature)?;
        let mut pts: Vec<(f64, f64)> = self
            .entries
            .iter()
            .filter_map(|(s, e)| {
                let (f, x) = split_signature(s)?;
                (f == family).then_some((x, e.mean_us))
            })
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        match pts.len() {
            0 => None,
            1 => Some(pts[0].1 * x / pts[0].0.max(1.0)),
            _ => {
                let i = pts.iter().position(|p| p.0 >= x).unwrap_or(pts.len() - 1).max(1);
                let (a, b) = (pts[i - 1], pts[i]);
                let t = if b.0 > a.0 { (x - a.0) / (b.0 - a.0) } else { 0.0 };
                Some((a.1 + t * (b.1 - a.1)).max(0.0))
            }
        }
    }
}

/// Splits `conv3x3_s1_g1_i16_o32_h8_w8_w2a2` into its family (`conv3x3_s1_g1_h8_w8_w2a2`)
/// and `in × out / groups` (what MACs and weight bytes are proportional to); `linear_i…` by its
/// inputs and `add_c…`/`gap_c…` by their channels. A depthwise conv (`g` = `i` = `o`, e.g.
/// `conv3x3_s1_g96_i96_o96_…`) belongs to the family `conv3x3_s1_gdw_…` of every channel count
/// and scales with its channels. Signatures without channel fields have no family.
fn split_signature(sig: &str) -> Option<(String, f64)> {
    let (mut i, mut o, mut c, mut g) = (None, None, None, None);
    let mut rest = Vec::new();
    for tok in sig.split('_') {
        let num = |p: char| tok.strip_prefix(p).filter(|d| !d.is_empty()).and_then(|d| d.parse::<f64>().ok());
        if let (None, Some(v)) = (i, num('i')) {
            i = Some(v);
        } else if let (None, Some(v)) = (o, num('o')) {
            o = Some(v);
        } else if let (None, Some(v)) = (c, num('c')) {
            c = Some(v);
        } else if let (None, Some(v)) = (g, num('g')) {
            g = Some((v, rest.len()));
            rest.push(tok);
        } else {
            rest.push(tok);
        }
    }
    let x = match (i, o, c) {
        (Some(i), Some(o), _) => match g {
            Some((g, at)) if g > 1.0 && g == i && g == o => {
                rest[at] = "gdw";
                i
            }
            Some((g, _)) if g > 0.0 => i * o / g,
            _ => i * o,
        },
        // Linear layers scale with their inputs; adds, pools and shortcuts with their channels.
        (Some(i), None, _) => i,
        (None, None, Some(c)) => c,
        _ => return None,
    };
    Some((rest.join("_"), x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_within_a_family() {
        let csv = "signature,count,mean_us,var_us2\nconv3x3_s1_g1_i16_o16_h8_w8_w2a2,5,100,1\nconv3x3_s1_g1_i32_o32_h8_w8_w2a2,5,400,1\n";
        let t = LatencyTable::parse(csv, Path::new("t.csv")).unwrap();
        assert_eq!(t.lookup_us("conv3x3_s1_g1_i16_o16_h8_w8_w2a2"), Some(100.0));
        // 16*24 = 384 lies 1/6 of the way from 256 to 1024.
        let v = t.lookup_us("conv3x3_s1_g1_i16_o24_h8_w8_w2a2").unwrap();
        assert!((v - 150.0).abs() < 1e-9, "{v}");
        assert_eq!(t.lookup_us("conv1x1_s1_g1_i16_o16_h8_w8_w2a2"), None);
    }

    #[test]
    fn depthwise_convs_interpolate_over_their_channels() {
        let csv = "signature,count,mean_us,var_us2\nconv3x3_s1_g16_i16_o16_h8_w8_w2a2,5,10,1\nconv3x3_s1_g32_i32_o32_h8_w8_w2a2,5,30,1\n\
                   conv3x3_s2_g16_i16_o16_h8_w8_w2a2,5,99,1\n";
        let t = LatencyTable::parse(csv, Path::new("t.csv")).unwrap();
        // 24 channels lie halfway between 16 and 32 (linear in the channels, not in i × o).
        let v = t.lookup_us("conv3x3_s1_g24_i24_o24_h8_w8_w2a2").unwrap();
        assert!((v - 20.0).abs() < 1e-9, "{v}");
        // Stride is part of the family; dense convs are not depthwise ones.
        assert_eq!(t.lookup_us("conv3x3_s2_g8_i8_o8_h8_w8_w2a2"), Some(99.0 * 8.0 / 16.0));
        assert_eq!(t.lookup_us("conv3x3_s1_g1_i16_o16_h8_w8_w2a2"), None);
        assert_eq!(split_signature("conv3x3_s1_g1_i16_o32_h8_w8_w2a2"), Some(("conv3x3_s1_g1_h8_w8_w2a2".into(), 512.0)));
    }

    #[test]
    fn round_trips_and_rejects_bad_rows() {
        let csv = "# backend=cpu threads=1\nsignature,count,mean_us,var_us2\nlinear_i64_o10_w8a8,3,2.5,0.1\n";
        let t = LatencyTable::parse(csv, Path::new("t.csv")).unwrap();
        assert_eq!(t.meta["threads"], "1");
        assert_eq!(LatencyTable::parse(&t.to_csv(), Path::new("t.csv")).unwrap().entries, t.entries);
        let bad = "signature,count,mean_us,var_us2\nlinear_i64_o10_w8a8,3,-2.5,0.1\n";
        let e = LatencyTable::parse(bad, Path::new("t.csv")).unwrap_err().to_string();
        assert!(e.contains("t.csv:2") && e.contains("mean_us"), "{e}");
    }
}
