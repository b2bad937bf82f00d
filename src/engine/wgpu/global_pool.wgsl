// Global average pooling as exact per-channel sums S_c = Σ_hw q (no division), one invocation
// per (image, channel). The host checks h·w·255 < 2^31 first, as the reference does.

struct GapParams { total: u32, hw: u32, c: u32, cw: u32 }

@group(0) @binding(0) var<uniform> P: GapParams;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> sums: array<i32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= P.total) { return; }
    let b = i / P.c;
    let ch = i % P.c;
    let shift = 8u * (ch % 4u);
    var s = 0u;
    for (var p = 0u; p < P.hw; p++) {
        s += (x[(b * P.hw + p) * P.cw + ch / 4u] >> shift) & 0xffu;
    }
    sums[i] = bitcast<i32>(s);
}
