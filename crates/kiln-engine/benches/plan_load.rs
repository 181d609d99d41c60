//! Open + verify time of a ~100 MB plan (a ResNet-50's worth of f32 weights), warm page cache.
//! Target: ≤ 50 ms. Run with `cargo bench -p kiln-engine --bench plan_load`, or in the test
//! profile with `cargo test -p kiln-engine --bench plan_load`.

use kiln_engine::plan::{encode, write_plan, LoadedPlan, PlanExpectation, PlanHeader};
use std::time::{Duration, Instant};

fn main() {
    // ~320 blobs like ResNet-50's conv weights, biases and BN params, summing to ~100 MB.
    let sizes: Vec<usize> =
        (0..320).map(|i| if i % 2 == 0 { 4 * (i * 980 + 256) } else { 4 * 64 * (i % 7 + 1) }).collect();
    let total: usize = sizes.iter().sum();
    let blobs: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| vec![(i % 251) as u8; n]).collect();
    let refs: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
    let meta = encode(&(0..2000u32).map(|i| format!("layer{i}")).collect::<Vec<_>>()).unwrap();

    let dir = std::env::temp_dir().join(format!("kiln-plan-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("resnet50-sized.plan");
    let header = PlanHeader::new("cpu", "bench-device", 42);
    let t = Instant::now();
    write_plan(&path, &header, &meta, &refs).unwrap();
    let write = t.elapsed();
    drop(blobs);
    let expect = PlanExpectation::new("cpu", "bench-device");

    let mut times: Vec<Duration> = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        let plan = LoadedPlan::open(&path, &expect).unwrap();
        times.push(t.elapsed());
        assert_eq!(plan.weights_len(), sizes.len());
        assert!(plan.weights().is_mapped());
    }
    times.sort();
    let plan = LoadedPlan::open(&path, &expect).unwrap();
    // Touching a weight after load costs nothing more (already verified and mapped).
    let t = Instant::now();
    let sum: u64 = (0..plan.weights_len()).map(|i| plan.weight(i).unwrap()[0] as u64).sum();
    let touch = t.elapsed();
    let t = Instant::now();
    let h = xxhash_rust::xxh3::xxh3_64(plan.weights().weight(plan.weights_len() - 2).unwrap());
    let big = plan.weights().weight(plan.weights_len() - 2).unwrap().len();
    let hash = t.elapsed();
    println!(
        "plan_load: {:.1} MB plan ({} blobs): write {:.1} ms; open+verify min {:.2} ms, median {:.2} ms, max {:.2} ms",
        plan.file_len() as f64 / 1e6,
        sizes.len(),
        write.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
    println!(
        "plan_load: xxh3 alone {:.1} GB/s (mapped, {} KB blob); touching every weight {:.1} µs (checksum {h:x}, {sum})",
        big as f64 / hash.as_secs_f64() / 1e9,
        big / 1000,
        touch.as_secs_f64() * 1e6
    );
    assert_eq!(total, plan.weights().total_bytes());
    // For comparison: one thread hashing the whole mapped file (what verification would cost
    // without the chunked, parallel checksum).
    let mut single = Duration::MAX;
    for _ in 0..5 {
        let f = std::fs::File::open(&path).unwrap();
        let m = unsafe { memmap2::MmapOptions::new().map(&f) }.unwrap();
        let t = Instant::now();
        std::hint::black_box(xxhash_rust::xxh3::xxh3_64(&m));
        single = single.min(t.elapsed());
    }
    println!(
        "plan_load: one thread hashing the freshly mapped file: {:.2} ms; {} threads available",
        single.as_secs_f64() * 1e3,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    drop(plan);
    std::fs::remove_dir_all(&dir).unwrap();
}
