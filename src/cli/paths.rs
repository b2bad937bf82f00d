//! Paths stored inside output files (the checkpoint a `.nce` model records) are written
//! relative to the file that holds them, so that the pair can be moved or read from another
//! folder; reading accepts the older forms too.

use std::path::{Component, Path, PathBuf};

/// `target` as a path relative to the folder of `holder` (a file about to be written), or
/// `target` unchanged if no relative path exists (another drive).
pub fn relative_to_holder(target: &Path, holder: &Path) -> PathBuf {
    let (Some(to), Some(from)) = (resolved(target), holder.parent().and_then(resolved)) else {
        return target.to_path_buf();
    };
    let common = to.components().zip(from.components()).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return target.to_path_buf();
    }
    let ups = from.components().skip(common).map(|_| Component::ParentDir);
    ups.chain(to.components().skip(common)).collect()
}

/// An absolute form of `p` with links and `..` resolved as far as the path exists (the rest,
/// e.g. an output folder not created yet, appended as written).
fn resolved(p: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(p).ok()?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            return Some(rest.iter().rev().fold(c, |acc: PathBuf, part| acc.join(part)));
        }
        rest.push(existing.file_name()?.to_os_string());
        existing = existing.parent()?;
    }
}

/// The file a path recorded in `holder` names: relative to `holder`'s folder (how nce writes
/// them), else relative to the working folder (files written before that), else the same file
/// name beside `holder` (a model and its checkpoint copied together). The first that exists;
/// the holder-relative form if none does, so the error names the documented place.
pub fn recorded_path(holder: &Path, recorded: &str) -> PathBuf {
    let recorded = Path::new(recorded);
    let dir = holder.parent().unwrap_or(Path::new(""));
    let beside = recorded.file_name().map(|n| dir.join(n));
    let candidates = [Some(dir.join(recorded)), Some(recorded.to_path_buf()), beside];
    let found = candidates.iter().flatten().find(|p| p.is_file()).cloned();
    found.unwrap_or_else(|| dir.join(recorded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_between_folders() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("runs/a/checkpoint.ot");
        std::fs::create_dir_all(ck.parent().unwrap()).unwrap();
        std::fs::write(&ck, b"x").unwrap();
        assert_eq!(relative_to_holder(&ck, &d.path().join("runs/a/m.nce")), PathBuf::from("checkpoint.ot"));
        assert_eq!(relative_to_holder(&ck, &d.path().join("out/new/m.nce")), PathBuf::from("../../runs/a/checkpoint.ot"));
        let holder = d.path().join("out/new/m.nce");
        std::fs::create_dir_all(holder.parent().unwrap()).unwrap();
        assert_eq!(recorded_path(&holder, "../../runs/a/checkpoint.ot"), d.path().join("out/new/../../runs/a/checkpoint.ot"));
        assert!(recorded_path(&holder, "../../runs/a/checkpoint.ot").is_file());
    }
}
