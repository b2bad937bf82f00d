//! Safe output files: the one way every nce command writes a file (checkpoints, `.nce` models,
//! C headers, architecture files, logs, tables).
//!
//! Why one helper: a write that fails half-way (full disk, permissions, a killed process) must
//! never destroy the previous good file, and an output path that happens to name one of the
//! command's own inputs, a device node or a symbolic link must be refused instead of silently
//! replaced. [`write_atomic`] writes to a temporary file in the target's folder, fsyncs it and
//! renames it over the target, so readers see either the old file or the complete new one; on
//! any error the temporary file is removed and the error names the final path and the OS error.
//! The guarantees are listed in `docs/safety.md`.

use std::fs::{File, Metadata};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Why an output file was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The operating system refused (ENOSPC, EACCES, EROFS, …); the target is unchanged. (Not a
    /// `source`: the message already ends with the OS error, and a chain would repeat it.)
    #[error("{}: cannot write: {error}", file.display())]
    Io { file: PathBuf, error: io::Error },
    /// The output would replace a file the same command reads.
    #[error("{}: refusing to overwrite {}, an input of this command; choose another output path", file.display(), input.display())]
    IsInput { file: PathBuf, input: PathBuf },
    /// The target exists and is not a regular file (a folder, device node, FIFO or socket).
    #[error("{}: refusing to write: it is {what}, not a regular file", file.display())]
    NotRegular { file: PathBuf, what: &'static str },
    /// Renaming over a symbolic link would replace the link, not its target.
    #[error("{}: refusing to replace a symbolic link (to {}); write to the link's target or remove the link", file.display(), target.display())]
    Symlink { file: PathBuf, target: PathBuf },
}

impl WriteError {
    /// True for failures of the environment (disk, permissions) rather than of the arguments:
    /// the CLI exits 1 for these and 2 for refused arguments.
    pub fn is_io(&self) -> bool {
        matches!(self, WriteError::Io { .. })
    }

    /// The OS error of a failed write.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            WriteError::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// What a write must not clobber.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// Files the command reads: the target may not be any of them (compared after resolving
    /// links, `..` and hard links).
    pub inputs: Vec<PathBuf>,
}

impl WriteOptions {
    /// Options that protect `inputs` from being overwritten.
    pub fn protecting<P: AsRef<Path>>(inputs: impl IntoIterator<Item = P>) -> WriteOptions {
        WriteOptions { inputs: inputs.into_iter().map(|p| p.as_ref().to_path_buf()).collect() }
    }
}

/// Checks that `path` may be written under `opts` without writing anything: call it before
/// expensive work so that a refused output fails fast.
pub fn check_target(path: &Path, opts: &WriteOptions) -> Result<(), WriteError> {
    let existing = match std::fs::symlink_metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(WriteError::Io { file: path.into(), error }),
    };
    if let Some(m) = &existing {
        if m.file_type().is_symlink() {
            let target = std::fs::read_link(path).unwrap_or_default();
            return Err(WriteError::Symlink { file: path.into(), target });
        }
        if !m.is_file() {
            return Err(WriteError::NotRegular { file: path.into(), what: kind_of(m) });
        }
    }
    for input in &opts.inputs {
        if same_file(path, existing.as_ref(), input) {
            return Err(WriteError::IsInput { file: path.into(), input: input.clone() });
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (see the module documentation).
pub fn write_atomic(path: &Path, bytes: &[u8], opts: &WriteOptions) -> Result<(), WriteError> {
    write_atomic_with(path, opts, |w| w.write_all(bytes))
}

/// Like [`write_atomic`], with the content produced by `fill` writing into a buffered writer
/// (for large or streamed outputs). An error from `fill` aborts the write like an OS error.
pub fn write_atomic_with(path: &Path, opts: &WriteOptions, fill: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<(), WriteError> {
    check_target(path, opts)?;
    let io_err = |error| WriteError::Io { file: path.into(), error };
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{name}.");
    remove_stale_temps(dir, &prefix);
    // The temp file is removed when `tmp` drops, i.e. on every early return below.
    let mut tmp = temp_builder(&prefix).tempfile_in(dir).map_err(io_err)?;
    if let Ok(m) = std::fs::metadata(path) {
        // Replacing a file keeps its mode (a model made world-readable stays so).
        tmp.as_file().set_permissions(m.permissions()).map_err(io_err)?;
    }
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        fill(&mut w).map_err(io_err)?;
        w.flush().map_err(io_err)?;
    }
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(path).map_err(|e| io_err(e.error))?;
    // Make the rename itself durable; not every file system supports syncing a folder.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes temp files a killed earlier write of the same target left behind
/// (`.NAME.XXXXXX.tmp` in the target's folder). Best effort: a failure to list or delete only
/// leaves them for the next run.
fn remove_stale_temps(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with(prefix) && n.ends_with(".tmp") && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The folder a temp file for `path` goes in (the current folder for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A builder for the temp file: on Unix rw for everyone the umask allows, like `File::create`
/// (tempfile's own default, 0600, would make every exported model private).
fn temp_builder(prefix: &str) -> tempfile::Builder<'_, 'static> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b
}

/// A short description of a non-regular file, for error messages.
fn kind_of(m: &Metadata) -> &'static str {
    if m.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

/// Whether `target` (with its metadata, if it exists) is the same file as `input`: the same
/// inode where both exist, else the same canonical path (the target's folder resolved).
fn same_file(target: &Path, existing: Option<&Metadata>, input: &Path) -> bool {
    #[cfg(unix)]
    if let (Some(t), Ok(i)) = (existing, std::fs::metadata(input)) {
        use std::os::unix::fs::MetadataExt;
        return t.dev() == i.dev() && t.ino() == i.ino();
    }
    match (canonical_target(target), std::fs::canonicalize(input)) {
        (Some(t), Ok(i)) => t == i,
        _ => false,
    }
}

/// The canonical form of a path that may not exist yet: its folder canonicalized, plus its name.
fn canonical_target(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Some(p);
    }
    let dir = std::fs::canonicalize(parent_dir(path)).ok()?;
    Some(dir.join(path.file_name()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/out.bin");
        write_atomic(&p, b"one", &WriteOptions::default()).unwrap();
        write_atomic(&p, b"two", &WriteOptions::default()).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_inputs_folders_and_links() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("in.ot");
        std::fs::write(&input, b"keep").unwrap();
        let via_dotdot = d.path().join("x/../in.ot");
        std::fs::create_dir(d.path().join("x")).unwrap();
        let e = write_atomic(&via_dotdot, b"new", &WriteOptions::protecting([&input])).unwrap_err();
        assert!(matches!(e, WriteError::IsInput { .. }), "{e}");
        assert_eq!(std::fs::read(&input).unwrap(), b"keep");
        let e = write_atomic(&d.path().join("x"), b"new", &WriteOptions::default()).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        #[cfg(unix)]
        {
            let link = d.path().join("link");
            std::os::unix::fs::symlink(&input, &link).unwrap();
            let e = write_atomic(&link, b"new", &WriteOptions::default()).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
            assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_failing_writer_keeps_the_old_file_and_removes_the_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.bin");
        std::fs::write(&p, b"old").unwrap();
        let e = write_atomic_with(&p, &WriteOptions::default(), |w| {
            w.write_all(b"partial")?;
            Err(io::Error::from_raw_os_error(28))
        })
        .unwrap_err();
        assert!(e.to_string().contains("out.bin") && e.to_string().contains("No space left on device"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_temp_files_of_a_killed_write_are_removed_on_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model.nce");
        let stale = dir.path().join(".model.nce.AbC123.tmp");
        let other = dir.path().join(".other.nce.AbC123.tmp");
        std::fs::write(&stale, b"half a model").unwrap();
        std::fs::write(&other, b"another target's").unwrap();
        write_atomic(&target, b"whole", &WriteOptions::default()).unwrap();
        assert!(!stale.exists(), "the killed write's temp file is cleaned");
        assert!(other.exists(), "temp files of other targets are left alone");
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
    }
}
