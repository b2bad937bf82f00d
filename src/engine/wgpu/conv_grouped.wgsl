// Grouped convs (groups > 1; depthwise when groups = c_in = c_out), 2- or 8-bit weights,
// computed directly as engine::cpu::reference::conv2d_pixels does. The dense kernels' grid and
// epilogue: one invocation per output pixel and TILE_C channels; output channel o reads only
// the cg = c_in/groups input channels of its group, g·cg.. with g = o / group_out.
//
// Weights: `kwords` words per output channel over its k·k·cg codes in (ky, kx, ci) order,
// 16 codes u = (c + 3) / 2 per word (code i in bits 2i..2i+1) when `w2`, else 4 i8 codes per
// word (code i in byte i). Products are plain i32 (x ≤ 255, |c| ≤ 128): no `hi` split.

// Code i of output channel o's weights.
fn weight_code(o: u32, i: u32) -> i32 {
    if (P.w2 != 0u) {
        let u = (wt[o * P.kwords + i / 16u] >> (2u * (i % 16u))) & 3u;
        return 2 * i32(u) - 3;
    }
    return extractBits(bitcast<i32>(wt[o * P.kwords + i / 4u]), 8u * (i % 4u), 8u);
}

// Activation code of channel c at input word base `base`.
fn act(base: u32, c: u32) -> i32 {
    return i32((x[base + c / 4u] >> (8u * (c % 4u))) & 0xffu);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = wg.x * TILE_P + lid;
    // No barriers in this kernel: invocations past the last pixel may leave at once.
    if (p >= P.pixels) { return; }
    let co0 = wg.y * TILE_C;
    let hw = P.ho * P.wo;
    let b = p / hw;
    let oy = (p % hw) / P.wo;
    let ox = p % P.wo;
    let taps = P.k * P.k;
    for (var n = 0u; n < TILE_C; n++) {
        let o = co0 + n;
        var s = 0;
        if (o < P.c_conv) {
            let c0 = o / P.group_out * P.cg;
            for (var t = 0u; t < taps; t++) {
                // Taps in the zero padding contribute nothing.
                let base = tap_base(t, b, oy, ox);
                if (base < 0) { continue; }
                for (var ci = 0u; ci < P.cg; ci++) {
                    s += act(u32(base), c0 + ci) * weight_code(o, t * P.cg + ci);
                }
            }
        }
        acc[n] = s;
    }
    epilogue(p, b, oy, ox, co0);
}
