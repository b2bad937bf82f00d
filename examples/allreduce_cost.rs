//! The cost of the gradient all-reduce by message size, for docs/distributed.md's extrapolation:
//! `mpirun -np 2 target/release/examples/allreduce_cost` prints, on rank 0, the mean time of an
//! f32 sum all-reduce (what `nce train` does once per step) for sizes from 4 kB to 16 MB.
use nce::train::dist;
use std::time::Instant;

fn main() {
    let _session = dist::init().expect("join the MPI job");
    let w = dist::world();
    if w.is_root() {
        println!("ranks {}: bytes, mean ms per all-reduce, algorithm bandwidth GB/s", w.size);
    }
    for kib in [4usize, 64, 256, 1024, 4096, 16384] {
        let mut buf = vec![1.0f32; kib * 256];
        let reps = (200 * 1024 / kib).clamp(10, 500);
        for _ in 0..3 {
            w.sum_f32(&mut buf);
        }
        let t0 = Instant::now();
        for _ in 0..reps {
            w.sum_f32(&mut buf);
        }
        let per = t0.elapsed().as_secs_f64() / reps as f64;
        if w.is_root() {
            println!("{:>10} {:>9.3} {:>7.2}", kib * 1024, per * 1e3, (kib * 1024) as f64 / per / 1e9);
        }
    }
}
