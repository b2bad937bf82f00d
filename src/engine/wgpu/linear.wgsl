// The classifier: logit_o = Σ_c w[o,c]·S_c + bias_o in 64-bit (as the reference, which rejects
// logits outside int32: the host does that check on the (lo, hi) pairs written here).

struct LinearParams { total: u32, c_in: u32, c_out: u32, _p0: u32 }

@group(0) @binding(0) var<uniform> P: LinearParams;
@group(0) @binding(1) var<storage, read> sums: array<i32>;
// [c_out][c_in] 8-bit codes widened to i32.
@group(0) @binding(2) var<storage, read> wl: array<i32>;
@group(0) @binding(3) var<storage, read> bias: array<i32>;
// (lo, hi) per logit.
@group(0) @binding(4) var<storage, read_write> logits: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= P.total) { return; }
    let b = i / P.c_out;
    let o = i % P.c_out;
    var v = i64_from_i32(bias[o]);
    for (var c = 0u; c < P.c_in; c++) {
        v = i64_add(v, i64_mul_i32(wl[o * P.c_in + c], sums[b * P.c_in + c]));
    }
    logits[2u * i] = v.lo;
    logits[2u * i + 1u] = v.hi;
}
