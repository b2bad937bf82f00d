//! CIFAR-10 binary batches (`data_batch_{1..5}.bin`, `test_batch.bin`).
//!
//! Each record is 1 label byte followed by 3072 pixel bytes: the red plane, then green, then
//! blue, each 32×32 row-major. That is already C×H×W, so records are copied without reordering.

use super::idx::{check_labels, io_error};
use super::DataError;
use std::path::Path;

/// Image side in pixels.
pub const SIDE: usize = 32;
/// Pixels per image (3 × 32 × 32).
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
/// Bytes per record: label + image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// CIFAR-10 classes.
pub const CLASSES: usize = 10;

/// Reads one batch file into (N×3×32×32 pixels, N labels).
pub fn read_cifar_batch(path: &Path) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    parse_cifar_batch(path, &bytes)
}

/// Parses an in-memory batch; `path` is only used in error messages.
pub fn parse_cifar_batch(path: &Path, bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD_BYTES) {
        return Err(DataError::CifarLength { path: path.to_path_buf(), len: bytes.len() as u64, record: RECORD_BYTES });
    }
    let n = bytes.len() / RECORD_BYTES;
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for rec in bytes.chunks_exact(RECORD_BYTES) {
        labels.push(rec[0]);
        images.extend_from_slice(&rec[1..]);
    }
    check_labels(path, &labels, CLASSES)?;
    Ok((images, labels))
}

/// Writes `labels.len()` records in the CIFAR-10 binary format. `images` is N×3×32×32
/// (R plane, G plane, B plane per image). Used by tests and to export subsets.
pub fn write_cifar_batch(path: &Path, images: &[u8], labels: &[u8]) -> Result<(), DataError> {
    if labels.len().checked_mul(IMAGE_BYTES) != Some(images.len()) {
        return Err(DataError::Malformed {
            path: path.to_path_buf(),
            reason: format!("{} pixels do not hold {} CIFAR images of {IMAGE_BYTES} bytes", images.len(), labels.len()),
        });
    }
    check_labels(path, labels, CLASSES)?;
    let mut out = Vec::with_capacity(labels.len() * RECORD_BYTES);
    for (label, img) in labels.iter().zip(images.chunks_exact(IMAGE_BYTES)) {
        out.push(*label);
        out.extend_from_slice(img);
    }
    std::fs::write(path, out).map_err(|e| io_error(path, e))
}
