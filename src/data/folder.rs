//! A user's own images as a dataset (`--data folder:PATH`): one sub-folder per class.
//!
//! Layout: `PATH/train/<class>/*.{png,jpg,jpeg}` and `PATH/test/<class>/*…`. Classes are the
//! sorted sub-folder names of `PATH/train` (labels 0, 1, … in that order; `test` must use the
//! same names). Every image is converted to RGB and resized to [`SIDE`]×[`SIDE`] (bilinear), so
//! the dataset's shape is 3×32×32 like CIFAR-10; pixels stay `u8`, which the first layer reads
//! as `pixel / 255` (docs/quantization.md). Files are read in sorted order, so a subset is the
//! same on every machine.

use super::{DataError, Dataset, Split};
use crate::graph::Shape;
use std::path::{Path, PathBuf};

/// Side of the square every image is resized to.
pub const SIDE: u32 = 32;

/// Labels are bytes.
const MAX_CLASSES: usize = 256;

/// Loads `split` of the class-per-folder tree at `dir`.
pub fn load(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let classes = class_names(&dir.join("train"))?;
    let split_dir = dir.join(split.to_string());
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for (label, class) in classes.iter().enumerate() {
        for file in image_files(&split_dir.join(class))? {
            images.extend(read_image(&file)?);
            labels.push(label as u8);
        }
    }
    if labels.is_empty() {
        return Err(malformed(&split_dir, "no .png or .jpg images in its class folders".into()));
    }
    Dataset::new(format!("folder:{}", dir.display()), images, labels, Shape::new(3, SIDE as usize, SIDE as usize), classes.len())
}

fn malformed(path: &Path, reason: String) -> DataError {
    DataError::Malformed { path: path.to_path_buf(), reason }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| super::idx::io_error(dir, e))?;
    let mut v: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

/// The class names: the sorted sub-folders of the training folder.
fn class_names(train: &Path) -> Result<Vec<String>, DataError> {
    let names: Vec<String> = sorted_entries(train)?
        .iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    match names.len() {
        0 => Err(malformed(train, "no class folders (expected train/<class>/*.png)".into())),
        n if n > MAX_CLASSES => Err(malformed(train, format!("{n} class folders, at most {MAX_CLASSES}"))),
        _ => Ok(names),
    }
}

/// The images of one class, sorted; none if the split has no folder for the class.
fn image_files(class_dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    if !class_dir.is_dir() {
        return Ok(vec![]);
    }
    let is_image = |p: &PathBuf| {
        p.extension().and_then(|e| e.to_str()).is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
    };
    Ok(sorted_entries(class_dir)?.into_iter().filter(is_image).collect())
}

/// One image as 3×SIDE×SIDE planes (R, G, B).
fn read_image(path: &Path) -> Result<Vec<u8>, DataError> {
    let img = image::open(path).map_err(|e| malformed(path, format!("cannot decode: {e}")))?;
    let rgb = img.resize_exact(SIDE, SIDE, image::imageops::FilterType::Triangle).to_rgb8();
    let plane = (SIDE * SIDE) as usize;
    let mut out = vec![0u8; 3 * plane];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = px.0[c];
        }
    }
    Ok(out)
}
