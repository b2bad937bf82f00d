//! Which dataset, where its files are, and the one way commands load it ([`load_for`]).

use super::{DataError, Dataset, Split};
use crate::graph::Shape;
use std::fmt;
use std::path::{Path, PathBuf};

/// The environment variable naming the data folder when `--data-root` is not given.
pub const ENV_ROOT: &str = "NCE_DATA";

/// A dataset nce can read: one of the built-in benchmarks, or a class-per-folder image tree
/// (`folder:PATH`, see [`super::folder`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DatasetId {
    FashionMnist,
    Mnist,
    Cifar10,
    Folder(PathBuf),
}

impl DatasetId {
    /// The built-in datasets, in the order help texts list them.
    pub const BUILT_IN: [DatasetId; 3] = [DatasetId::FashionMnist, DatasetId::Mnist, DatasetId::Cifar10];

    /// Image shape and classes of a built-in dataset (known without reading it); `None` for a
    /// folder, whose classes are its sub-folders.
    pub fn shape_and_classes(&self) -> Option<(Shape, usize)> {
        match self {
            DatasetId::FashionMnist | DatasetId::Mnist => Some((Shape::new(1, 28, 28), 10)),
            DatasetId::Cifar10 => Some((Shape::new(3, 32, 32), 10)),
            DatasetId::Folder(_) => None,
        }
    }

    /// The sub-folder of a data root that holds a built-in dataset.
    fn folder_name(&self) -> Option<&'static str> {
        match self {
            DatasetId::FashionMnist => Some("fashion-mnist"),
            DatasetId::Mnist => Some("mnist"),
            DatasetId::Cifar10 => Some("cifar10"),
            DatasetId::Folder(_) => None,
        }
    }
}

impl fmt::Display for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetId::Folder(p) => write!(f, "folder:{}", p.display()),
            other => f.write_str(other.folder_name().unwrap_or_default()),
        }
    }
}

impl std::str::FromStr for DatasetId {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        if let Some(p) = s.strip_prefix("folder:") {
            return match p.is_empty() {
                true => Err(DataError::UnknownDataset { name: s.to_string() }),
                false => Ok(DatasetId::Folder(PathBuf::from(p))),
            };
        }
        DatasetId::BUILT_IN
            .into_iter()
            .find(|d| d.folder_name() == Some(s))
            .ok_or_else(|| DataError::UnknownDataset { name: s.to_string() })
    }
}

/// The folders a built-in dataset is looked for in, in order: `explicit` (`--data-root`) alone
/// if given, else `$NCE_DATA` alone if set, else `./data` (where `scripts/setup` puts the data
/// inside a clone) and then the platform's data folder (`~/.local/share/nce` on Linux).
pub fn search_roots(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(env) = std::env::var_os(ENV_ROOT).filter(|v| !v.is_empty()) {
        return vec![PathBuf::from(env)];
    }
    let mut roots = vec![PathBuf::from(super::DEFAULT_ROOT)];
    roots.extend(dirs::data_dir().map(|d| d.join("nce")));
    roots
}

/// The data root that holds `id`: the first of [`search_roots`] with its folder. A folder
/// dataset needs no root (its path is returned as given). The error lists every place looked
/// in and how to get the data.
pub fn locate(id: &DatasetId, explicit: Option<&Path>) -> Result<PathBuf, DataError> {
    let Some(name) = id.folder_name() else {
        return Ok(explicit.map_or_else(|| PathBuf::from(super::DEFAULT_ROOT), Path::to_path_buf));
    };
    let roots = search_roots(explicit);
    match roots.iter().find(|r| r.join(name).is_dir()) {
        Some(r) => Ok(r.clone()),
        None => Err(DataError::Missing { dataset: id.to_string(), looked: roots.iter().map(|r| r.join(name)).collect() }),
    }
}

/// Loads `split` of dataset `name` from `root`, keeps its first `subset` images (all if `None`)
/// and checks that its images have the shape `input` (a model's input), if given.
pub fn load_for(name: &str, root: &Path, split: Split, subset: Option<usize>, input: Option<Shape>) -> Result<Dataset, DataError> {
    let ds = super::load(name, root, split)?;
    if let Some(expected) = input.filter(|&s| s != ds.shape) {
        return Err(DataError::ShapeMismatch { dataset: name.to_string(), found: ds.shape, expected });
    }
    Ok(match subset {
        Some(n) if n < ds.len() => ds.subset(n),
        _ => ds,
    })
}
