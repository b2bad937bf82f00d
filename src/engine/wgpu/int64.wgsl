// Signed 64-bit integers as (lo, hi) u32 pairs, and the requantisation epilogue built on them.
// WGSL has neither i64 nor f64, but the contract (docs/quantization.md, "Integer form") is
// int64 arithmetic with an arithmetic shift: these helpers reproduce it exactly, wrapping
// modulo 2^64 like two's complement (the reference never leaves the int64 range).

struct I64 { lo: u32, hi: u32 }

fn i64_from_i32(v: i32) -> I64 {
    return I64(bitcast<u32>(v), select(0u, 0xffffffffu, v < 0));
}

fn i64_add(a: I64, b: I64) -> I64 {
    let lo = a.lo + b.lo;
    return I64(lo, a.hi + b.hi + select(0u, 1u, lo < a.lo));
}

// High half of the unsigned 32x32 -> 64 product, from 16-bit pieces (no partial sum overflows).
fn mulhi_u32(a: u32, b: u32) -> u32 {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let mid = ((a0 * b0) >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    return a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
}

// The exact signed product: the unsigned product minus 2^32·b for a < 0 and 2^32·a for b < 0.
fn i64_mul_i32(a: i32, b: i32) -> I64 {
    let ua = bitcast<u32>(a);
    let ub = bitcast<u32>(b);
    var hi = mulhi_u32(ua, ub);
    if (a < 0) { hi = hi - ub; }
    if (b < 0) { hi = hi - ua; }
    return I64(ua * ub, hi);
}

// Arithmetic right shift by s in 0..=63 (WGSL takes shift amounts modulo 32, so 0 and >= 32
// are separate cases).
fn i64_shr(v: I64, s: u32) -> I64 {
    if (s == 0u) { return v; }
    let h = bitcast<i32>(v.hi);
    if (s < 32u) {
        return I64((v.lo >> s) | (v.hi << (32u - s)), bitcast<u32>(h >> s));
    }
    return I64(bitcast<u32>(h >> (s - 32u)), bitcast<u32>(h >> 31u));
}

// 2^s for s in 0..=62.
fn i64_pow2(s: u32) -> I64 {
    if (s < 32u) { return I64(1u << s, 0u); }
    return I64(0u, 1u << (s - 32u));
}

// clamp((acc·m + q_sc·r + b + 2^(shift−1)) >> shift, 0, qmax), as engine::cpu::reference::requantize.
fn requantize(acc: i32, m: i32, b: i32, q_sc: u32, r: i32, shift: u32, qmax: u32) -> u32 {
    var v = i64_add(i64_mul_i32(acc, m), i64_mul_i32(bitcast<i32>(q_sc), r));
    v = i64_add(v, i64_from_i32(b));
    if (shift > 0u) { v = i64_add(v, i64_pow2(shift - 1u)); }
    let q = i64_shr(v, shift);
    if (bitcast<i32>(q.hi) < 0) { return 0u; }
    if (q.hi > 0u || q.lo > qmax) { return qmax; }
    return q.lo;
}
