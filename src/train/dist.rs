//! Data parallelism over MPI (`docs/distributed.md`): the ranks of an `mpirun` or `srun` job
//! split every global batch, all-reduce their gradients as one flat buffer per step and take the
//! same optimiser step, so that the global batch, not the number of ranks, decides the run.
//!
//! [`init`] starts MPI when the process was launched as one of several ranks (and the `mpi`
//! feature is built in); every other process is a world of one, for which every collective here
//! is a no-op. Training and search ask [`world`] which rank they are.

use std::cell::RefCell;
use std::ops::Range;
use std::time::Instant;
use tch::{no_grad, Kind, Tensor};

/// Why the process could not join its MPI job.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("launched as one of {size} processes ({var} is set), but this nce was built without the `mpi` feature; rebuild with `cargo build --release --features mpi` or run one process")]
    NoMpi { size: usize, var: &'static str },
    #[error("MPI could not be initialised (was it initialised twice?)")]
    Init,
}

/// This process's place in the job: rank `rank` of `size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
}

#[cfg(feature = "mpi")]
thread_local! {
    static UNIVERSE: RefCell<Option<mpi::environment::Universe>> = const { RefCell::new(None) };
}
thread_local! {
    static WORLD: RefCell<World> = const { RefCell::new(World { rank: 0, size: 1 }) };
}

/// Keeps MPI initialised; dropping it finalises MPI (call [`World::abort`] instead on an error
/// that other ranks may not share: finalising waits for them).
pub struct Session {
    _private: (),
}

impl Drop for Session {
    fn drop(&mut self) {
        #[cfg(feature = "mpi")]
        UNIVERSE.with(|u| drop(u.borrow_mut().take()));
        WORLD.with(|w| *w.borrow_mut() = World { rank: 0, size: 1 });
    }
}

/// The launcher's process count, if this process was started as one of several ranks: Open
/// MPI's `mpirun` sets `OMPI_COMM_WORLD_SIZE`, PMI-2 launchers (`srun --mpi=pmi2`, MPICH's
/// Hydra) `PMI_SIZE`.
pub fn launched_size() -> Option<(usize, &'static str)> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .into_iter()
        .find_map(|var| std::env::var(var).ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 1).map(|n| (n, var)))
}

/// Whether a PMIx launcher (`srun --mpi=pmix`, PRRTE) started this process; it does not say
/// the job's size, which MPI then tells.
fn launched_by_pmix() -> bool {
    std::env::var_os("PMIX_RANK").is_some()
}

/// Joins the MPI job this process was launched in, if any (see the module documentation).
pub fn init() -> Result<Session, DistError> {
    let launched = launched_size();
    if launched.is_none() && !(cfg!(feature = "mpi") && launched_by_pmix()) {
        return Ok(Session { _private: () });
    }
    #[cfg(feature = "mpi")]
    {
        use mpi::traits::Communicator;
        let _ = launched;
        let universe = mpi::initialize().ok_or(DistError::Init)?;
        let w = universe.world();
        let world = World { rank: w.rank() as usize, size: w.size() as usize };
        UNIVERSE.with(|u| *u.borrow_mut() = Some(universe));
        WORLD.with(|x| *x.borrow_mut() = world);
        Ok(Session { _private: () })
    }
    #[cfg(not(feature = "mpi"))]
    match launched {
        Some((size, var)) => Err(DistError::NoMpi { size, var }),
        None => Ok(Session { _private: () }),
    }
}

/// This process's rank and the job's size (rank 0 of 1 outside an MPI job).
pub fn world() -> World {
    WORLD.with(|w| *w.borrow())
}

#[cfg(feature = "mpi")]
fn with_comm<T>(f: impl FnOnce(&mpi::topology::SimpleCommunicator) -> T) -> T {
    UNIVERSE.with(|u| {
        let u = u.borrow();
        let universe = u.as_ref().expect("a world of several ranks has MPI initialised");
        f(&universe.world())
    })
}

impl World {
    /// Rank 0, the one that writes checkpoints, logs and progress.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// This rank's contiguous share of `n` items: the first `n % size` ranks take one more.
    pub fn shard(&self, n: usize) -> Range<usize> {
        shard(n, self.rank, self.size)
    }

    /// Element-wise sum over all ranks, in place.
    pub fn sum_f32(&self, buf: &mut [f32]) {
        if self.size > 1 {
            all_reduce_sum(buf);
        }
    }

    /// Element-wise sum over all ranks, in place.
    pub fn sum_f64(&self, buf: &mut [f64]) {
        if self.size > 1 {
            all_reduce_sum(buf);
        }
    }

    /// Replaces `buf` on every rank by rank 0's.
    pub fn broadcast_f32(&self, buf: &mut [f32]) {
        if self.size > 1 {
            broadcast_from_root(buf);
        }
    }

    /// Ends every rank of the job now (MPI_Abort) with exit status `code`: how a rank that
    /// failed on its own stops the others, which would otherwise wait for it forever.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if self.size > 1 {
            with_comm(|c| {
                use mpi::traits::Communicator;
                c.abort(code)
            })
        }
        std::process::exit(code)
    }
}

#[cfg(feature = "mpi")]
fn all_reduce_sum<T: mpi::datatype::Equivalence + Clone>(buf: &mut [T]) {
    use mpi::traits::CommunicatorCollectives;
    let send = buf.to_vec();
    with_comm(|c| c.all_reduce_into(&send[..], buf, mpi::collective::SystemOperation::sum()));
}

#[cfg(feature = "mpi")]
fn broadcast_from_root(buf: &mut [f32]) {
    use mpi::traits::{Communicator, Root};
    with_comm(|c| c.process_at_rank(0).broadcast_into(buf));
}

/// Without MPI every world has one rank, and a collective over one rank changes nothing.
#[cfg(not(feature = "mpi"))]
fn all_reduce_sum<T>(_buf: &mut [T]) {}

#[cfg(not(feature = "mpi"))]
fn broadcast_from_root(_buf: &mut [f32]) {}

/// Rank `rank`'s contiguous share of `n` items split over `size` ranks.
pub fn shard(n: usize, rank: usize, size: usize) -> Range<usize> {
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// The rows of a global batch of `total` that part `part` of `parts` takes when the batch's
/// `groups` BatchNorm groups (a multiple of `parts`) are dealt out evenly over the parts: the
/// rows of its groups, so that any split into parts dividing `groups` computes the same. A part
/// is a rank's gradient shard: `parts` = ranks × `--grad-shards`, rank r owning parts
/// `r·shards .. (r+1)·shards`.
pub fn group_rows(total: usize, groups: usize, part: usize, parts: usize) -> Range<usize> {
    let mine = shard(groups, part, parts);
    if mine.is_empty() {
        return 0..0;
    }
    shard(total, mine.start, groups).start..shard(total, mine.end - 1, groups).end
}

/// The BatchNorm groups of a run asked for `want` over `parts` parts (ranks × gradient shards):
/// `want` when the parts divide it (each part normalises `want / parts` of them, and the run
/// computes what one process with `--bn-groups want` computes), otherwise one per part.
pub fn bn_groups(want: usize, parts: usize) -> usize {
    let want = want.max(1);
    if want.is_multiple_of(parts) {
        return want;
    }
    tracing::warn!(
        "BatchNorm statistics are per part of the batch ({parts} groups per batch: ranks × gradient shards), not the {want} of --bn-groups: pass --bn-groups {parts} (or a multiple) so that the run does not depend on how the batch is split"
    );
    parts
}

/// Time spent in the gradient all-reduce and its size, for the end-of-run summary.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ReduceStats {
    pub calls: u64,
    pub seconds: f64,
    pub bytes: usize,
}

impl ReduceStats {
    fn add(&mut self, started: Instant, bytes: usize) {
        self.calls += 1;
        self.seconds += started.elapsed().as_secs_f64();
        self.bytes = bytes;
    }

    /// One line for the log: calls, mean time and message size.
    pub fn summary(&self, steps_seconds: f64) -> String {
        let per = self.seconds / self.calls.max(1) as f64;
        format!(
            "all-reduce: {} calls of {:.2} MB, {:.2} ms each, {:.1}% of {:.1} s of steps",
            self.calls,
            self.bytes as f64 / 1e6,
            per * 1e3,
            100.0 * self.seconds / steps_seconds.max(1e-9),
            steps_seconds
        )
    }
}

/// Sums the gradients of `params` over all ranks and averages the `buffers` (BatchNorm running
/// statistics), weighting this rank's buffers by `weight` (its share of the global batch), in
/// one flat f32 all-reduce. A parameter without a gradient contributes zeros and stays without
/// one. Each rank scales its loss by its share of the global batch before the backward pass, so
/// the sum is the gradient of the global batch's mean loss.
pub(crate) fn reduce_step(world: &World, params: &[Tensor], buffers: &[Tensor], weight: f64, stats: &mut ReduceStats) {
    if world.size <= 1 {
        return;
    }
    let started = Instant::now();
    no_grad(|| {
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
        let mut parts: Vec<Tensor> = Vec::with_capacity(grads.len() + buffers.len());
        for (p, g) in params.iter().zip(&grads) {
            parts.push(if g.defined() { g.detach().reshape([-1]) } else { p.detach().zeros_like().reshape([-1]) });
        }
        for b in buffers {
            parts.push(b.detach().reshape([-1]) * weight);
        }
        let flat = Tensor::cat(&parts, 0).to_kind(Kind::Float).contiguous();
        let mut host = Vec::<f32>::try_from(&flat).expect("a contiguous f32 CPU tensor converts to a Vec");
        world.sum_f32(&mut host);
        let summed = Tensor::from_slice(&host);
        let mut offset = 0i64;
        let targets = grads.iter().map(|g| (g, g.defined())).chain(buffers.iter().map(|b| (b, true)));
        for (sizes, (dst, defined)) in params.iter().chain(buffers).map(|t| t.numel() as i64).zip(targets) {
            if defined {
                let src = summed.narrow(0, offset, sizes).view_as(dst).to_kind(dst.kind());
                dst.shallow_clone().copy_(&src);
            }
            offset += sizes;
        }
        stats.add(started, host.len() * 4);
    });
}

/// Sets every tensor to rank 0's values (the start of a run: every rank must hold the same
/// weights before the first step, whatever their initialisation did).
pub(crate) fn broadcast_tensors(world: &World, tensors: &[Tensor]) {
    if world.size <= 1 || tensors.is_empty() {
        return;
    }
    no_grad(|| {
        let parts: Vec<Tensor> = tensors.iter().map(|t| t.detach().reshape([-1]).to_kind(Kind::Float)).collect();
        let flat = Tensor::cat(&parts, 0).contiguous();
        let mut host = Vec::<f32>::try_from(&flat).expect("a contiguous f32 CPU tensor converts to a Vec");
        world.broadcast_f32(&mut host);
        let all = Tensor::from_slice(&host);
        let mut offset = 0i64;
        for t in tensors {
            let n = t.numel() as i64;
            t.shallow_clone().copy_(&all.narrow(0, offset, n).view_as(t).to_kind(t.kind()));
            offset += n;
        }
    });
}

/// The BatchNorm running statistics of a step split into gradient shards: every shard starts
/// from the step's statistics, and the step ends with their sum weighted by the shards' shares
/// (summed in shard order, as an all-reduce over that many ranks sums them). Inactive with one
/// shard: the forward pass updates the statistics itself.
pub(crate) struct ShardStats {
    start: Vec<Tensor>,
    sum: Option<Vec<Tensor>>,
}

impl ShardStats {
    pub(crate) fn new(buffers: &[Tensor], shards: usize) -> ShardStats {
        let start = if shards > 1 { no_grad(|| buffers.iter().map(|b| b.detach().copy()).collect()) } else { Vec::new() };
        ShardStats { start, sum: None }
    }

    pub(crate) fn start_shard(&self, buffers: &[Tensor]) {
        no_grad(|| {
            for (b, s) in buffers.iter().zip(&self.start) {
                b.shallow_clone().copy_(s);
            }
        });
    }

    pub(crate) fn end_shard(&mut self, buffers: &[Tensor], share: f64) {
        if self.start.is_empty() {
            return;
        }
        no_grad(|| {
            let weighted = buffers.iter().map(|b| b.detach().reshape([-1]) * share);
            self.sum = Some(match self.sum.take() {
                None => weighted.collect(),
                Some(acc) => acc.iter().zip(weighted).map(|(a, w)| a + w).collect(),
            });
        });
    }

    /// Sets the buffers to the weighted sum; whether there was one (several shards).
    pub(crate) fn finish(self, buffers: &[Tensor]) -> bool {
        let Some(sum) = self.sum else { return false };
        no_grad(|| {
            for (b, s) in buffers.iter().zip(&sum) {
                b.shallow_clone().copy_(&s.view_as(b));
            }
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_rows_follow_the_groups_whatever_the_split() {
        // 10 rows in 4 groups: 3, 3, 2, 2. Two parts take groups {0, 1} and {2, 3}.
        assert_eq!(group_rows(10, 4, 0, 2), 0..6);
        assert_eq!(group_rows(10, 4, 1, 2), 6..10);
        assert_eq!(group_rows(10, 4, 3, 4), 8..10);
        assert_eq!(group_rows(10, 2, 0, 1), 0..10);
        assert_eq!(bn_groups(4, 2), 4);
        assert_eq!(bn_groups(3, 2), 2);
        assert_eq!(bn_groups(0, 1), 1);
    }

    #[test]
    fn shards_cover_every_item_once_in_order() {
        for n in [0, 1, 5, 64, 127] {
            for size in 1..=4 {
                let ranges: Vec<Range<usize>> = (0..size).map(|r| shard(n, r, size)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[size - 1].end, n);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() <= w[1].len() + 1);
                }
            }
        }
    }
}
