//! Value parsers for command-line numbers, so that out-of-range values are usage errors
//! (exit 2, clap's message naming the flag) before any work starts. Negative numbers are
//! accepted as values by the flags that use these parsers (`allow_negative_numbers`), so
//! `--lr -1` is rejected as a negative learning rate, not as an unknown flag.

/// Most libtorch / engine threads a command accepts: far above any machine this targets, far
/// below where spawning threads exhausts the stack or the OS.
pub const MAX_THREADS: usize = 1024;

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim().parse::<T>().map_err(|_| format!("`{s}` is not a number"))
}

/// An integer ≥ 1 (epochs, batch sizes, image subsets).
pub fn positive(s: &str) -> Result<usize, String> {
    match number::<usize>(s)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// A finite number ≥ 0 (weight decays, warm-up lengths given as floats, noise).
pub fn non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a finite number ≥ 0, got {s}"))
    }
}

/// A finite number > 0 (learning rates, temperatures).
pub fn positive_f64(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a finite number > 0, got {s}"))
    }
}

/// A fraction in [0, 1] (distillation weight).
pub fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be between 0 and 1, got {s}"))
    }
}

/// A bit width nce quantizes to: 2..=8, or 32 for full precision.
pub fn bits(s: &str) -> Result<u8, String> {
    match number::<u8>(s) {
        Ok(b @ (2..=8 | 32)) => Ok(b),
        _ => Err(format!("supported bit widths are 2 to 8 and 32 (full precision), got {s}")),
    }
}

/// Thread count: 0 (the library default) up to [`MAX_THREADS`].
pub fn threads(s: &str) -> Result<usize, String> {
    let n: usize = number(s)?;
    if n <= MAX_THREADS {
        Ok(n)
    } else {
        Err(format!("at most {MAX_THREADS} threads, got {n}"))
    }
}
