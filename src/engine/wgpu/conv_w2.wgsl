// Packed 2-bit conv (every conv but the first). Weights are re-laid out per tap: `wpt` words
// per tap, word j holding input channels 16j..16j+15 (code i in bits 2i..2i+1, u = (c + 3) / 2),
// so one weight word meets 4 activation words. `dot16` (dot_shift.wgsl or dot_dot4.wgsl)
// does the 16 products.

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = wg.x * TILE_P + lid;
    let co0 = wg.y * TILE_C;
    let valid = p < P.pixels;
    let hw = P.ho * P.wo;
    let b = p / hw;
    let oy = (p % hw) / P.wo;
    let ox = p % P.wo;
    let hi = P.hi != 0u;
    for (var n = 0u; n < TILE_C; n++) { acc[n] = 0; }
    for (var kc = 0u; kc < P.kwords; kc += CHUNK) {
        stage_weights(lid, co0, kc);
        workgroupBarrier();
        let kn = min(CHUNK, P.kwords - kc);
        for (var kk = 0u; kk < kn; kk++) {
            let kw = kc + kk;
            let j = kw % P.wpt;
            let base = tap_base(kw / P.wpt, b, oy, ox);
            if (valid && base >= 0) {
                var xv = vec4<u32>(0u);
                for (var q = 0u; q < 4u; q++) {
                    let c = 4u * j + q;
                    if (c < P.cw_in) { xv[q] = x[u32(base) + c]; }
                }
                if (any(xv != vec4<u32>(0u))) {
                    let sx = byte_sum(xv);
                    for (var n = 0u; n < TILE_C; n++) {
                        acc[n] += dot16(ws[n * CHUNK + kk], xv, sx, hi);
                    }
                }
            }
        }
        workgroupBarrier();
    }
    if (valid) { epilogue(p, b, oy, ox, co0); }
}

// Sum of the 16 activation bytes (≤ 4080).
fn byte_sum(xv: vec4<u32>) -> u32 {
    var s = 0u;
    for (var q = 0u; q < 4u; q++) {
        let pairs = (xv[q] & 0x00ff00ffu) + ((xv[q] >> 8u) & 0x00ff00ffu);
        s += (pairs & 0xffffu) + (pairs >> 16u);
    }
    return s;
}
