//! Loading a damaged plan allocates no more than the file's size: lengths read from the file
//! never size an allocation they are not backed by. One test in its own binary, so the counting
//! allocator sees only it.

use kiln_engine::plan::{plan_to_bytes, LoadedPlan, PlanExpectation, PlanHeader};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated (in total, and the largest single allocation) while `f` runs.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    ALLOCATED.store(0, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    let out = f();
    (out, ALLOCATED.load(Ordering::Relaxed), LARGEST.load(Ordering::Relaxed))
}

#[test]
fn damaged_plans_allocate_at_most_their_size() {
    let blobs: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; 100 * i + 3]).collect();
    let refs: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
    let header = PlanHeader::new("cpu", "dev", 7);
    let good = plan_to_bytes(&header, b"metadata bytes", &refs).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.plan");
    let expect = PlanExpectation::new("cpu", "dev");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Small allocations that do not depend on the file: the path, error messages, the header's
    // strings, the weight ranges.
    let slack = 16 << 10;
    for round in 0..400 {
        let mut b = good.clone();
        for _ in 0..1 + rand() % 4 {
            let at = (rand() % b.len() as u64) as usize;
            b[at] = if round % 2 == 0 { 0xff } else { rand() as u8 };
        }
        if round % 5 == 0 {
            b.truncate((rand() % b.len() as u64) as usize);
        }
        std::fs::write(&path, &b).unwrap();
        let (result, total, largest) = measure(|| LoadedPlan::open(&path, &expect).map(|p| p.weights_len()));
        assert!(total <= slack, "round {round}: open allocated {total} bytes ({result:?})");
        let (_, total, largest_mem) = measure(|| LoadedPlan::from_bytes(&b, &expect).map(|p| p.weights_len()));
        // from_bytes copies the plan once, into aligned storage.
        assert!(total <= b.len() + 64 + slack, "round {round}: from_bytes allocated {total} bytes");
        assert!(largest.max(largest_mem) <= b.len() + 64 + slack);
    }
    // A valid plan: open maps instead of copying.
    std::fs::write(&path, &good).unwrap();
    let (plan, total, _) = measure(|| LoadedPlan::open(&path, &expect).unwrap());
    assert_eq!(plan.weights_len(), 20);
    assert!(total <= slack, "open of a valid plan allocated {total} bytes");
}
