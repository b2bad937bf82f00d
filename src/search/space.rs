//! The search space: candidate widths per width slot, and NCE's expansion rule.
//!
//! Pure bookkeeping (no tch) so the rule is testable on synthetic probabilities.

pub use crate::graph::arch::Expansion;
use serde::{Deserialize, Serialize};

/// How candidate sets are built and grown.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SpaceConfig {
    /// Initial candidates as multiples of the base width (TAS uses 0.3…1.0; NCE's text is
    /// silent, we default to {0.5, 0.75, 1.0}).
    pub ratios: Vec<f64>,
    /// Expansion step as a multiple of the base width.
    pub step: f64,
    /// Widest allowed width as a multiple of the base width (weights are allocated at this size).
    pub cap: f64,
    /// Widths are rounded to multiples of this (the profile's channel granularity).
    pub granularity: usize,
    /// Expand a slot when the softmax probability of its widest candidate exceeds this.
    /// `f64::INFINITY` disables expansion (plain TAS with quantization in the loop). JSON has
    /// no infinity, so it is stored as `null` (and `null` reads back as infinity): a TAS
    /// search's checkpoint must resume.
    #[serde(with = "infinity_as_null")]
    pub threshold: f64,
}

mod infinity_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_infinite() && *v > 0.0 {
            s.serialize_none()
        } else {
            s.serialize_f64(*v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

impl Default for SpaceConfig {
    fn default() -> Self {
        SpaceConfig { ratios: vec![0.5, 0.75, 1.0], step: 0.25, cap: 2.0, granularity: 1, threshold: 0.5 }
    }
}

/// Rounds `x` to the nearest positive multiple of `g`.
pub fn round_to(x: f64, g: usize) -> usize {
    let g = g.max(1);
    (((x / g as f64).round() as usize).max(1)) * g
}

/// Index of the largest probability; ties go to the first (narrowest) candidate, as
/// `torch.argmax` does, so a freshly added candidate (which copies the widest logit) does not
/// win by a tie.
pub fn argmax(p: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in p.iter().enumerate() {
        if *v > p[best] {
            best = i;
        }
    }
    best
}

/// One width slot's candidates.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Slot {
    pub name: String,
    pub base: usize,
    /// Maximum width (weights are allocated for it).
    pub cap: usize,
    /// Candidate widths, strictly increasing.
    pub candidates: Vec<usize>,
}

impl Slot {
    /// Candidates are rounded to the granularity, but never to more than one expansion step
    /// (`base × step`): a 32-wide systolic array must not turn a 16-channel layer's grid into
    /// {32} (the cost plugins charge the padding instead).
    pub fn new(name: &str, base: usize, cfg: &SpaceConfig) -> Slot {
        let g = cfg.granularity.min(((base as f64 * cfg.step).floor() as usize).max(1));
        let cap = round_to(base as f64 * cfg.cap, g).max(base);
        let mut candidates: Vec<usize> = cfg.ratios.iter().map(|r| round_to(base as f64 * r, g).min(cap)).collect();
        candidates.sort_unstable();
        candidates.dedup();
        Slot { name: name.into(), base, cap, candidates }
    }

    pub fn widest(&self) -> usize {
        *self.candidates.last().expect("a slot has at least one candidate")
    }

    /// The next wider candidate NCE would add, or `None` at the cap.
    pub fn next_width(&self, cfg: &SpaceConfig) -> Option<usize> {
        let g = cfg.granularity.min(((self.base as f64 * cfg.step).floor() as usize).max(1));
        let next = round_to(self.widest() as f64 + self.base as f64 * cfg.step, g).min(self.cap);
        (next > self.widest()).then_some(next)
    }
}

/// The expansion rule: every slot whose widest candidate has probability above the threshold
/// gets the next wider candidate (up to its cap). `probs[s]` is slot `s`'s softmax over its
/// candidates. Returns the events; the caller grows its logits and BatchNorms to match.
pub fn expand(slots: &mut [Slot], probs: &[Vec<f64>], cfg: &SpaceConfig, epoch: usize) -> Vec<Expansion> {
    expand_per_slot(slots, probs, &vec![cfg.threshold; slots.len()], cfg, epoch)
}

/// Per-slot thresholds from sensitivity ranks `r_s` in [0, 1]: `T · 2^(1 − 2 r_s)`, so the most
/// sensitive slot expands at T/2, the median one at T (the paper's rule), the least sensitive
/// at 2T (at T = 0.5: never, a probability cannot exceed 1).
pub fn guided_thresholds(threshold: f64, ranks: &[f64]) -> Vec<f64> {
    ranks.iter().map(|r| threshold * 2f64.powf(1.0 - 2.0 * r.clamp(0.0, 1.0))).collect()
}

/// [`expand`] with one threshold per slot.
pub fn expand_per_slot(slots: &mut [Slot], probs: &[Vec<f64>], thresholds: &[f64], cfg: &SpaceConfig, epoch: usize) -> Vec<Expansion> {
    let mut events = Vec::new();
    for (i, ((slot, p), &threshold)) in slots.iter_mut().zip(probs).zip(thresholds).enumerate() {
        let Some(&p_widest) = p.last() else { continue };
        if p_widest > threshold {
            if let Some(next) = slot.next_width(cfg) {
                events.push(Expansion { epoch, slot: i, layer: slot.name.clone(), old_widest: slot.widest(), new_widest: next });
                slot.candidates.push(next);
            }
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_round_to_granularity_and_dedup() {
        let cfg = SpaceConfig { granularity: 4, ..Default::default() };
        let s = Slot::new("x", 16, &cfg);
        assert_eq!(s.candidates, vec![8, 12, 16]);
        assert_eq!(s.cap, 32);
        // Granularity 32 is capped at one step (16 · 0.25 = 4) for a 16-channel layer …
        let s = Slot::new("x", 16, &SpaceConfig { granularity: 32, ..Default::default() });
        assert_eq!(s.candidates, vec![8, 12, 16]);
        // … and applies in full to wide layers.
        let s = Slot::new("x", 256, &SpaceConfig { granularity: 32, ..Default::default() });
        assert_eq!(s.candidates, vec![128, 192, 256]);
        assert_eq!(s.next_width(&SpaceConfig { granularity: 32, ..Default::default() }), Some(320));
        assert_eq!(argmax(&[0.2, 0.4, 0.4]), 1);
        let s = Slot::new("tiny", 2, &SpaceConfig { granularity: 1, ..Default::default() });
        assert_eq!(s.candidates, vec![1, 2]);
    }

    #[test]
    fn expansion_adds_one_step_up_to_the_cap() {
        let cfg = SpaceConfig::default();
        let mut slots = vec![Slot::new("a", 16, &cfg), Slot::new("b", 16, &cfg)];
        let probs = vec![vec![0.1, 0.2, 0.7], vec![0.5, 0.3, 0.2]];
        let ev = expand(&mut slots, &probs, &cfg, 3);
        assert_eq!(ev, vec![Expansion { epoch: 3, slot: 0, layer: "a".into(), old_widest: 16, new_widest: 20 }]);
        assert_eq!(slots[0].candidates, vec![8, 12, 16, 20]);
        assert_eq!(slots[1].candidates, vec![8, 12, 16]);
        for _ in 0..10 {
            let p = vec![vec![0.0; slots[0].candidates.len() - 1].into_iter().chain([1.0]).collect::<Vec<_>>(), vec![1.0, 0.0, 0.0]];
            expand(&mut slots, &p, &cfg, 4);
        }
        assert_eq!(slots[0].widest(), 32, "stops at the 2x cap");
        // Guided thresholds: the sensitive slot expands at 0.3, the insensitive one does not.
        let t = guided_thresholds(0.5, &[1.0, 0.0, 0.5]);
        assert_eq!(t, vec![0.25, 1.0, 0.5]);
        let mut g = vec![Slot::new("hot", 16, &cfg), Slot::new("cold", 16, &cfg), Slot::new("mid", 16, &cfg)];
        let ev = expand_per_slot(&mut g, &[vec![0.3, 0.4, 0.3], vec![0.0, 0.01, 0.99], vec![0.1, 0.3, 0.6]], &t, &cfg, 0);
        assert_eq!(ev.iter().map(|e| e.layer.as_str()).collect::<Vec<_>>(), vec!["hot", "mid"]);
        let off = SpaceConfig { threshold: f64::INFINITY, ..cfg };
        let mut s = vec![Slot::new("a", 16, &off)];
        assert!(expand(&mut s, &[vec![0.0, 0.0, 1.0]], &off, 0).is_empty());
    }
}
