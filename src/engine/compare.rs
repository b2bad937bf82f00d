//! Comparing two backends logit for logit: the check that every backend computes exactly what
//! the CPU engine computes (which is itself checked against the training-time simulation).

use super::backend::{BackendError, PreparedModel};
use crate::data::Dataset;
use serde::Serialize;
use std::time::Instant;

/// Index of the largest logit, ties to the first (as `torch.argmax`).
pub fn argmax(logits: &[i32]) -> usize {
    logits.iter().enumerate().max_by_key(|(i, v)| (**v, std::cmp::Reverse(*i))).map_or(0, |(i, _)| i)
}

/// How backend `a` and backend `b` differ over a dataset.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Comparison {
    pub images: usize,
    /// Logits compared (images × classes).
    pub logits: usize,
    /// Logits whose values differ.
    pub differing_logits: usize,
    /// Images with at least one differing logit.
    pub differing_images: usize,
    /// Images where both backends pick the same class.
    pub argmax_agree: usize,
    /// Largest absolute difference of one logit.
    pub max_deviation: i64,
    /// Images whose every logit differs by at most 1.
    pub images_within_one: usize,
    /// Correct predictions of `a` and of `b`.
    pub a_correct: usize,
    pub b_correct: usize,
    /// Wall-clock seconds each backend took for the whole dataset.
    pub a_seconds: f64,
    pub b_seconds: f64,
}

impl Comparison {
    /// Every logit of every image identical.
    pub fn exact(&self) -> bool {
        self.differing_logits == 0 && self.argmax_agree == self.images
    }
}

/// Runs every image of `ds` through `a` and then through `b` and compares their integer
/// logits. `names` label the backends in the error when one returns the wrong count.
pub fn compare(a: &dyn PreparedModel, b: &dyn PreparedModel, ds: &Dataset, names: (&str, &str)) -> Result<Comparison, BackendError> {
    let timed = |m: &dyn PreparedModel, name: &str| -> Result<(Vec<Vec<i32>>, f64), BackendError> {
        let t = Instant::now();
        let out = m.run_batch(&ds.images)?;
        if out.len() != ds.len() {
            return Err(BackendError::Count { backend: name.to_string(), expected: ds.len(), got: out.len() });
        }
        Ok((out, t.elapsed().as_secs_f64()))
    };
    let (la, a_seconds) = timed(a, names.0)?;
    let (lb, b_seconds) = timed(b, names.1)?;
    let mut c = Comparison { images: ds.len(), a_seconds, b_seconds, ..Default::default() };
    for ((x, y), &label) in la.iter().zip(&lb).zip(&ds.labels) {
        let (ax, ay) = (argmax(x), argmax(y));
        c.logits += x.len().max(y.len());
        c.differing_logits += x.iter().zip(y).filter(|(p, q)| p != q).count() + x.len().abs_diff(y.len());
        c.differing_images += (x != y) as usize;
        c.argmax_agree += (ax == ay) as usize;
        c.a_correct += (ax == label as usize) as usize;
        c.b_correct += (ay == label as usize) as usize;
        let worst = x.iter().zip(y).map(|(p, q)| (i64::from(*p) - i64::from(*q)).abs()).max().unwrap_or(0);
        c.max_deviation = c.max_deviation.max(worst);
        c.images_within_one += (worst <= 1 && x.len() == y.len()) as usize;
    }
    Ok(c)
}
