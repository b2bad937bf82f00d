//! ResNet layer graphs: CIFAR-style ResNet-20/32/56 (He et al. 2016, option-A shortcuts) and
//! ImageNet ResNet-18/50 (torchvision layout, stride on the 3×3 conv; inputs under 64 pixels a
//! side get a CIFAR stem), for any width vector.

use super::builder::Builder;
use super::{Op, Src};

pub(super) fn cifar(b: &mut Builder, n: usize) {
    let mut x = b.conv("conv1", Src::Input, 16, 3, 1, true);
    for (s, &w) in [16usize, 32, 64].iter().enumerate() {
        for i in 0..n {
            let stride = if s > 0 && i == 0 { 2 } else { 1 };
            let p = format!("layer{}.{}", s + 1, i);
            let a = b.conv(&format!("{p}.conv_a"), x, w, 3, stride, true);
            let c = b.conv(&format!("{p}.conv_b"), a, w, 3, 1, false);
            let sc = if stride == 1 { x } else { b.subsample(&format!("{p}.shortcut"), x, stride) };
            x = b.add(&format!("{p}.add"), c, sc);
        }
    }
    b.gap(x);
}

/// Inputs smaller than this on a side get the CIFAR stem in ResNet-18/50.
pub const SMALL_INPUT: usize = 64;

pub(super) fn imagenet(b: &mut Builder, blocks: &[usize], bottleneck: bool) {
    // The ImageNet stem (7×7 stride 2, max-pool: 4× smaller) would leave a 28×28 or 32×32
    // image at 1×1 by the last stage; small inputs get a 3×3 stride-1 conv and no pool, as
    // ResNet-18 is usually run on CIFAR.
    let mut x = if b.input.h.min(b.input.w) < SMALL_INPUT {
        b.conv_k("conv1", Src::Input, 64, 3, 1, 1, true)
    } else {
        let c1 = b.conv_k("conv1", Src::Input, 64, 7, 2, 3, true);
        b.push("maxpool", Op::MaxPool { k: 3, stride: 2, pad: 1 }, vec![c1], None, None)
    };
    let mut in_base = 64;
    for (s, &n) in blocks.iter().enumerate() {
        let w = 64 << s;
        let out_base = if bottleneck { w * 4 } else { w };
        for i in 0..n {
            let stride = if s > 0 && i == 0 { 2 } else { 1 };
            let p = format!("layer{}.{}", s + 1, i);
            let last = if bottleneck {
                let a = b.conv(&format!("{p}.conv_a"), x, w, 1, 1, true);
                let c = b.conv(&format!("{p}.conv_b"), a, w, 3, stride, true);
                b.conv(&format!("{p}.conv_c"), c, out_base, 1, 1, false)
            } else {
                let a = b.conv(&format!("{p}.conv_a"), x, w, 3, stride, true);
                b.conv(&format!("{p}.conv_b"), a, w, 3, 1, false)
            };
            let sc =
                if stride != 1 || in_base != out_base { b.conv_k(&format!("{p}.downsample"), x, out_base, 1, stride, 0, false) } else { x };
            x = b.add(&format!("{p}.add"), last, sc);
            in_base = out_base;
        }
    }
    b.gap(x);
}
