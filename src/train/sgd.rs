//! SGD with momentum (optionally Nesterov) whose state lives in named tensors, so that it is
//! saved in checkpoints and a resumed run continues exactly where it stopped.

use std::collections::BTreeMap;
use tch::{no_grad, Tensor};

/// Momentum SGD over named parameters with per-parameter weight decay.
pub struct Sgd {
    pub momentum: f64,
    pub nesterov: bool,
    /// Momentum buffers by parameter name (created lazily on the first step).
    pub buffers: BTreeMap<String, Tensor>,
    /// Skip parameters whose gradient is exactly zero, as if it were undefined. libtorch keeps
    /// a gradient defined (zeroed) once any step has used the parameter, so without this a
    /// parameter that this step did not use (a BatchNorm of an unsampled candidate) is updated
    /// by momentum only if an earlier step of *this process* used it — and a resumed search
    /// diverges from an uninterrupted one. Skipping gives PyTorch's
    /// `zero_grad(set_to_none=True)` semantics independently of history. The search sets it.
    pub skip_zero_grads: bool,
}

impl Sgd {
    pub fn new(momentum: f64, nesterov: bool) -> Sgd {
        Sgd { momentum, nesterov, buffers: BTreeMap::new(), skip_zero_grads: false }
    }

    /// One update of every parameter that has a gradient: `g = ∇ + wd·p`, `buf = μ·buf + g`,
    /// `p -= lr · (g + μ·buf)` (Nesterov) or `lr · buf`. `decay(name)` gives each parameter's
    /// weight decay (0 for quantizer clips and steps, which get their own regulariser).
    pub fn step(&mut self, params: &[(String, Tensor)], lr: f64, decay: impl Fn(&str) -> f64) {
        self.step_masked(params, lr, decay, &BTreeMap::new());
    }

    /// [`Sgd::step`] with the weight decay of a parameter multiplied elementwise by its mask in
    /// `masks` (if it has one): the search uses it to leave weight slices no candidate reads alone.
    pub fn step_masked(&mut self, params: &[(String, Tensor)], lr: f64, decay: impl Fn(&str) -> f64, masks: &BTreeMap<String, Tensor>) {
        no_grad(|| {
            for (name, p) in params {
                let grad = p.grad();
                if !grad.defined() || (self.skip_zero_grads && grad.count_nonzero(None::<i64>).int64_value(&[]) == 0) {
                    continue;
                }
                let mut g = grad.shallow_clone();
                let wd = decay(name);
                if wd != 0.0 {
                    g = match masks.get(name) {
                        Some(m) => &g + p * m * wd,
                        None => &g + p * wd,
                    };
                }
                let buf = self.buffers.entry(name.clone()).or_insert_with(|| g.zeros_like());
                let _ = buf.g_mul_scalar_(self.momentum).g_add_(&g);
                let update = if self.nesterov { &g + &*buf * self.momentum } else { buf.shallow_clone() };
                let mut p = p.shallow_clone();
                let _ = p.g_sub_(&(update * lr));
            }
        });
    }

    /// Clears all gradients.
    pub fn zero_grad(params: &[(String, Tensor)]) {
        for (_, p) in params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }
}
