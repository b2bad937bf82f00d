// 8-bit conv (the first layer, reading 8-bit pixels). Weights are re-laid out per tap with the
// activations' packing: `wpt = cw_in` words per tap, 4 i8 codes per word (channels padded with 0).

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = wg.x * TILE_P + lid;
    let co0 = wg.y * TILE_C;
    let valid = p < P.pixels;
    let hw = P.ho * P.wo;
    let b = p / hw;
    let oy = (p % hw) / P.wo;
    let ox = p % P.wo;
    for (var n = 0u; n < TILE_C; n++) { acc[n] = 0; }
    for (var kc = 0u; kc < P.kwords; kc += CHUNK) {
        stage_weights(lid, co0, kc);
        workgroupBarrier();
        let kn = min(CHUNK, P.kwords - kc);
        for (var kk = 0u; kk < kn; kk++) {
            let kw = kc + kk;
            let base = tap_base(kw / P.wpt, b, oy, ox);
            if (valid && base >= 0) {
                let xw = x[u32(base) + kw % P.wpt];
                if (xw != 0u) {
                    for (var n = 0u; n < TILE_C; n++) {
                        let w = bitcast<i32>(ws[n * CHUNK + kk]);
                        var s = 0;
                        for (var i = 0u; i < 4u; i++) {
                            s += extractBits(w, 8u * i, 8u) * i32((xw >> (8u * i)) & 0xffu);
                        }
                        acc[n] += s;
                    }
                }
            }
        }
        workgroupBarrier();
    }
    if (valid) { epilogue(p, b, oy, ox, co0); }
}
