//! IDX files (the MNIST / Fashion-MNIST container), raw or gzipped.
//!
//! Format: a 4-byte big-endian magic `0x0000TTDD` (TT = element type, 0x08 for u8; DD = number
//! of dimensions), then DD big-endian u32 sizes, then the elements. Images are `0x00000803`
//! (count, rows, cols), labels `0x00000801` (count). The body must match the header exactly:
//! a short body is a truncated download, a long one a wrong or concatenated file.

use super::DataError;
use flate2::read::MultiGzDecoder;
use std::io::Read;
use std::path::Path;

/// Magic of a u8 image file (3 dimensions).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of a u8 label file (1 dimension).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Images of an idx3 file: `count` images of `rows × cols` pixels, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic `1f 8b` (an IDX file
/// never does: its first two bytes are zero).
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    if bytes.len() >= 4 && bytes.starts_with(&[0x1f, 0x8b]) {
        // The gzip trailer's ISIZE (uncompressed size mod 2^32) is a good capacity hint; cap it
        // so a corrupt trailer cannot request absurd memory up front.
        let n = bytes.len();
        let isize = u32::from_le_bytes([bytes[n - 4], bytes[n - 3], bytes[n - 2], bytes[n - 1]]);
        let hint = (isize as usize).min(n.saturating_mul(64));
        let mut out = Vec::with_capacity(hint);
        MultiGzDecoder::new(&bytes[..]).read_to_end(&mut out).map_err(|source| DataError::Gzip { path: path.to_path_buf(), source })?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

pub(crate) fn io_error(path: &Path, e: std::io::Error) -> DataError {
    if e.kind() == std::io::ErrorKind::NotFound {
        DataError::NotFound { path: path.to_path_buf() }
    } else {
        DataError::Io { path: path.to_path_buf(), source: e }
    }
}

/// Parses an IDX u8 buffer with the given magic; returns the dims and the body.
/// `path` is only used in error messages.
fn parse<'a>(path: &Path, bytes: &'a [u8], magic: u32, what: &'static str) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if bytes.len() < 4 {
        return Err(DataError::Truncated { path: path.to_path_buf(), expected: header as u64, found: bytes.len() as u64 });
    }
    let found = be(0);
    if found != magic {
        return Err(DataError::BadMagic { path: path.to_path_buf(), expected: magic, found, what });
    }
    if bytes.len() < header {
        return Err(DataError::Truncated { path: path.to_path_buf(), expected: header as u64, found: bytes.len() as u64 });
    }
    let dims: Vec<usize> = (0..ndims).map(|d| be(4 + 4 * d) as usize).collect();
    // u64 arithmetic: 3 × u32 can overflow usize on 32-bit targets and even u64 in theory.
    let body = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let Some(expected) = body.and_then(|b| b.checked_add(header as u64)) else {
        return Err(DataError::Malformed { path: path.to_path_buf(), reason: format!("dimensions {dims:?} overflow") });
    };
    let found = bytes.len() as u64;
    if found < expected {
        return Err(DataError::Truncated { path: path.to_path_buf(), expected, found });
    }
    if found > expected {
        return Err(DataError::TrailingBytes { path: path.to_path_buf(), expected, found });
    }
    Ok((dims, &bytes[header..]))
}

/// Parses an in-memory (already gunzipped) idx3 image file.
pub fn parse_images(path: &Path, bytes: &[u8]) -> Result<IdxImages, DataError> {
    let (dims, body) = parse(path, bytes, IMAGES_MAGIC, "u8 idx3 images")?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(DataError::Malformed { path: path.to_path_buf(), reason: format!("image size {rows}x{cols}") });
    }
    Ok(IdxImages { count, rows, cols, pixels: body.to_vec() })
}

/// Parses an in-memory (already gunzipped) idx1 label file.
pub fn parse_labels(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, DataError> {
    let (_, body) = parse(path, bytes, LABELS_MAGIC, "u8 idx1 labels")?;
    Ok(body.to_vec())
}

/// Reads an idx3 image file (raw or gzipped).
pub fn read_images(path: &Path) -> Result<IdxImages, DataError> {
    parse_images(path, &read_maybe_gz(path)?)
}

/// Reads an idx1 label file (raw or gzipped).
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    parse_labels(path, &read_maybe_gz(path)?)
}

/// Reads matching image and label files and checks that the counts agree and every label is
/// below `classes`.
pub fn read_pair(images: &Path, labels: &Path, classes: usize) -> Result<(IdxImages, Vec<u8>), DataError> {
    let imgs = read_images(images)?;
    let lbls = read_labels(labels)?;
    if imgs.count != lbls.len() {
        return Err(DataError::CountMismatch {
            images: images.to_path_buf(),
            labels: labels.to_path_buf(),
            n_images: imgs.count,
            n_labels: lbls.len(),
        });
    }
    check_labels(labels, &lbls, classes)?;
    Ok((imgs, lbls))
}

pub(crate) fn check_labels(path: &Path, labels: &[u8], classes: usize) -> Result<(), DataError> {
    match labels.iter().position(|&l| usize::from(l) >= classes) {
        Some(index) => Err(DataError::LabelOutOfRange { path: path.to_path_buf(), index, label: labels[index], classes }),
        None => Ok(()),
    }
}

/// Serialises images in idx3 form (used by tests and to export subsets).
pub fn encode_images(count: usize, rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + pixels.len());
    out.extend_from_slice(&IMAGES_MAGIC.to_be_bytes());
    for d in [count, rows, cols] {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

/// Serialises labels in idx1 form.
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_odd_headers_do_not_panic() {
        let p = Path::new("x");
        for bytes in [&[][..], &[0, 0, 8], &[0, 0, 8, 3, 0, 0], &[0, 0, 8, 1]] {
            assert!(parse_images(p, bytes).is_err());
            assert!(parse_labels(p, bytes).is_err());
        }
        let huge = encode_images(u32::MAX as usize, u32::MAX as usize, u32::MAX as usize, &[]);
        assert!(parse_images(p, &huge).is_err());
    }

    #[test]
    fn encode_parse_round_trip() {
        let px: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        let im = parse_images(Path::new("x"), &encode_images(2, 3, 4, &px)).unwrap();
        assert_eq!((im.count, im.rows, im.cols), (2, 3, 4));
        assert_eq!(im.pixels, px);
        assert_eq!(parse_labels(Path::new("y"), &encode_labels(&[1, 2])).unwrap(), vec![1, 2]);
    }
}
