// 16 products of 2-bit codes with u8 activations by shift and mask. With c = 2u − 3,
// Σ c·x = 2·Σ u·x − 3·Σ x; `sx` = Σ x comes from the caller (once per activation words, not
// per channel). u32 arithmetic wraps like the int32 result it stands for.
fn dot16(w: u32, xv: vec4<u32>, sx: u32, hi: bool) -> i32 {
    var su = 0u;
    for (var q = 0u; q < 4u; q++) {
        let wb = w >> (8u * q);
        let xw = xv[q];
        su += (wb & 3u) * (xw & 0xffu) + ((wb >> 2u) & 3u) * ((xw >> 8u) & 0xffu)
            + ((wb >> 4u) & 3u) * ((xw >> 16u) & 0xffu) + ((wb >> 6u) & 3u) * (xw >> 24u);
    }
    return bitcast<i32>(2u * su - 3u * sx);
}
