//! Width slots derived from an imported graph: the dense convs whose outputs meet at an Add
//! (directly, or through pooling, depthwise convs and other adds) share one slot, since the
//! add joins their channels; depthwise convs follow their input and have none; the classifier
//! is fixed. Slots are numbered in the order of their first conv.

use crate::graph::imported::TemplateLayer;
use crate::graph::{Op, Src};

/// Assigns slots to the dense convs (marked `Some(_)` by the lowering) and returns the layers
/// and each slot's base width (`widths[i]` = the ONNX output channels of layer `i`'s conv).
pub fn assign(mut layers: Vec<TemplateLayer>, widths: &[usize]) -> (Vec<TemplateLayer>, Vec<usize>) {
    let n = layers.len();
    let mut parent: Vec<usize> = (0..n).collect();
    for i in 0..n {
        if let Op::Add { .. } = layers[i].op {
            let mut producers = Vec::new();
            for &s in &layers[i].inputs {
                producers.extend(dense_producers(&layers, s));
            }
            for w in producers.windows(2) {
                union(&mut parent, w[0], w[1]);
            }
        }
    }
    let mut slot_of_root: Vec<Option<usize>> = vec![None; n];
    let mut base = Vec::new();
    for i in 0..n {
        if layers[i].slot.is_none() || !matches!(layers[i].op, Op::Conv { .. }) {
            continue;
        }
        let r = find(&mut parent, i);
        let slot = *slot_of_root[r].get_or_insert_with(|| {
            base.push(widths[i]);
            base.len() - 1
        });
        layers[i].slot = Some(slot);
    }
    (layers, base)
}

/// The dense convs whose channels tensor `s` carries.
fn dense_producers(layers: &[TemplateLayer], s: Src) -> Vec<usize> {
    let mut out = Vec::new();
    let mut stack = vec![s];
    while let Some(s) = stack.pop() {
        let Src::Layer(j) = s else { continue };
        let l = &layers[j];
        match l.op {
            Op::Conv { .. } if l.slot.is_some() => out.push(j),
            Op::Add { .. } => stack.extend(l.inputs.iter().copied()),
            // Depthwise convs, pooling and subsampling keep their input's channels.
            _ => stack.extend(l.inputs.first().copied()),
        }
    }
    out
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        parent[ra.max(rb)] = ra.min(rb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(name: &str, input: Src, dense: bool) -> TemplateLayer {
        let op = Op::Conv { k: 1, stride: 1, pad: 0, groups: if dense { 1 } else { 8 }, relu: false, relu6: false };
        TemplateLayer { name: name.into(), op, inputs: vec![input], slot: dense.then_some(0) }
    }

    #[test]
    fn convs_meeting_at_an_add_share_a_slot_and_depthwise_follow() {
        let l = |i| Src::Layer(i);
        let layers = vec![
            conv("stem", Src::Input, true),                                                                          // 0
            conv("a", l(0), true),                                                                                   // 1
            conv("dw", l(1), false),                                                                                 // 2
            conv("b", l(2), true),                                                                                   // 3
            TemplateLayer { name: "add".into(), op: Op::Add { relu: true }, inputs: vec![l(3), l(0)], slot: None },  // 4
            conv("c", l(4), true),                                                                                   // 5
            TemplateLayer { name: "add2".into(), op: Op::Add { relu: true }, inputs: vec![l(5), l(4)], slot: None }, // 6
            conv("d", l(6), true),                                                                                   // 7
        ];
        let widths = [8, 16, 16, 8, 8, 8, 8, 32];
        let (layers, base) = assign(layers, &widths);
        let slots: Vec<Option<usize>> = layers.iter().map(|l| l.slot).collect();
        // stem, b and c meet at adds: one slot; a has its own; dw none; d its own.
        assert_eq!(slots, vec![Some(0), Some(1), None, Some(0), None, Some(0), None, Some(2)]);
        assert_eq!(base, vec![8, 16, 32]);
    }
}
