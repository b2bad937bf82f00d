// 16 products via dot4I8Packed: each byte of 4 codes is unpacked to 4 signed bytes 2u − 3.
// dot4I8Packed reads the activations as i8, which is exact for codes ≤ 127; for layers whose
// input may exceed 127 (`hi`), x = (x & 0x7f) + 128·(x >> 7) takes two dot products.

// Four 2-bit codes (bits 0..8) to four i8 bytes 2u − 3: spread to bytes, double, then
// subtract 3 per byte without borrows crossing bytes (set bit 7, subtract, flip bit 7 back).
fn codes_i8x4(bits: u32) -> u32 {
    let spread = (bits & 3u) | ((bits & 0xcu) << 6u) | ((bits & 0x30u) << 12u) | ((bits & 0xc0u) << 18u);
    return (((spread << 1u) | 0x80808080u) - 0x03030303u) ^ 0x80808080u;
}

fn dot16(w: u32, xv: vec4<u32>, sx: u32, hi: bool) -> i32 {
    var s = 0;
    for (var q = 0u; q < 4u; q++) {
        let c = codes_i8x4(w >> (8u * q));
        let xw = xv[q];
        if (hi) {
            s += dot4I8Packed(c, xw & 0x7f7f7f7fu) + 128 * dot4I8Packed(c, (xw >> 7u) & 0x01010101u);
        } else {
            s += dot4I8Packed(c, xw);
        }
    }
    return s;
}
