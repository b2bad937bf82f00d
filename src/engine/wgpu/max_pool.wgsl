// Max pooling over the valid positions of each window (padding never wins), one invocation per
// output word (4 channels, byte-wise max; padding channels stay 0).

struct PoolParams {
    total: u32, h: u32, w: u32, cw: u32,
    ho: u32, wo: u32, k: u32, stride: u32,
    pad: u32, _p0: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> P: PoolParams;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= P.total) { return; }
    let cwi = i % P.cw;
    let pix = i / P.cw;
    let hw = P.ho * P.wo;
    let b = pix / hw;
    let oy = (pix % hw) / P.wo;
    let ox = pix % P.wo;
    var best = vec4<u32>(0u);
    for (var ky = 0u; ky < P.k; ky++) {
        let iy = i32(oy * P.stride + ky) - i32(P.pad);
        if (iy < 0 || u32(iy) >= P.h) { continue; }
        for (var kx = 0u; kx < P.k; kx++) {
            let ix = i32(ox * P.stride + kx) - i32(P.pad);
            if (ix < 0 || u32(ix) >= P.w) { continue; }
            let v = x[((b * P.h + u32(iy)) * P.w + u32(ix)) * P.cw + cwi];
            best = max(best, (vec4<u32>(v) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu));
        }
    }
    y[i] = best.x | (best.y << 8u) | (best.z << 16u) | (best.w << 24u);
}
