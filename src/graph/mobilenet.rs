//! MobileNetV2 layer graphs (Sandler et al. 2018): inverted residual blocks of a 1×1 expansion,
//! a depthwise 3×3 and a 1×1 projection, for any width multiplier and width vector.
//!
//! The stride plan is the CIFAR one (stem and second stage at stride 1, as in the common CIFAR
//! ports), so a 28×28 or 32×32 input ends at 4×4 before the last 1×1 conv.
//!
//! Two departures from the paper, both for uniform unsigned 2-bit activations
//! (`docs/quantization.md`, "MobileNetV2"):
//! - ReLU instead of ReLU6: the PACT quantizer that follows every ReLU clips at a learned α,
//!   which is ReLU6 with a learned 6.
//! - A block's output is rectified: the projection of a block with a residual add feeds the add
//!   (ReLU after the sum, as in ResNets), and one without a residual ends in ReLU. A linear
//!   bottleneck would need signed activation codes, which the 2-bit engines do not have.
//!
//! Width slots: every expansion conv has its own (its width is the block's hidden width, which
//! the depthwise conv after it follows); the projections of one stage share one slot, since the
//! residual adds join them; the stem and the last 1×1 conv have one each.

use super::builder::Builder;
use super::{Src, WidthMult};

/// `(t, c, n, s)`: expansion factor, base output channels, blocks, stride of the first block
/// (the paper's Table 2, with the CIFAR plan's stride 1 in the second stage).
pub const V2_STAGES: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

/// Channels of the stem conv before the multiplier.
pub const V2_STEM: usize = 32;
/// Channels of the last 1×1 conv (scaled only by multipliers above 1, as in the paper).
pub const V2_LAST: usize = 1280;

pub(super) fn v2(b: &mut Builder, mult: WidthMult) {
    let stem = mult.scale(V2_STEM);
    let mut x = b.conv("conv1", Src::Input, stem, 3, 1, true);
    let mut in_base = stem;
    for (s, &(t, c, n, stride)) in V2_STAGES.iter().enumerate() {
        let out_base = mult.scale(c);
        let mut stage_slot = None;
        for i in 0..n {
            let p = format!("stage{}.{i}", s + 1);
            let st = if i == 0 { stride } else { 1 };
            let residual = st == 1 && in_base == out_base;
            let hidden = if t == 1 { x } else { b.conv(&format!("{p}.expand"), x, in_base * t, 1, 1, true) };
            let d = b.depthwise(&format!("{p}.dw"), hidden, 3, st);
            let slot = *stage_slot.get_or_insert_with(|| b.slot(&format!("{p}.project"), out_base));
            let y = b.conv_in_slot(&format!("{p}.project"), d, slot, 1, 1, 0, !residual);
            x = if residual { b.add(&format!("{p}.add"), y, x) } else { y };
            in_base = out_base;
        }
    }
    let last = if mult > WidthMult::ONE { mult.scale(V2_LAST) } else { V2_LAST };
    let x = b.conv("conv_last", x, last, 1, 1, true);
    b.gap(x);
}
