//! The searchable network: every conv holds weights at its slot's cap, one BatchNorm per
//! candidate width, and architecture logits; forward passes sample two candidates per slot
//! (Gumbel, TAS's `select2withP`), interpolate both to the wider one along channels (CWI) and
//! mix them, with 2-bit quantization in the loop (SAWB on the active weight slice, PACT after
//! the mix).

use super::space::{Slot, SpaceConfig};
use crate::graph::{Network, Op, Src};
use crate::quant::{maxabs_quantize, pact_quantize_fused, sawb_quantize};
use std::collections::BTreeMap;
use tch::{nn, Kind, Tensor};

/// How a forward pass picks widths.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Gumbel top-2 sampling at temperature `tau`, mixing weights differentiable in the logits.
    Sample { tau: f64 },
    /// The argmax candidate of every slot (the architecture the search would derive).
    Argmax,
}

struct Conv {
    slot: usize,
    weight: Tensor,
}

/// The supernet over a base network.
pub struct Supernet {
    pub vs: nn::VarStore,
    pub net: Network,
    pub slots: Vec<Slot>,
    /// Architecture logits, one vector per slot (grown on expansion).
    pub logits: Vec<Tensor>,
    convs: BTreeMap<usize, Conv>,
    alphas: BTreeMap<usize, Tensor>,
    bns: BTreeMap<(usize, usize), nn::BatchNorm>,
    fc: Option<(Tensor, Tensor)>,
    /// Channels each layer's output tensor can have at most.
    caps: Vec<usize>,
}

/// Gumbel top-2 (TAS `select2withP`): `z = (log_softmax(α) + g) / τ`, two distinct indices
/// drawn from `softmax(z)` without replacement, mixed by the softmax of their `z`. Returns the
/// indices and the two mixing weights (a differentiable tensor of shape `[2]`). With one
/// candidate, returns it with weight 1.
pub fn sample_two(logits: &Tensor, tau: f64) -> (Vec<usize>, Tensor) {
    let k = logits.size()[0];
    if k == 1 {
        return (vec![0], Tensor::ones([1], (Kind::Float, logits.device())));
    }
    let u = Tensor::rand([k], (Kind::Float, logits.device())).clamp(1e-10, 1.0 - 1e-7);
    let g = -(-u.log()).log();
    let z = (logits.log_softmax(0, Kind::Float) + g) / tau.max(1e-6);
    let p = z.softmax(0, Kind::Float).detach();
    let idx = p.multinomial(2, false);
    let picked: Vec<usize> = Vec::<i64>::try_from(&idx).unwrap_or_default().into_iter().map(|i| i as usize).collect();
    let w = z.index_select(0, &idx).softmax(0, Kind::Float);
    (picked, w)
}

/// Channel-wise interpolation (TAS `ChannelWiseInterV2`): area-resamples the channel axis of an
/// NCHW tensor to `c` channels with adaptive average pooling.
pub fn cwi(x: &Tensor, c: usize) -> Tensor {
    let s = x.size();
    if s[1] == c as i64 {
        return x.shallow_clone();
    }
    x.unsqueeze(1).adaptive_avg_pool3d([c as i64, s[2], s[3]]).squeeze_dim(1)
}

/// Zero-pads the channels of an NCHW tensor to `c`.
pub fn pad_channels(x: &Tensor, c: i64) -> Tensor {
    let have = x.size()[1];
    if have >= c {
        return x.shallow_clone();
    }
    x.constant_pad_nd([0, 0, 0, 0, 0, c - have])
}

fn path<'a>(root: &nn::Path<'a>, name: &str) -> nn::Path<'a> {
    name.split('.').fold(root.clone(), |p, s| p / s)
}

impl Supernet {
    /// Builds the supernet over `net` (the base network: structure, names and bits) with one
    /// slot per width slot of `net`. `pact_init` is the initial PACT clip.
    pub fn new(net: &Network, cfg: &SpaceConfig, pact_init: f64) -> Supernet {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut slots: Vec<Slot> = Vec::new();
        for l in &net.layers {
            if let Some(s) = l.width_slot {
                slots.push(Slot::new(&l.name, net.widths[s], cfg));
            }
        }
        let mut caps = Vec::with_capacity(net.layers.len());
        let cap_of = |caps: &Vec<usize>, s: Src| match s {
            Src::Input => net.input.c,
            Src::Layer(i) => caps[i],
        };
        for l in &net.layers {
            let c = match l.op {
                Op::Conv { .. } => slots[l.width_slot.expect("convs have slots")].cap,
                Op::Linear => l.out_shape.c,
                Op::Add { .. } => l.inputs.iter().map(|&s| cap_of(&caps, s)).max().unwrap_or(0),
                _ => cap_of(&caps, l.inputs[0]),
            };
            caps.push(c);
        }
        let root = vs.root();
        let mut convs = BTreeMap::new();
        let mut alphas = BTreeMap::new();
        let mut fc = None;
        for (i, l) in net.layers.iter().enumerate() {
            let p = path(&root, &l.name);
            let cin = cap_of(&caps, l.inputs[0]) as i64;
            match l.op {
                Op::Conv { k, groups, relu, .. } => {
                    let init = nn::Init::Kaiming {
                        dist: nn::init::NormalOrUniform::Normal,
                        fan: nn::init::FanInOut::FanOut,
                        non_linearity: nn::init::NonLinearity::ReLU,
                    };
                    let weight = p.var("weight", &[caps[i] as i64, cin / groups as i64, k as i64, k as i64], init);
                    convs.insert(i, Conv { slot: l.width_slot.expect("conv slot"), weight });
                    if relu && l.out_bits < 32 {
                        alphas.insert(i, p.sub("act").var("alpha", &[1], nn::Init::Const(pact_init)));
                    }
                }
                Op::Add { relu: true } if l.out_bits < 32 => {
                    alphas.insert(i, p.sub("act").var("alpha", &[1], nn::Init::Const(pact_init)));
                }
                Op::Linear => {
                    let bound = 1.0 / (cin as f64).sqrt();
                    let w = p.var("weight", &[l.out_shape.c as i64, cin], nn::Init::Uniform { lo: -bound, up: bound });
                    let b = p.var("bias", &[l.out_shape.c as i64], nn::Init::Uniform { lo: -bound, up: bound });
                    fc = Some((w, b));
                }
                _ => {}
            }
        }
        let logits = slots
            .iter()
            .map(|s| (Tensor::randn([s.candidates.len() as i64], (Kind::Float, tch::Device::Cpu)) * 0.01).set_requires_grad(true))
            .collect();
        let mut sn = Supernet { vs, net: net.clone(), slots, logits, convs, alphas, bns: BTreeMap::new(), fc, caps };
        for s in 0..sn.slots.len() {
            for c in sn.slots[s].candidates.clone() {
                sn.ensure_bn(s, c);
            }
        }
        sn
    }

    /// Initialises the supernet from a trained model's variables (`nce train` checkpoint names):
    /// conv/linear weights and PACT clips by name, each candidate's BatchNorm `X.bn{c}.*` from
    /// the model's `X.bn.*`. Tensors of different sizes share their leading slice (the channels
    /// both have); channels beyond the trained width keep their random initialisation.
    ///
    /// Why: TAS and NCE search on a pre-trained network in spirit (TAS warms the supernet up for
    /// many epochs); starting from a trained base lets a short search spend its epochs on the
    /// architecture rather than on relearning the task. Returns how many variables were set.
    pub fn init_from(&mut self, src: &[(String, Tensor)]) -> usize {
        let source_name = |n: &str| -> String {
            let parts: Vec<&str> = n.split('.').collect();
            parts
                .iter()
                .map(|p| if p.len() > 2 && p.starts_with("bn") && p[2..].chars().all(|c| c.is_ascii_digit()) { "bn" } else { p })
                .collect::<Vec<_>>()
                .join(".")
        };
        let mut copied = 0;
        tch::no_grad(|| {
            for (name, dst) in self.vs.variables() {
                let want = source_name(&name);
                let Some((_, s)) = src.iter().find(|(n, _)| *n == want) else { continue };
                if dst.dim() != s.dim() {
                    continue;
                }
                crate::train::copy_leading(&dst, s);
                copied += 1;
            }
        });
        copied
    }

    /// Creates the BatchNorm of candidate width `c` of slot `s` if it does not exist yet.
    pub fn ensure_bn(&mut self, s: usize, c: usize) {
        if self.bns.contains_key(&(s, c)) {
            return;
        }
        let name = self.slots[s].name.clone();
        let p = path(&self.vs.root(), &name).sub(format!("bn{c}"));
        // γ = 1, β = 0 as in PyTorch's BatchNorm2d (TAS) and nce's trained models; tch's
        // default draws γ from U(0, 1).
        let bn = nn::batch_norm2d(&p, c as i64, nn::BatchNormConfig { ws_init: nn::Init::Const(1.0), ..Default::default() });
        self.bns.insert((s, c), bn);
    }

    /// Adds candidate `width` to slot `s` (its logit starts at the widest one's value, it gets a
    /// fresh BatchNorm). The caller resizes any optimiser state of the logits.
    pub fn add_candidate(&mut self, s: usize, width: usize) {
        let last = self.logits[s].detach().get(-1).unsqueeze(0);
        let grown = Tensor::cat(&[self.logits[s].detach(), last], 0).set_requires_grad(true);
        self.logits[s] = grown;
        if self.slots[s].candidates.last() != Some(&width) {
            self.slots[s].candidates.push(width);
        }
        self.ensure_bn(s, width);
    }

    /// Softmax probabilities of every slot.
    pub fn probs(&self) -> Vec<Vec<f64>> {
        self.logits.iter().map(|l| Vec::<f64>::try_from(&l.detach().softmax(0, Kind::Double)).unwrap_or_default()).collect()
    }

    /// The argmax width of every slot.
    pub fn argmax_widths(&self) -> Vec<usize> {
        self.probs()
            .iter()
            .zip(&self.slots)
            .map(|(p, s)| {
                s.candidates[super::space::argmax(p)]
            })
            .collect()
    }

    /// Weight-side parameters (conv/linear weights, BatchNorms, PACT clips) by name.
    pub fn weight_params(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The forward pass. `detach_arch` stops gradients into the logits (weight steps).
    pub fn forward(&self, x: &Tensor, train: bool, mode: Mode, detach_arch: bool) -> Tensor {
        let mut outs: Vec<Tensor> = Vec::with_capacity(self.net.layers.len());
        let get = |outs: &Vec<Tensor>, s: Src| match s {
            Src::Input => x.shallow_clone(),
            Src::Layer(i) => outs[i].shallow_clone(),
        };
        for (i, l) in self.net.layers.iter().enumerate() {
            let input = get(&outs, l.inputs[0]);
            let y = match l.op {
                Op::Conv { stride, pad, groups, relu, .. } => {
                    let conv = &self.convs[&i];
                    let slot = &self.slots[conv.slot];
                    let (picked, mix) = match mode {
                        Mode::Sample { tau } => {
                            let logits = if detach_arch { self.logits[conv.slot].detach() } else { self.logits[conv.slot].shallow_clone() };
                            sample_two(&logits, tau)
                        }
                        Mode::Argmax => {
                            let j = i64::try_from(self.logits[conv.slot].argmax(0, false)).unwrap_or(0) as usize;
                            (vec![j], Tensor::ones([1], (Kind::Float, x.device())))
                        }
                    };
                    let widths: Vec<usize> = picked.iter().map(|&j| slot.candidates[j]).collect();
                    let cmax = *widths.iter().max().expect("one candidate at least");
                    let cin = input.size()[1];
                    let w = conv.weight.narrow(0, 0, cmax as i64).narrow(1, 0, cin / groups as i64);
                    let wq = match l.wbits {
                        b if b >= 32 => w,
                        8 => maxabs_quantize(&w, 8),
                        b => sawb_quantize(&w, b),
                    };
                    let out = input.conv2d(&wq, None::<Tensor>, [stride as i64], [pad as i64], [1], groups as i64);
                    let mut y: Option<Tensor> = None;
                    for (n, &c) in widths.iter().enumerate() {
                        let bn = &self.bns[&(conv.slot, c)];
                        let o = nn::ModuleT::forward_t(bn, &out.narrow(1, 0, c as i64), train);
                        let o = cwi(&o, cmax) * mix.get(n as i64);
                        y = Some(match y {
                            None => o,
                            Some(acc) => acc + o,
                        });
                    }
                    let y = y.expect("mixed output");
                    if relu {
                        self.activate(i, &y, l.out_bits)
                    } else {
                        y
                    }
                }
                Op::Add { relu } => {
                    let other = get(&outs, l.inputs[1]);
                    let c = input.size()[1].max(other.size()[1]);
                    let y = pad_channels(&input, c) + pad_channels(&other, c);
                    if relu {
                        self.activate(i, &y, l.out_bits)
                    } else {
                        y
                    }
                }
                Op::Subsample { stride } => input.slice(2, 0, None, stride as i64).slice(3, 0, None, stride as i64),
                Op::MaxPool { k, stride, pad } => input.max_pool2d([k as i64], [stride as i64], [pad as i64], [1], false),
                Op::GlobalAvgPool => input.adaptive_avg_pool2d([1, 1]),
                Op::Linear => {
                    let (w, b) = self.fc.as_ref().expect("linear layer");
                    let flat = input.flatten(1, -1);
                    let w = w.narrow(1, 0, flat.size()[1]);
                    let wq = if l.wbits >= 32 { w } else { maxabs_quantize(&w, l.wbits) };
                    flat.linear(&wq, Some(b))
                }
            };
            outs.push(y);
        }
        outs.pop().expect("a network has layers")
    }

    fn activate(&self, layer: usize, y: &Tensor, bits: u8) -> Tensor {
        match self.alphas.get(&layer) {
            Some(alpha) => pact_quantize_fused(y, alpha, bits),
            None => y.relu(),
        }
    }

    /// Maximum channels of each layer's output.
    pub fn caps(&self) -> &[usize] {
        &self.caps
    }
}
