//! Adam for the architecture logits, with state that grows when a slot gains a candidate
//! (the new entry starts with zero moments and its own step count at zero, i.e. a fresh Adam
//! state) and is saved in search checkpoints.

use tch::{no_grad, Kind, Tensor};

/// Adam with L2 weight decay (as `torch.optim.Adam(weight_decay=…)`, which TAS uses).
pub struct Adam {
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    eps: f64,
    /// Steps taken (saved in checkpoints; old checkpoints only have this count).
    t: u64,
    /// Steps each entry has taken, for its bias correction (f64, the shape of its parameter).
    /// An entry added by [`Adam::grow`] starts at 0, like a fresh `torch.optim.Adam` state:
    /// with a shared count its zero second moment would be divided by `1 − β₂ᵗ ≈ 1` instead of
    /// `1 − β₂`, and its first updates would be up to `(1 − β₁)/√(1 − β₂)` ≈ 16 times too large
    /// (β = (0.5, 0.999)).
    steps: Vec<Tensor>,
    /// Which `steps` entries a checkpoint restored (the others take the global count).
    steps_restored: Vec<bool>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl Adam {
    pub fn new(params: &[Tensor], lr: f64, betas: (f64, f64), weight_decay: f64) -> Adam {
        Adam {
            lr,
            betas,
            weight_decay,
            eps: 1e-8,
            t: 0,
            steps: params.iter().map(|p| p.detach().zeros_like().to_kind(Kind::Double)).collect(),
            steps_restored: vec![false; params.len()],
            m: params.iter().map(|p| p.detach().zeros_like()).collect(),
            v: params.iter().map(|p| p.detach().zeros_like()).collect(),
        }
    }

    /// Appends an entry to slot `s` with zero moments and zero steps (a fresh Adam state).
    pub fn grow(&mut self, s: usize) {
        let z = Tensor::zeros([1], (self.m[s].kind(), self.m[s].device()));
        self.m[s] = Tensor::cat(&[&self.m[s], &z], 0);
        self.v[s] = Tensor::cat(&[&self.v[s], &z], 0);
        let z = Tensor::zeros([1], (Kind::Double, self.steps[s].device()));
        self.steps[s] = Tensor::cat(&[&self.steps[s], &z], 0);
    }

    pub fn zero_grad(&self, params: &[Tensor]) {
        for p in params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One Adam step on every parameter with a gradient (a parameter without one keeps its
    /// state and step count, as in `torch.optim.Adam`).
    pub fn step(&mut self, params: &[Tensor]) {
        self.t += 1;
        let (b1, b2) = self.betas;
        no_grad(|| {
            for (i, p) in params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                self.steps[i] = &self.steps[i] + 1.0;
                // 1 − βᵗ per entry, in f64.
                let bc1 = (-(&self.steps[i] * b1.ln()).exp() + 1.0).to_kind(p.kind());
                let bc2 = (-(&self.steps[i] * b2.ln()).exp() + 1.0).to_kind(p.kind());
                let g = &g + p * self.weight_decay;
                self.m[i] = &self.m[i] * b1 + &g * (1.0 - b1);
                self.v[i] = &self.v[i] * b2 + g.square() * (1.0 - b2);
                let denom = (&self.v[i] / bc2).sqrt() + self.eps;
                let update = &self.m[i] / bc1 / denom * self.lr;
                let mut p = p.shallow_clone();
                let _ = p.g_sub_(&update);
            }
        });
    }

    /// Named state for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("__adam__.t".to_string(), Tensor::from_slice(&[self.t as i64]))];
        for (i, (m, s)) in self.m.iter().zip(&self.v).enumerate() {
            v.push((format!("__adam__.m.{i}"), m.shallow_clone()));
            v.push((format!("__adam__.v.{i}"), s.shallow_clone()));
        }
        for (i, n) in self.steps.iter().enumerate() {
            v.push((format!("__adam__.steps.{i}"), n.shallow_clone()));
        }
        v
    }

    /// Restores one named state entry; `false` if the name is not Adam's.
    pub fn restore(&mut self, name: &str, t: &Tensor) -> bool {
        let Some(rest) = name.strip_prefix("__adam__.") else { return false };
        if rest == "t" {
            self.t = t.int64_value(&[0]) as u64;
            // Checkpoints written before per-entry counts: every entry has taken `t` steps.
            for (n, done) in self.steps.iter_mut().zip(&self.steps_restored) {
                if !done {
                    *n = n.ones_like() * self.t as f64;
                }
            }
        } else if let Some(i) = rest.strip_prefix("steps.").and_then(|i| i.parse::<usize>().ok()) {
            if i < self.steps.len() {
                self.steps[i] = t.to_kind(Kind::Double).copy();
                self.steps_restored[i] = true;
            }
        } else if let Some(i) = rest.strip_prefix("m.").and_then(|i| i.parse::<usize>().ok()) {
            if i < self.m.len() {
                self.m[i] = t.copy();
            }
        } else if let Some(i) = rest.strip_prefix("v.").and_then(|i| i.parse::<usize>().ok()) {
            if i < self.v.len() {
                self.v[i] = t.copy();
            }
        }
        true
    }
}
