// Flat invocation index of the 1-D kernels, dispatched as a 2-D grid of 64-wide workgroups so
// that large batches stay under the 65,535 workgroups-per-dimension limit.
fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 64u + lid;
}
