//! Progress bars with an ETA on standard error. indicatif draws nothing when standard error is
//! not a terminal, so pipes, logs and tests see no progress output.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps labelled `what` and counted in `unit` (e.g. `validate`, `images`).
pub fn bar(len: u64, what: &str, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let template = format!("{what:<9} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}}, ETA {{eta}})");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
