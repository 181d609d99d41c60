//! The activation arena: every activation gets a byte range in one buffer, placed so that
//! tensors alive at the same time never overlap (greedy by size over liveness intervals).
//!
//! The planner is pure arithmetic over requests; which tensors may share memory (views,
//! in-place element-wise layers, concat inputs written straight into the concat output) is
//! decided by the caller and passed in as [`Placement::Within`] constraints.

use serde::{Deserialize, Serialize};

/// Arena offsets are multiples of this, so every tensor starts on a cache line and SIMD loads
/// of any element type are aligned.
pub const ARENA_ALIGN: usize = 64;

/// One activation that needs memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Size at the profile's largest shapes.
    pub bytes: usize,
    /// First step at which the tensor is written (layer index; network inputs use 0).
    pub first: usize,
    /// Last step at which it is read (the number of layers for network outputs).
    pub last: usize,
    pub placement: Placement,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Its own memory.
    Own,
    /// Inside request `of` at `offset` bytes: a view (Reshape), an in-place result or a concat
    /// input. Chains are followed; a cycle or an index out of range counts as `Own`.
    Within { of: usize, offset: usize },
}

/// Where each request lives and how big the arena is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryPlan {
    /// Byte offset of each request in the arena.
    pub offsets: Vec<usize>,
    pub arena_bytes: usize,
    /// The largest sum of bytes of buffers alive at one step: a lower bound for any arena
    /// holding these buffers.
    pub peak_live_bytes: usize,
}

/// Place the requests. Requests placed `Within` another extend its lifetime; buffers are
/// then placed largest first at the lowest offset that collides with no placed buffer alive
/// at the same time.
pub fn plan(requests: &[Request]) -> MemoryPlan {
    // Resolve every request to its root buffer and its offset within that buffer.
    let mut root = vec![0usize; requests.len()];
    let mut offset_in_root = vec![0usize; requests.len()];
    for i in 0..requests.len() {
        (root[i], offset_in_root[i]) = resolve(requests, i);
    }
    // A buffer spans its members' lifetimes and extents.
    let mut buffers: Vec<Option<Buffer>> = vec![None; requests.len()];
    for (i, r) in requests.iter().enumerate() {
        let end = offset_in_root[i] + r.bytes;
        let b = buffers[root[i]].get_or_insert(Buffer { bytes: 0, first: r.first, last: r.last });
        b.bytes = b.bytes.max(end);
        b.first = b.first.min(r.first);
        b.last = b.last.max(r.last);
    }
    let mut order: Vec<usize> = (0..requests.len()).filter(|&i| buffers[i].is_some()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(buffers[i].as_ref().map_or(0, |b| b.bytes)), i));
    let mut placed: Vec<(usize, usize, Buffer)> = Vec::new(); // (offset, padded size, buffer)
    let mut base = vec![0usize; requests.len()];
    let mut arena_bytes = 0;
    for i in order {
        let b = buffers[i].clone().expect("filtered above");
        let size = align_up(b.bytes);
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|(_, _, p)| p.first <= b.last && b.first <= p.last)
            .map(|(o, s, _)| (*o, *s))
            .collect();
        busy.sort_unstable();
        let mut offset = 0;
        for (o, s) in busy {
            if offset + size <= o {
                break;
            }
            offset = offset.max(o + s);
        }
        base[i] = offset;
        arena_bytes = arena_bytes.max(offset + size);
        placed.push((offset, size, b));
    }
    let offsets = (0..requests.len()).map(|i| base[root[i]] + offset_in_root[i]).collect();
    let peak_live_bytes = peak_live(buffers.iter().flatten());
    MemoryPlan { offsets, arena_bytes, peak_live_bytes }
}

/// The root buffer of request `i` and `i`'s offset in it.
fn resolve(requests: &[Request], i: usize) -> (usize, usize) {
    let (mut at, mut offset) = (i, 0);
    for _ in 0..requests.len() {
        match requests[at].placement {
            Placement::Within { of, offset: o } if of < requests.len() && of != at => {
                at = of;
                offset += o;
            }
            _ => return (at, offset),
        }
    }
    (i, 0) // a cycle
}

#[derive(Clone, Debug)]
struct Buffer {
    bytes: usize,
    first: usize,
    last: usize,
}

/// The largest total size of buffers alive at one step.
fn peak_live<'a>(buffers: impl Iterator<Item = &'a Buffer> + Clone) -> usize {
    let steps = buffers.clone().map(|b| b.last).max().unwrap_or(0);
    let mut delta = vec![0i64; steps + 2];
    for b in buffers {
        delta[b.first] += b.bytes as i64;
        delta[b.last + 1] -= b.bytes as i64;
    }
    let mut live = 0i64;
    let mut peak = 0i64;
    for d in delta {
        live += d;
        peak = peak.max(live);
    }
    peak as usize
}

pub fn align_up(n: usize) -> usize {
    n.div_ceil(ARENA_ALIGN) * ARENA_ALIGN
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(bytes: usize, first: usize, last: usize) -> Request {
        Request { bytes, first, last, placement: Placement::Own }
    }

    /// No two requests alive at the same step may overlap unless one is placed within the other.
    fn assert_disjoint(reqs: &[Request], plan: &MemoryPlan) {
        for i in 0..reqs.len() {
            for j in 0..i {
                let (a, b) = (&reqs[i], &reqs[j]);
                let related =
                    matches!(a.placement, Placement::Within { .. }) || matches!(b.placement, Placement::Within { .. });
                if related || a.first > b.last || b.first > a.last {
                    continue;
                }
                let (oa, ob) = (plan.offsets[i], plan.offsets[j]);
                assert!(oa + a.bytes <= ob || ob + b.bytes <= oa, "{i} and {j} overlap: {plan:?}");
            }
            assert!(plan.offsets[i] + reqs[i].bytes <= plan.arena_bytes);
            assert_eq!(plan.offsets[i] % ARENA_ALIGN, 0, "alignment");
        }
    }

    #[test]
    fn a_chain_reuses_memory() {
        // x0 → x1 → x2 → x3: only two neighbours are alive at once.
        let reqs: Vec<Request> = (0..4).map(|i| own(1024, i, i + 1)).collect();
        let plan = plan(&reqs);
        assert_disjoint(&reqs, &plan);
        assert_eq!(plan.arena_bytes, 2048);
        assert_eq!(plan.peak_live_bytes, 2048);
    }

    #[test]
    fn random_interval_sets_stay_disjoint_and_tight() {
        let mut seed = 12345u64;
        let mut next = |m: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as usize) % m
        };
        for _ in 0..200 {
            let n = 1 + next(30);
            let reqs: Vec<Request> = (0..n)
                .map(|_| {
                    let first = next(20);
                    own(64 * (1 + next(100)), first, first + next(6))
                })
                .collect();
            let plan = plan(&reqs);
            assert_disjoint(&reqs, &plan);
            assert!(plan.arena_bytes >= plan.peak_live_bytes);
        }
    }

    #[test]
    fn views_share_their_source() {
        // x (step 0..1), a Reshape view of x read until step 3, and y alive at steps 2..3.
        let reqs = vec![
            own(4096, 0, 1),
            Request { bytes: 4096, first: 1, last: 3, placement: Placement::Within { of: 0, offset: 0 } },
            own(4096, 2, 3),
        ];
        let plan = plan(&reqs);
        assert_eq!(plan.offsets[0], plan.offsets[1]);
        assert_ne!(plan.offsets[0], plan.offsets[2], "the view keeps its source alive");
        assert_eq!(plan.arena_bytes, 8192);
    }

    #[test]
    fn concat_inputs_live_inside_the_output() {
        let reqs = vec![
            own(3 * 1024, 2, 3),
            Request { bytes: 1024, first: 0, last: 2, placement: Placement::Within { of: 0, offset: 0 } },
            Request { bytes: 2048, first: 1, last: 2, placement: Placement::Within { of: 0, offset: 1024 } },
        ];
        let plan = plan(&reqs);
        assert_eq!(plan.offsets[1], plan.offsets[0]);
        assert_eq!(plan.offsets[2], plan.offsets[0] + 1024);
        assert_eq!(plan.arena_bytes, 3 * 1024);
    }
}
