//! The searchable network: every conv holds weights at its slot's cap, one BatchNorm per
//! candidate width, and architecture logits; forward passes sample two candidates per slot
//! (Gumbel, TAS's `select2withP`), interpolate both to the wider one along channels (CWI) and
//! mix them, with 2-bit quantization in the loop (SAWB on the active weight slice, PACT after
//! the mix).

use super::space::{Slot, SpaceConfig};
use crate::graph::{Network, Op, Src};
use crate::models::InputNorm;
use crate::quant::{maxabs_quantize, pact_quantize_fused, sawb_quantize, signed_quantize_fused};
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
    /// The width slot of a dense conv; `None` for a depthwise conv, whose width is its input's.
    slot: Option<usize>,
    weight: Tensor,
    /// The input normalisation of an imported network, for a conv reading the image (as
    /// [`crate::models`] applies it).
    norm: Option<InputNorm>,
}

#[derive(Clone, Copy)]
struct ConvGeometry {
    stride: i64,
    pad: i64,
    groups: i64,
}

/// The supernet over a base network.
pub struct Supernet {
    pub vs: nn::VarStore,
    pub net: Network,
    pub slots: Vec<Slot>,
    /// Architecture logits, one vector per slot (grown on expansion).
    pub logits: Vec<Tensor>,
    convs: BTreeMap<usize, Conv>,
    /// PACT clips: of ReLU outputs, and of signed outputs (`Network::is_signed`, 8-bit codes
    /// with a zero point, quantized as the trained model's `ActQuant::Signed`).
    alphas: BTreeMap<usize, Tensor>,
    /// One BatchNorm per (conv layer, output width).
    bns: BTreeMap<(usize, usize), nn::BatchNorm>,
    /// Per layer: the slots whose candidates its output width can take (its width is the max of
    /// theirs); empty for fixed widths (the input, the classifier).
    sources: Vec<Vec<usize>>,
    fc: Option<(Tensor, Tensor)>,
    /// Channels each layer's output tensor can have at most.
    caps: Vec<usize>,
    /// Ghost batches of the sampled (training) passes: BatchNorm statistics over this many equal
    /// parts of the batch (`--bn-groups`, docs/distributed.md). Argmax passes (the scoring)
    /// normalise over their whole batch.
    pub bn_groups: usize,
}

/// Gumbel top-2 (TAS `select2withP`): `z = (log_softmax(α) + g) / τ`, two distinct indices
/// drawn from `softmax(z)` without replacement, mixed by the softmax of their `z`. Returns the
/// indices and the two mixing weights (a differentiable tensor of shape `[2]`). With one
/// candidate, returns it with weight 1.
pub fn sample_two(logits: &Tensor, tau: f64) -> (Vec<usize>, Tensor) {
    let d = draw_two(logits, tau);
    let w = d.weights(logits);
    (d.picked, w)
}

/// One slot's random draw of [`sample_two`]: the candidates and the Gumbel noise, from which
/// `Draw::weights` computes the mixing weights, as often as needed (once per gradient shard:
/// a backward pass consumes the graph from the logits to them).
pub struct Draw {
    picked: Vec<usize>,
    idx: Tensor,
    gumbel: Tensor,
    tau: f64,
}

fn draw_two(logits: &Tensor, tau: f64) -> Draw {
    let k = logits.size()[0];
    let tau = tau.max(1e-6);
    if k == 1 {
        let none = Tensor::zeros([0], (Kind::Float, logits.device()));
        return Draw { picked: vec![0], idx: none.shallow_clone(), gumbel: none, tau };
    }
    let u = Tensor::rand([k], (Kind::Float, logits.device())).clamp(1e-10, 1.0 - 1e-7);
    let gumbel = -(-u.log()).log();
    let z = (logits.detach().log_softmax(0, Kind::Float) + &gumbel) / tau;
    let idx = z.softmax(0, Kind::Float).multinomial(2, false);
    let picked: Vec<usize> = Vec::<i64>::try_from(&idx).unwrap_or_default().into_iter().map(|i| i as usize).collect();
    Draw { picked, idx, gumbel, tau }
}

impl Draw {
    /// The mixing weights of the picked candidates (differentiable in `logits`, unless detached).
    fn weights(&self, logits: &Tensor) -> Tensor {
        if self.picked.len() == 1 {
            return Tensor::ones([1], (Kind::Float, logits.device()));
        }
        let z = (logits.log_softmax(0, Kind::Float) + &self.gumbel) / self.tau;
        z.index_select(0, &self.idx).softmax(0, Kind::Float)
    }
}

/// The widths of one forward pass, drawn before it: every gradient shard of a step reuses them,
/// as every rank, seeded alike, draws the same.
pub struct Draws {
    /// One per slot; `None` in argmax mode.
    slots: Vec<Option<Draw>>,
    sampled: bool,
}

/// A candidate's BatchNorm, in training over `groups` ghost batches (`(train, groups)`).
fn batch_norm(bn: &nn::BatchNorm, x: &Tensor, (train, groups): (bool, usize)) -> Tensor {
    if !train || groups <= 1 {
        return nn::ModuleT::forward_t(bn, x, train);
    }
    let c = nn::BatchNormConfig::default();
    let stats = crate::models::RunningStats { mean: &bn.running_mean, var: &bn.running_var, momentum: c.momentum, eps: c.eps };
    crate::models::ghost_batch_norm(x, bn.ws.as_ref(), bn.bs.as_ref(), &stats, groups)
        .unwrap_or_else(|e| panic!("ghost BatchNorm of a {:?} tensor: {e}", x.size()))
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

/// SAWB at 2–4 bits, max-abs at 8, none at 32 (the weights of the active slice).
fn quantize_weights(w: &Tensor, bits: u8) -> Tensor {
    match bits {
        b if b >= 32 => w.shallow_clone(),
        8 => maxabs_quantize(w, 8),
        b => sawb_quantize(w, b),
    }
}

/// For every layer, the width slots whose candidates its output width can take: a dense conv's
/// own slot, a residual add's inputs' (its width is their max), the input's for depthwise convs
/// and pass-through layers; none for fixed widths (the image, the classifier).
pub fn width_sources(net: &Network) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::with_capacity(net.layers.len());
    for l in &net.layers {
        let of = |s: &Src| match *s {
            Src::Input => Vec::new(),
            Src::Layer(j) => out[j].clone(),
        };
        let v = match (&l.op, l.width_slot) {
            (Op::Conv { .. }, Some(s)) => vec![s],
            (Op::Linear, _) => Vec::new(),
            (Op::Add { .. }, _) => {
                let mut u: Vec<usize> = l.inputs.iter().flat_map(of).collect();
                u.sort_unstable();
                u.dedup();
                u
            }
            _ => of(&l.inputs[0]),
        };
        out.push(v);
    }
    out
}

impl Supernet {
    /// Builds the supernet over `net` (the base network: structure, names and bits) with one
    /// slot per width slot of `net`. `pact_init` is the initial PACT clip.
    pub fn new(net: &Network, cfg: &SpaceConfig, pact_init: f64) -> Supernet {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        // One slot per width slot of the network, named after the first layer that uses it
        // (several convs may share one: the projections of a MobileNetV2 stage).
        let slots: Vec<Slot> = net
            .widths
            .iter()
            .enumerate()
            .map(|(s, &base)| {
                let name = net.layers.iter().find(|l| l.width_slot == Some(s)).map_or_else(|| format!("slot{s}"), |l| l.name.clone());
                Slot::new(&name, base, cfg)
            })
            .collect();
        let mut caps = Vec::with_capacity(net.layers.len());
        let cap_of = |caps: &Vec<usize>, s: Src| match s {
            Src::Input => net.input.c,
            Src::Layer(i) => caps[i],
        };
        for l in &net.layers {
            let c = match (&l.op, l.width_slot) {
                (Op::Conv { .. }, Some(s)) => slots[s].cap,
                (Op::Linear, _) => l.out_shape.c,
                (Op::Add { .. }, _) => l.inputs.iter().map(|&s| cap_of(&caps, s)).max().unwrap_or(0),
                _ => cap_of(&caps, l.inputs[0]),
            };
            caps.push(c);
        }
        let sources = width_sources(net);
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
                    // A depthwise conv (no slot) has one filter per channel; a dense one reads
                    // every input channel.
                    let per_group = if l.width_slot.is_some() { cin / groups as i64 } else { 1 };
                    let weight = p.var("weight", &[caps[i] as i64, per_group, k as i64, k as i64], init);
                    // (Cannot fail for a built network: the graph builder checks the
                    // normalisation and the importer makes dense or depthwise convs only.)
                    let norm = net.normalization().filter(|_| l.inputs[0] == Src::Input).and_then(|n| {
                        InputNorm::new(n, l.in_shape.c, groups, root.device())
                            .map_err(|msg| tracing::error!("{}: {msg}; searching without the input normalisation", l.name))
                            .ok()
                    });
                    convs.insert(i, Conv { slot: l.width_slot, weight, norm });
                    if (relu && l.out_bits < 32) || (net.is_signed(i) && l.wbits < 32) {
                        alphas.insert(i, p.sub("act").var("alpha", &[1], nn::Init::Const(pact_init)));
                    }
                }
                Op::Add { relu } if l.out_bits < 32 && (relu || net.is_signed(i)) => {
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
        let mut sn = Supernet { vs, net: net.clone(), slots, logits, convs, alphas, bns: BTreeMap::new(), sources, fc, caps, bn_groups: 1 };
        for s in 0..sn.slots.len() {
            for c in sn.slots[s].candidates.clone() {
                sn.ensure_bn(s, c);
            }
        }
        // Convs of a fixed width (a depthwise conv reading the image) have one BatchNorm.
        let fixed: Vec<(usize, usize)> =
            sn.convs.keys().filter(|&&i| sn.sources[i].is_empty()).map(|&i| (i, sn.net.layers[i].out_shape.c)).collect();
        for (i, c) in fixed {
            sn.ensure_layer_bn(i, c);
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

    /// Creates the BatchNorms of candidate width `c` of slot `s` that do not exist yet: one for
    /// every conv in the slot and every depthwise conv whose width can follow it.
    pub fn ensure_bn(&mut self, s: usize, c: usize) {
        for i in self.bn_layers(s) {
            self.ensure_layer_bn(i, c);
        }
    }

    /// Conv layers whose output width can be a candidate of slot `s` (they hold a BatchNorm per
    /// candidate).
    fn bn_layers(&self, s: usize) -> Vec<usize> {
        self.convs.keys().copied().filter(|&i| self.sources[i].contains(&s)).collect()
    }

    fn ensure_layer_bn(&mut self, i: usize, c: usize) {
        if self.bns.contains_key(&(i, c)) {
            return;
        }
        let p = path(&self.vs.root(), &self.net.layers[i].name).sub(format!("bn{c}"));
        // γ = 1, β = 0 as in PyTorch's BatchNorm2d (TAS) and nce's trained models; tch's
        // default draws γ from U(0, 1).
        let bn = nn::batch_norm2d(&p, c as i64, nn::BatchNormConfig { ws_init: nn::Init::Const(1.0), ..Default::default() });
        self.bns.insert((i, c), bn);
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

    /// Function-preserving initialisation of a slot's new widest candidate `new` (after
    /// [`Supernet::add_candidate`]), Net2Net-style but safe under weight sharing:
    /// - every conv of the slot gets new output filters that are copies of randomly chosen
    ///   existing filters (the same sources for all of them, so tied convs stay aligned) plus
    ///   Gaussian noise of `noise` × the weight's std (and their SGD momentum is cleared); a
    ///   depthwise conv that follows the slot copies the same channels' filters;
    /// - each such conv's BatchNorm of the new width copies the `old` one's γ, β and running
    ///   statistics for the shared channels and the sources' for the new ones, except γ = β = 0
    ///   on the new channels: they output exactly zero, so the network computes what it
    ///   computed with the `old` width (in FP32), and γ grows from its gradient;
    /// - dense convs that read one of these convs directly get their new input columns copied
    ///   from the sources (they never influenced the output before, and multiply zeros until γ
    ///   grows).
    ///
    /// Why not Net2Net's split (halving the source's outgoing weights): those weights are shared
    /// with every narrower candidate, whose function the halving would change.
    pub fn init_expanded(&mut self, s: usize, old: usize, new: usize, noise: f64, seed: u64, sgd_buffers: &mut BTreeMap<String, Tensor>) {
        if new <= old || old == 0 {
            return;
        }
        let mut rng = crate::data::Rng::derive(seed, (s as u64) << 32 | new as u64);
        let src: Vec<i64> = (old..new).map(|_| rng.below(old as u64) as i64).collect();
        let src_t = Tensor::from_slice(&src);
        let n_new = (new - old) as i64;
        let name = self.slots[s].name.clone();
        // The slot's own convs, then depthwise convs whose width is exactly this slot's.
        let growing: Vec<usize> = self
            .convs
            .iter()
            .filter(|(&i, c)| c.slot == Some(s) || (c.slot.is_none() && self.sources[i] == [s]))
            .map(|(&i, _)| i)
            .collect();
        tch::no_grad(|| {
            for &i in &growing {
                let w = &self.convs[&i].weight;
                let rows = w.index_select(0, &src_t);
                let std = w.narrow(0, 0, old as i64).std(true).double_value(&[]);
                let fresh = &rows + rows.randn_like() * (noise * std);
                w.narrow(0, old as i64, n_new).copy_(&fresh);
                if let Some(buf) = sgd_buffers.get_mut(&format!("{}.weight", self.net.layers[i].name)) {
                    let _ = buf.narrow(0, old as i64, n_new).zero_();
                }
                self.copy_consumer_columns(i, old, n_new, &src_t);
                self.init_expanded_bn(i, old, new, &src_t);
            }
        });
        tracing::debug!("{name}: channels {old}..{new} initialised from copies");
    }

    /// Dense convs reading layer `i` directly: new input columns `old..old+n` copied from `src`.
    fn copy_consumer_columns(&self, i: usize, old: usize, n: i64, src: &Tensor) {
        for (j, l) in self.net.layers.iter().enumerate() {
            if l.inputs.first() == Some(&Src::Layer(i)) {
                if let (Op::Conv { groups: 1, .. }, Some(c)) = (&l.op, self.convs.get(&j)) {
                    let cols = c.weight.index_select(1, src);
                    c.weight.narrow(1, old as i64, n).copy_(&cols);
                }
            }
        }
    }

    /// Layer `i`'s BatchNorm of width `new` from its width-`old` one: shared channels copied,
    /// new channels γ = β = 0 with their sources' statistics.
    fn init_expanded_bn(&self, i: usize, old: usize, new: usize, src: &Tensor) {
        let (Some(from), Some(to)) = (self.bns.get(&(i, old)), self.bns.get(&(i, new))) else { return };
        let n_new = (new - old) as i64;
        let pairs = [
            (from.ws.as_ref(), to.ws.as_ref(), true),
            (from.bs.as_ref(), to.bs.as_ref(), true),
            (Some(&from.running_mean), Some(&to.running_mean), false),
            (Some(&from.running_var), Some(&to.running_var), false),
        ];
        for (a, b, zero_new) in pairs {
            let (Some(a), Some(b)) = (a, b) else { continue };
            b.narrow(0, 0, old as i64).copy_(a);
            let mut tail = b.narrow(0, old as i64, n_new);
            if zero_new {
                let _ = tail.zero_();
            } else {
                tail.copy_(&a.index_select(0, src));
            }
        }
    }

    /// Weight-decay masks: for every conv and linear weight, 1 on the slice some candidate can
    /// read (rows up to the slot's widest candidate, input columns up to the widest input any
    /// candidate produces) and 0 elsewhere, so decay never shrinks weights no candidate uses.
    pub fn decay_masks(&self) -> BTreeMap<String, Tensor> {
        let mut active: Vec<usize> = Vec::with_capacity(self.net.layers.len());
        let of = |active: &Vec<usize>, s: Src| match s {
            Src::Input => self.net.input.c,
            Src::Layer(i) => active[i],
        };
        let mut masks = BTreeMap::new();
        for (i, l) in self.net.layers.iter().enumerate() {
            let cin = of(&active, l.inputs[0]);
            let c = match l.op {
                Op::Conv { .. } => {
                    let conv = &self.convs[&i];
                    // A depthwise conv (no slot) has one input column and as many rows as inputs.
                    let (out, cols) = match conv.slot {
                        Some(s) => (self.slots[s].widest(), cin),
                        None => (cin, 1),
                    };
                    let m = conv.weight.zeros_like();
                    let _ = m.narrow(0, 0, out as i64).narrow(1, 0, cols as i64).fill_(1.0);
                    masks.insert(format!("{}.weight", l.name), m);
                    out
                }
                Op::Linear => {
                    if let Some((w, _)) = &self.fc {
                        let m = w.zeros_like();
                        let _ = m.narrow(1, 0, (cin as i64).min(w.size()[1])).fill_(1.0);
                        masks.insert(format!("{}.weight", l.name), m);
                    }
                    l.out_shape.c
                }
                Op::Add { .. } => l.inputs.iter().map(|&s| of(&active, s)).max().unwrap_or(0),
                _ => cin,
            };
            active.push(c);
        }
        masks
    }

    /// Softmax probabilities of every slot.
    pub fn probs(&self) -> Vec<Vec<f64>> {
        self.logits.iter().map(|l| Vec::<f64>::try_from(&l.detach().softmax(0, Kind::Double)).unwrap_or_default()).collect()
    }

    /// The argmax width of every slot.
    pub fn argmax_widths(&self) -> Vec<usize> {
        self.probs().iter().zip(&self.slots).map(|(p, s)| s.candidates[super::space::argmax(p)]).collect()
    }

    /// Weight-side parameters (conv/linear weights, BatchNorms, PACT clips) by name.
    pub fn weight_params(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The forward pass. `detach_arch` stops gradients into the logits (weight steps).
    pub fn forward(&self, x: &Tensor, train: bool, mode: Mode, detach_arch: bool) -> Tensor {
        let draws = self.draw(mode);
        self.forward_drawn(x, train, &draws, detach_arch)
    }

    /// The random part of a forward pass in `mode`: one draw per slot, in slot order (none in
    /// argmax mode).
    pub fn draw(&self, mode: Mode) -> Draws {
        let slots = self
            .logits
            .iter()
            .map(|l| match mode {
                Mode::Sample { tau } => Some(draw_two(l, tau)),
                Mode::Argmax => None,
            })
            .collect();
        Draws { slots, sampled: matches!(mode, Mode::Sample { .. }) }
    }

    /// [`Supernet::forward`] with the widths `draws` ([`Supernet::draw`]).
    pub fn forward_drawn(&self, x: &Tensor, train: bool, draws: &Draws, detach_arch: bool) -> Tensor {
        let bn_groups = if train && draws.sampled { self.bn_groups.max(1) } else { 1 };
        let mut outs: Vec<Tensor> = Vec::with_capacity(self.net.layers.len());
        let get = |outs: &Vec<Tensor>, s: Src| match s {
            Src::Input => x.shallow_clone(),
            Src::Layer(i) => outs[i].shallow_clone(),
        };
        // One draw per slot (in slot order) for the whole pass: convs that share a slot run the
        // same candidates, so the residual adds that tie them see equal widths.
        let picks: Vec<(Vec<usize>, Tensor)> = (0..self.slots.len()).map(|s| self.pick(s, &draws.slots[s], detach_arch)).collect();
        for (i, l) in self.net.layers.iter().enumerate() {
            let input = get(&outs, l.inputs[0]);
            let y = match l.op {
                Op::Conv { stride, pad, groups, relu, .. } => {
                    let geometry = ConvGeometry { stride: stride as i64, pad: pad as i64, groups: groups as i64 };
                    let y = match self.convs[&i].slot {
                        Some(s) => self.mixed_conv(i, l.wbits, &input, geometry, (train, bn_groups), &picks[s]),
                        None => self.depthwise_conv(i, l.wbits, &input, geometry, (train, bn_groups)),
                    };
                    if relu {
                        self.activate(i, &y, l.out_bits)
                    } else {
                        self.signed_codes(i, y)
                    }
                }
                Op::Add { relu } => {
                    let other = get(&outs, l.inputs[1]);
                    let c = input.size()[1].max(other.size()[1]);
                    let y = pad_channels(&input, c) + pad_channels(&other, c);
                    if relu {
                        self.activate(i, &y, l.out_bits)
                    } else {
                        self.signed_codes(i, y)
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

    /// The candidates a slot runs this step and their mixing weights: two sampled ones, or
    /// the argmax with weight 1.
    fn pick(&self, slot: usize, draw: &Option<Draw>, detach_arch: bool) -> (Vec<usize>, Tensor) {
        let logits = &self.logits[slot];
        match draw {
            Some(d) => (d.picked.clone(), d.weights(&if detach_arch { logits.detach() } else { logits.shallow_clone() })),
            None => {
                let j = i64::try_from(logits.argmax(0, false)).unwrap_or(0) as usize;
                (vec![j], Tensor::ones([1], (Kind::Float, logits.device())))
            }
        }
    }

    /// Conv layer `i` at the widest picked candidate of its slot, each candidate's BatchNorm on
    /// its slice, resampled to that width (channel-wise interpolation) and mixed by `mix`.
    fn mixed_conv(
        &self,
        i: usize,
        wbits: u8,
        input: &Tensor,
        g: ConvGeometry,
        train: (bool, usize),
        (picked, mix): &(Vec<usize>, Tensor),
    ) -> Tensor {
        let conv = &self.convs[&i];
        let slot = &self.slots[conv.slot.expect("a mixed conv has a slot")];
        let widths: Vec<usize> = picked.iter().map(|&j| slot.candidates[j]).collect();
        let cmax = *widths.iter().max().expect("one candidate at least");
        let w = conv.weight.narrow(0, 0, cmax as i64).narrow(1, 0, input.size()[1] / g.groups);
        let out = self.conv(i, input, &w, wbits, g);
        let mixed = widths.iter().enumerate().map(|(n, &c)| {
            let o = batch_norm(&self.bns[&(i, c)], &out.narrow(1, 0, c as i64), train);
            cwi(&o, cmax) * mix.get(n as i64)
        });
        mixed.reduce(|acc, o| acc + o).expect("one candidate at least")
    }

    /// Depthwise conv layer `i` at its input's width (one filter per channel, `groups` = that
    /// width), with the BatchNorm of that width: no candidates of its own to mix.
    fn depthwise_conv(&self, i: usize, wbits: u8, input: &Tensor, g: ConvGeometry, train: (bool, usize)) -> Tensor {
        let c = input.size()[1];
        let w = self.convs[&i].weight.narrow(0, 0, c);
        let out = self.conv(i, input, &w, wbits, ConvGeometry { groups: c, ..g });
        let bn = self.bns.get(&(i, c as usize)).unwrap_or_else(|| panic!("{}: no BatchNorm for width {c}", self.net.layers[i].name));
        batch_norm(bn, &out, train)
    }

    /// Conv layer `i`'s convolution of `input` with `w` quantized to `wbits` (a conv reading a
    /// normalised image applies the normalisation as [`crate::models`] does).
    fn conv(&self, i: usize, input: &Tensor, w: &Tensor, wbits: u8, g: ConvGeometry) -> Tensor {
        let conv = |x: &Tensor, w: &Tensor| x.f_conv2d(w, None::<Tensor>, [g.stride], [g.pad], [1], g.groups);
        let quantize = |w: &Tensor| quantize_weights(w, wbits);
        let y = match &self.convs[&i].norm {
            Some(n) => n.conv(input, w, (wbits < 32).then_some(&quantize as &dyn Fn(&Tensor) -> Tensor), conv),
            None => conv(input, &quantize(w)),
        };
        y.unwrap_or_else(|e| panic!("{}: {e}", self.net.layers[i].name))
    }

    fn activate(&self, layer: usize, y: &Tensor, bits: u8) -> Tensor {
        match self.alphas.get(&layer) {
            Some(alpha) => pact_quantize_fused(y, alpha, bits),
            None => y.relu(),
        }
    }

    /// A linear output: signed 8-bit codes where the layer stores them (a projection shortcut,
    /// a linear bottleneck, an add without ReLU: the only layers without ReLU given a clip),
    /// else `y` in float (a conv fused with its add).
    fn signed_codes(&self, layer: usize, y: Tensor) -> Tensor {
        match self.alphas.get(&layer) {
            Some(alpha) => signed_quantize_fused(&y, alpha, 8),
            None => y,
        }
    }

    /// Maximum channels of each layer's output.
    pub fn caps(&self) -> &[usize] {
        &self.caps
    }
}
