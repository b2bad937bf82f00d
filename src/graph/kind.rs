//! The model families nce builds, and their names on the command line and in files.

use super::{GraphError, Imported, Shape};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A MobileNet width multiplier in hundredths (`100` = 1.0×): exact, hashable, and printed
/// without float noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WidthMult(u16);

impl WidthMult {
    pub const ONE: WidthMult = WidthMult(100);
    /// Smallest and largest multipliers accepted (0.1× and 4×).
    pub const MIN: u16 = 10;
    pub const MAX: u16 = 400;

    /// From a multiplier such as `0.5`; two decimals at most.
    pub fn new(mult: f64) -> Result<Self, GraphError> {
        let pct = (mult * 100.0).round();
        let ok = mult.is_finite() && (pct - mult * 100.0).abs() < 1e-6 && (Self::MIN as f64..=Self::MAX as f64).contains(&pct);
        if !ok {
            return Err(GraphError::WidthMult(mult.to_string()));
        }
        Ok(WidthMult(pct as u16))
    }

    pub fn get(self) -> f64 {
        self.0 as f64 / 100.0
    }

    /// MobileNet's channel rounding (`_make_divisible(c·mult, 8)` of the reference code): the
    /// nearest multiple of 8, at least 8, and never more than 10 % below `c·mult`.
    pub fn scale(self, c: usize) -> usize {
        let v = c * self.0 as usize;
        let mut r = ((v + 400) / 800 * 8).max(8);
        if r * 100 * 10 < v * 9 {
            r += 8;
        }
        r
    }
}

impl fmt::Display for WidthMult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// The model families nce can build. MobileNets carry their width multiplier, so a network's
/// model name (`mobilenetv2`, `mobilenetv2x0.5`) says which base widths its costs compare with.
///
/// In files a built-in family is its name (`model = "resnet20"`); an imported network is its
/// whole graph (`[model.imported]`, see [`super::imported`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelKind {
    Resnet20,
    Resnet32,
    Resnet56,
    Resnet18,
    Resnet50,
    /// MobileNetV2 (Sandler et al. 2018) with the CIFAR stride plan (`graph/mobilenet.rs`).
    Mobilenetv2(WidthMult),
    /// A network imported from ONNX (`nce import`), carrying its graph.
    Imported(Imported),
}

/// The families, for listings and errors.
const NAMES: &str = "resnet20, resnet32, resnet56, resnet18, resnet50, mobilenetv2 (with --width-mult, or mobilenetv2x0.5)";

impl ModelKind {
    pub const ALL: [ModelKind; 6] = [
        ModelKind::Resnet20,
        ModelKind::Resnet32,
        ModelKind::Resnet56,
        ModelKind::Resnet18,
        ModelKind::Resnet50,
        ModelKind::Mobilenetv2(WidthMult::ONE),
    ];

    /// The family's name without the multiplier.
    pub fn family(self) -> &'static str {
        match self {
            ModelKind::Resnet20 => "resnet20",
            ModelKind::Resnet32 => "resnet32",
            ModelKind::Resnet56 => "resnet56",
            ModelKind::Resnet18 => "resnet18",
            ModelKind::Resnet50 => "resnet50",
            ModelKind::Mobilenetv2(_) => "mobilenetv2",
            ModelKind::Imported(_) => "onnx",
        }
    }

    /// The name in files and on the command line: the family, then `x<mult>` unless 1.0;
    /// `onnx:<stem>@<hash>` for an imported network.
    pub fn name(self) -> String {
        if let ModelKind::Imported(g) = self {
            return g.name();
        }
        match self.width_mult() {
            Some(m) if m != WidthMult::ONE => format!("{}x{m}", self.family()),
            _ => self.family().to_string(),
        }
    }

    /// The width multiplier of a MobileNet (`None` for ResNets).
    pub fn width_mult(self) -> Option<WidthMult> {
        match self {
            ModelKind::Mobilenetv2(m) => Some(m),
            _ => None,
        }
    }

    /// This family at another width multiplier (MobileNets only).
    pub fn with_width_mult(self, mult: f64) -> Result<Self, GraphError> {
        match self {
            ModelKind::Mobilenetv2(_) => Ok(ModelKind::Mobilenetv2(WidthMult::new(mult)?)),
            _ => Err(GraphError::NoWidthMult(self.name())),
        }
    }

    /// The input the model is usually trained on.
    pub fn default_input(self) -> Shape {
        match self {
            ModelKind::Imported(g) => g.graph().input,
            ModelKind::Resnet18 | ModelKind::Resnet50 => Shape::new(3, 224, 224),
            _ => Shape::new(3, 32, 32),
        }
    }

    pub fn default_classes(self) -> usize {
        match self {
            ModelKind::Imported(g) => g.graph().classes,
            ModelKind::Resnet18 | ModelKind::Resnet50 => 1000,
            _ => 10,
        }
    }

    /// The original (base) width vector.
    pub fn base_widths(self) -> Vec<usize> {
        super::builder::base_widths(self)
    }

    /// The classifier's layer name (`fc`, or the imported network's ONNX name).
    pub fn classifier_name(self) -> String {
        match self {
            ModelKind::Imported(g) => g.graph().classifier.clone(),
            _ => "fc".into(),
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for ModelKind {
    type Err = GraphError;
    fn from_str(s: &str) -> Result<Self, GraphError> {
        let unknown = || GraphError::UnknownModel(s.to_string(), NAMES);
        if s.trim().starts_with(super::imported::PREFIX) {
            // Imported networks are found by name only once their graph has been read (from a
            // checkpoint or architecture file) in this process.
            return Imported::find(s.trim()).map(ModelKind::Imported).ok_or_else(unknown);
        }
        let lower = s.trim().to_ascii_lowercase();
        let (family, mult) = match lower.strip_prefix("mobilenetv2x") {
            Some(m) => ("mobilenetv2", Some(m.parse::<f64>().map_err(|_| unknown())?)),
            None => (lower.as_str(), None),
        };
        let kind = ModelKind::ALL.into_iter().find(|m| m.family() == family).ok_or_else(unknown)?;
        match mult {
            Some(m) => kind.with_width_mult(m),
            None => Ok(kind),
        }
    }
}

/// How an imported model kind is written: `{ imported = <graph> }`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportedRepr {
    imported: super::ImportedGraph,
}

impl Serialize for ModelKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ModelKind::Imported(g) => ImportedRepr { imported: g.graph().clone() }.serialize(s),
            _ => self.name().serialize(s),
        }
    }
}

/// Reads a family's name (a string) or an imported graph (a map).
struct KindVisitor;

impl<'de> serde::de::Visitor<'de> for KindVisitor {
    type Value = ModelKind;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a model name or an imported graph (`[model.imported]`)")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ModelKind, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ModelKind, A::Error> {
        let r = ImportedRepr::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(ModelKind::Imported(Imported::intern(r.imported)))
    }
}

impl<'de> Deserialize<'de> for ModelKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_with_the_multiplier() {
        for name in ["resnet20", "resnet50", "mobilenetv2", "mobilenetv2x0.5", "mobilenetv2x1.4", "mobilenetv2x0.35"] {
            let m: ModelKind = name.parse().unwrap();
            assert_eq!(m.name(), name);
        }
        assert_eq!("MobileNetV2x1.0".parse::<ModelKind>().unwrap(), ModelKind::Mobilenetv2(WidthMult::ONE));
        assert!("mobilenetv2x0".parse::<ModelKind>().is_err());
        assert!("mobilenetv2x0.123".parse::<ModelKind>().is_err());
        assert!("mobilenetv2xnan".parse::<ModelKind>().is_err());
        assert!(ModelKind::Resnet20.with_width_mult(0.5).is_err());
    }

    #[test]
    fn channel_rounding_is_mobilenets() {
        let m = |x: f64| WidthMult::new(x).unwrap();
        // torchvision's _make_divisible(c * mult, 8).
        assert_eq!(m(1.0).scale(32), 32);
        assert_eq!(m(0.5).scale(32), 16);
        assert_eq!(m(0.5).scale(24), 16); // 12 -> 16
        assert_eq!(m(0.35).scale(16), 8);
        assert_eq!(m(0.75).scale(96), 72);
        assert_eq!(m(1.4).scale(320), 448);
        assert_eq!(m(0.5).scale(160), 80);
        assert_eq!(m(0.25).scale(96), 24);
    }
}
