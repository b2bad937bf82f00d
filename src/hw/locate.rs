//! Mapping TOML keys and byte offsets back to line:column for error messages.

use std::fmt;

/// A 1-based line and column in a source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Location {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

impl Location {
    /// Line and column of byte `offset` in `src`.
    pub fn of_offset(src: &str, offset: usize) -> Location {
        let offset = offset.min(src.len());
        let before = &src[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location { line, col }
    }

    /// Where `key` is defined inside `[table]` (a dotted header such as `plugins.roofline`;
    /// `""` for the top level). Falls back to the table header, then to 1:1.
    pub fn of_key(src: &str, table: &str, key: &str) -> Location {
        let mut current = String::new();
        let mut header_at = None;
        let mut offset = 0;
        for line in src.split_inclusive('\n') {
            let t = line.trim();
            if t.starts_with('[') && !t.starts_with("[[") {
                current = t.trim_start_matches('[').split(']').next().unwrap_or("").trim().replace(['"', '\''], "");
                if current == table {
                    header_at = Some(offset + line.find('[').unwrap_or(0));
                }
            } else if current == table && !key.is_empty() {
                let k = t.split('=').next().unwrap_or("").trim().trim_matches(['"', '\'']);
                if t.contains('=') && k == key {
                    return Location::of_offset(src, offset + line.find(t).unwrap_or(0));
                }
            }
            offset += line.len();
        }
        header_at.map_or(Location { line: 1, col: 1 }, |o| Location::of_offset(src, o))
    }
}
