//! Adam for the architecture logits, with state that grows when a slot gains a candidate
//! (the new entry starts with zero moments) and is saved in search checkpoints.

use tch::{no_grad, Tensor};

/// Adam with L2 weight decay (as `torch.optim.Adam(weight_decay=…)`, which TAS uses).
pub struct Adam {
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    eps: f64,
    /// Steps taken (for bias correction), shared by all slots.
    t: u64,
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
            m: params.iter().map(|p| p.detach().zeros_like()).collect(),
            v: params.iter().map(|p| p.detach().zeros_like()).collect(),
        }
    }

    /// Appends a zero moment entry to slot `s`.
    pub fn grow(&mut self, s: usize) {
        let z = Tensor::zeros([1], (self.m[s].kind(), self.m[s].device()));
        self.m[s] = Tensor::cat(&[&self.m[s], &z], 0);
        self.v[s] = Tensor::cat(&[&self.v[s], &z], 0);
    }

    pub fn zero_grad(&self, params: &[Tensor]) {
        for p in params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One Adam step on every parameter with a gradient.
    pub fn step(&mut self, params: &[Tensor]) {
        self.t += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        no_grad(|| {
            for (i, p) in params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
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
        v
    }

    /// Restores one named state entry; `false` if the name is not Adam's.
    pub fn restore(&mut self, name: &str, t: &Tensor) -> bool {
        let Some(rest) = name.strip_prefix("__adam__.") else { return false };
        if rest == "t" {
            self.t = t.int64_value(&[0]) as u64;
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
