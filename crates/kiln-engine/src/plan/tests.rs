//! Plan files: round trips, and every kind of damage refused with the error that says which.

use super::format::{FIXED_LEN, SECTION_ENTRY_LEN};
use super::*;
use kiln_ir::{known_shape, Attribute, Attributes, DType, Dim, Network, Tensor, TensorType, ValueType};
use std::sync::Arc;

fn expect() -> PlanExpectation {
    PlanExpectation::new("cpu", "test-device avx2")
}

fn header() -> PlanHeader {
    PlanHeader::new("cpu", "test-device avx2", 0xdead_beef_cafe_f00d)
}

/// Blobs of awkward sizes (empty, below, at and past the alignment), with distinct contents.
fn blobs() -> Vec<Vec<u8>> {
    [0usize, 1, 63, 64, 65, 1000, 4099, 12]
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (j * 31 + i * 7 + 1) as u8).collect())
        .collect()
}

fn refs(b: &[Vec<u8>]) -> Vec<&[u8]> {
    b.iter().map(|v| v.as_slice()).collect()
}

fn sample_bytes() -> Vec<u8> {
    let meta = encode(&("engine metadata", vec![1u32, 2, 3])).unwrap();
    plan_to_bytes(&header(), &meta, &refs(&blobs())).unwrap()
}

fn load(bytes: &[u8]) -> Result<LoadedPlan, PlanError> {
    LoadedPlan::from_bytes(bytes, &expect())
}

fn header_end(bytes: &[u8]) -> usize {
    FIXED_LEN + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize
}

/// Byte offset of field `at` (0 kind, 8 offset, 16 length, 24 checksum) of section `i`'s entry.
fn entry(bytes: &[u8], i: usize, at: usize) -> usize {
    header_end(bytes) - 3 * SECTION_ENTRY_LEN + i * SECTION_ENTRY_LEN + at
}

fn get_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn set_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn section_range(bytes: &[u8], i: usize) -> std::ops::Range<usize> {
    let off = get_u64(bytes, entry(bytes, i, 8)) as usize;
    off..off + get_u64(bytes, entry(bytes, i, 16)) as usize
}

/// Recompute section `i`'s checksum and then the header's, so a structural change gets past
/// the checksums and reaches the structural checks.
fn reseal(bytes: &mut [u8], section: Option<usize>) {
    if let Some(i) = section {
        let r = section_range(bytes, i);
        let sum = format::section_checksum(&bytes[r]);
        let at = entry(bytes, i, 24);
        set_u64(bytes, at, sum);
    }
    let end = header_end(bytes);
    let sum = format::header_checksum(bytes, &bytes[FIXED_LEN..end]);
    set_u64(bytes, 24, sum);
}

fn corrupt_message(r: Result<LoadedPlan, PlanError>) -> String {
    match r {
        Err(PlanError::Corrupt { message, .. }) => message,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn round_trip_in_memory() {
    let b = blobs();
    let meta = encode(&("engine metadata", vec![1u32, 2, 3])).unwrap();
    let bytes = plan_to_bytes(&header(), &meta, &refs(&b)).unwrap();
    let plan = load(&bytes).unwrap();
    assert_eq!(plan.header(), &header());
    assert_eq!(plan.metadata(), &meta[..]);
    let decoded: (String, Vec<u32>) = plan.decode_metadata(DEFAULT_METADATA_LIMIT).unwrap();
    assert_eq!(decoded, ("engine metadata".to_string(), vec![1, 2, 3]));
    assert_eq!(plan.weights_len(), b.len());
    assert_eq!(plan.file_len(), bytes.len());
    for (i, blob) in b.iter().enumerate() {
        let w = plan.weight(i).unwrap();
        assert_eq!(w, &blob[..], "weight {i}");
        assert_eq!(w.as_ptr() as usize % WEIGHT_ALIGN, 0, "weight {i} is not aligned");
    }
    assert!(!plan.weights().is_mapped());
    assert!(matches!(plan.weight(b.len()), Err(PlanError::Corrupt { .. })));
    assert_eq!(plan.path(), "<memory>");
}

#[test]
fn round_trip_through_a_mapped_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.plan");
    let b = blobs();
    let floats: Vec<u8> = (0..100).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    let mut weights = refs(&b);
    weights.push(&floats);
    write_plan(&path, &header(), b"meta", &weights).unwrap();
    // Nothing but the plan is left in the directory (the temporary file was renamed).
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["model.plan"]);

    let plan = LoadedPlan::open(&path, &expect()).unwrap();
    assert!(plan.weights().is_mapped());
    assert_eq!(plan.metadata(), b"meta");
    assert_eq!(plan.path(), path.display().to_string());
    for (i, w) in weights.iter().enumerate() {
        let got = plan.weight(i).unwrap();
        assert_eq!(got, *w);
        assert_eq!(got.as_ptr() as usize % WEIGHT_ALIGN, 0, "weight {i} is not aligned");
    }
    let last = weights.len() - 1;
    let typed: &[f32] = plan.weights().typed(last).unwrap();
    assert_eq!(typed.len(), 100);
    assert_eq!(typed[3], 1.5);
    // Views outlive the plan and can move to other threads.
    let view = plan.weights().view(last).unwrap();
    let store = plan.weights().clone();
    drop(plan);
    let sum = std::thread::spawn(move || view.typed::<f32>().unwrap().iter().sum::<f32>()).join().unwrap();
    assert_eq!(sum, (0..100).map(|i| i as f32 * 0.5).sum::<f32>());
    assert_eq!(store.weight(2).unwrap(), &b[2][..]);

    // Rewriting replaces the file; the old plan stays readable through its mapping.
    write_plan(&path, &PlanHeader::new("cpu", "test-device avx2", 1), b"new", &[]).unwrap();
    assert_eq!(store.weight(2).unwrap(), &b[2][..]);
    let plan = LoadedPlan::open(&path, &expect()).unwrap();
    assert_eq!((plan.metadata(), plan.weights_len(), plan.header().config_hash), (&b"new"[..], 0, 1));
}

#[test]
fn empty_plan_round_trips() {
    let bytes = plan_to_bytes(&header(), &[], &[]).unwrap();
    let plan = load(&bytes).unwrap();
    assert_eq!((plan.metadata().len(), plan.weights_len()), (0, 0));
}

/// `If` branch reading `x` from the enclosing graph.
fn branch(name: &str, k: f32) -> Network {
    let mut g = Network::new(name);
    let x = g.add_captured("x", Some(ValueType::tensor(DType::F32, known_shape(&[2, 3])))).unwrap();
    let c = g.add_constant(&format!("{name}_k"), Tensor::scalar(k)).unwrap();
    let out = format!("{name}_y");
    let y = g.add_layer(&format!("{name}_add"), "Add", Attributes::new(), &[Some(x), Some(c)], &[&out]).unwrap();
    g.mark_output(y[0].unwrap()).unwrap();
    g
}

fn sample_network() -> Network {
    let mut net = Network::new("sample");
    let x = net.add_input("x", ValueType::tensor(DType::F32, vec![Dim::Known(2), Dim::Known(3)])).unwrap();
    let cond = net.add_input("cond", ValueType::tensor(DType::Bool, vec![])).unwrap();
    net.add_input("s", ValueType::tensor(DType::F16, vec![Dim::Symbol("batch".into()), Dim::Unknown])).unwrap();
    let w = Tensor::from_vec(vec![2, 3], vec![1.0f32, -2.0, 3.5, 0.0, 1e-3, 7.0]).unwrap();
    let w = net.add_constant("w", w).unwrap();
    let opt_seq = ValueType::Sequence(Box::new(ValueType::Optional(Box::new(ValueType::Tensor(
        TensorType::unranked(DType::U16),
    )))));
    let every_kind = Attributes::new()
        .with("f", 0.5f32)
        .with("i", -7i64)
        .with("s", "text")
        .with("t", Tensor::from_vec(vec![2], vec![1i64, 2]).unwrap())
        .with("g", branch("attr_graph", 1.0))
        .with("ty", Attribute::Type(opt_seq))
        .with("fs", vec![1.0f32, 2.0])
        .with("is", vec![3i64, -4])
        .with("ss", Attribute::Strings(vec!["a".into(), String::new()]))
        .with(
            "ts",
            Attribute::Tensors(vec![
                Tensor::from_vec(vec![1], vec![true]).unwrap(),
                Tensor::from_vec(vec![2, 0], Vec::<u8>::new()).unwrap(),
            ]),
        )
        .with("gs", Attribute::Graphs(vec![Arc::new(branch("gs0", 2.0)), Arc::new(branch("gs1", 3.0))]));
    let y = net.add_layer("add", "Add", every_kind, &[Some(x), Some(w)], &["y"]).unwrap()[0].unwrap();
    let attrs = Attributes::new().with("then_branch", branch("then", 1.0)).with("else_branch", branch("else", -1.0));
    let z = net.add_layer_with_implicit("if", "If", attrs, &[Some(cond)], &["z"], vec![y]).unwrap()[0].unwrap();
    net.mark_output(z).unwrap();
    net
}

#[test]
fn network_round_trips_through_a_plan() {
    let net = sample_network();
    let meta = encode(&net).unwrap();
    let bytes = plan_to_bytes(&header(), &meta, &[]).unwrap();
    let plan = load(&bytes).unwrap();
    let back: Network = plan.decode_metadata(DEFAULT_METADATA_LIMIT).unwrap();
    assert_eq!(back, net);
    back.validate().unwrap();
}

#[test]
fn metadata_decoding_is_bounded_and_checked() {
    let net = sample_network();
    let meta = encode(&net).unwrap();
    assert!(matches!(decode::<Network>(&meta, meta.len() - 1), Err(PlanError::Corrupt { .. })));
    let mut trailing = meta.clone();
    trailing.push(0);
    let err = decode::<Network>(&trailing, usize::MAX).unwrap_err();
    assert!(err.to_string().contains("1 bytes after the metadata"), "{err}");
    // A network whose output id points nowhere: the last byte of the encoding is the last
    // output id (a one-byte varint here).
    let mut bad = meta.clone();
    *bad.last_mut().unwrap() = 99;
    let err = decode::<Network>(&bad, usize::MAX).unwrap_err();
    assert!(err.to_string().contains("output tensor id 99 out of range"), "{err}");
    // Every truncation of the encoding fails cleanly.
    for cut in 0..meta.len() {
        assert!(decode::<Network>(&meta[..cut], usize::MAX).is_err(), "cut at {cut}");
    }
}

#[test]
fn truncated_at_every_offset() {
    let bytes = sample_bytes();
    for cut in 0..bytes.len() {
        match load(&bytes[..cut]) {
            Err(PlanError::Truncated { expected, actual, .. }) => {
                assert_eq!(actual, cut as u64);
                assert!(expected > actual, "cut {cut}: expected {expected}");
                if cut >= header_end(&bytes) {
                    assert_eq!(expected, bytes.len() as u64, "cut {cut}");
                }
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn truncated_file_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = sample_bytes();
    for cut in [0, 5, 20, 100, bytes.len() - 1] {
        let path = dir.path().join(format!("cut{cut}.plan"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = LoadedPlan::open(&path, &expect()).unwrap_err();
        assert!(matches!(err, PlanError::Truncated { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }
}

#[test]
fn flipped_byte_in_each_section_fails_its_checksum() {
    let bytes = sample_bytes();
    let cases = [
        ("header", FIXED_LEN + 2),            // inside the kiln version string
        ("header", entry(&bytes, 2, 24) + 3), // a section checksum
        ("header", 25),                       // the header checksum itself
        ("metadata", section_range(&bytes, 0).start + 1),
        ("weight table", section_range(&bytes, 1).start + 9),
        ("weights", section_range(&bytes, 2).start),
        ("weights", section_range(&bytes, 2).end - 1),
    ];
    for (section, at) in cases {
        let mut b = bytes.clone();
        b[at] ^= 0x20;
        match load(&b) {
            Err(PlanError::ChecksumMismatch { section: s, .. }) => assert_eq!(s, section, "byte {at}"),
            other => panic!("byte {at}: expected a {section} checksum mismatch, got {other:?}"),
        }
    }
}

#[test]
fn every_single_byte_flip_is_refused() {
    let bytes = sample_bytes();
    for at in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[at] ^= bit;
            assert!(load(&b).is_err(), "flipping bit {bit:#x} of byte {at} went unnoticed");
        }
    }
}

#[test]
fn wrong_magic_is_not_a_plan() {
    let mut b = sample_bytes();
    b[0] = b'X';
    assert!(matches!(load(&b), Err(PlanError::NotAPlan { .. })));
    assert!(matches!(load(b"PK\x03\x04 a zip file, not a plan at all"), Err(PlanError::NotAPlan { .. })));
    assert!(matches!(load(b"KILNPLAM"), Err(PlanError::NotAPlan { .. })));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, b"\x08\x07\x12\x07pytorch").unwrap();
    let err = LoadedPlan::open(&path, &expect()).unwrap_err();
    assert!(matches!(err, PlanError::NotAPlan { .. }));
    assert!(err.to_string().starts_with(&path.display().to_string()), "{err}");
}

#[test]
fn other_format_version_is_refused() {
    let mut b = sample_bytes();
    let other = FORMAT_VERSION + 1;
    b[8..12].copy_from_slice(&other.to_le_bytes());
    match load(&b) {
        Err(PlanError::VersionMismatch { found, supported: FORMAT_VERSION, .. }) if found == other => {}
        other => panic!("{other:?}"),
    }
    // Even a truncated file of another version says so.
    assert!(matches!(load(&b[..14]), Err(PlanError::VersionMismatch { .. })));
}

#[test]
fn other_kiln_backend_or_device_is_refused() {
    let bytes = sample_bytes();
    let with = |f: fn(&mut PlanExpectation)| {
        let mut e = expect();
        f(&mut e);
        LoadedPlan::from_bytes(&bytes, &e)
    };
    match with(|e| e.backend = Some("cuda".into())) {
        Err(PlanError::WrongBackend { plan, this, .. }) => assert_eq!((plan.as_str(), this.as_str()), ("cpu", "cuda")),
        other => panic!("{other:?}"),
    }
    match with(|e| e.device = Some("other".into())) {
        Err(PlanError::WrongDevice { plan, this, .. }) => {
            assert_eq!((plan.as_str(), this.as_str()), ("test-device avx2", "other"))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(with(|e| e.kiln_version = Some("0.0.1".into())), Err(PlanError::KilnVersionMismatch { .. })));
    // With no expectations, any well-formed plan loads.
    assert!(LoadedPlan::from_bytes(&bytes, &PlanExpectation::any()).is_ok());
    let err = with(|e| e.backend = Some("cuda".into())).unwrap_err();
    assert_eq!(err.to_string(), "<memory>: plan built for backend 'cpu', not 'cuda'");
}

#[test]
fn section_offsets_and_lengths_that_lie_are_refused() {
    let bytes = sample_bytes();
    let len = bytes.len() as u64;
    let check = |what: &str, f: &dyn Fn(&mut Vec<u8>), needle: &str| {
        let mut b = bytes.clone();
        f(&mut b);
        reseal(&mut b, None);
        let msg = corrupt_message(load(&b));
        assert!(msg.contains(needle), "{what}: {msg}");
    };
    let meta_off = entry(&bytes, 0, 8);
    let meta_len = entry(&bytes, 0, 16);
    let weights_off = entry(&bytes, 2, 8);
    let weights_len = entry(&bytes, 2, 16);
    check("offset beyond the file", &|b| set_u64(b, weights_off, len + 4096), "beyond the end of the file");
    check("offset far beyond", &|b| set_u64(b, meta_off, u64::MAX / 2), "beyond the end of the file");
    check("huge length", &|b| set_u64(b, weights_len, u64::MAX), "overflows");
    check("huge length within u64", &|b| set_u64(b, meta_len, 1 << 50), "beyond the end of the file");
    check("overlap", &|b| set_u64(b, weights_off, get_u64(&bytes, weights_off) - 64), "overlaps");
    check("offset into the header", &|b| set_u64(b, meta_off, 8), "overlaps");
    check("misplaced", &|b| set_u64(b, meta_off, get_u64(&bytes, meta_off) + 64), "expected");
    check(
        "wrong kind",
        &|b| {
            let at = entry(b, 1, 0);
            b[at] = 7
        },
        "section kind 7",
    );
    check(
        "reserved",
        &|b| {
            let at = entry(b, 1, 4);
            b[at] = 1
        },
        "reserved",
    );
    check(
        "section count",
        &|b| {
            let at = entry(b, 0, 0) - 4;
            b[at] = 4
        },
        "4 sections",
    );
    check("string length", &|b| b[FIXED_LEN..FIXED_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes()), "limit");
    check("string past the header", &|b| b[FIXED_LEN..FIXED_LEN + 4].copy_from_slice(&4000u32.to_le_bytes()), "past");
    check("invalid utf-8", &|b| b[FIXED_LEN + 4] = 0xff, "UTF-8");
    // A header length over the limit needs no checksum to be refused.
    let mut b = bytes.clone();
    b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(corrupt_message(load(&b)).contains("header length"));
    // Trailing bytes after the plan.
    let mut b = bytes.clone();
    b.extend_from_slice(&[0; 10]);
    assert!(corrupt_message(load(&b)).contains("10 bytes after the end"));
    // The file length field shorter than the file: the sections now extend past it.
    let mut b = bytes.clone();
    b.truncate(b.len() - 1);
    set_u64(&mut b, 16, len - 1);
    reseal(&mut b, None);
    assert!(corrupt_message(load(&b)).contains("beyond the end of the file"));
}

#[test]
fn nonzero_padding_is_refused() {
    let bytes = sample_bytes();
    // The gap between the metadata and the weight table is padding.
    let gap = section_range(&bytes, 0).end;
    assert!(gap < section_range(&bytes, 1).start, "the sample must have a gap");
    let mut b = bytes.clone();
    b[gap] = 1;
    assert!(corrupt_message(load(&b)).contains("padding"));
}

#[test]
fn weight_table_that_lies_is_refused() {
    let bytes = sample_bytes();
    let table = section_range(&bytes, 1).start;
    let check = |what: &str, f: &dyn Fn(&mut Vec<u8>), needle: &str| {
        let mut b = bytes.clone();
        f(&mut b);
        reseal(&mut b, Some(1));
        let msg = corrupt_message(load(&b));
        assert!(msg.contains(needle), "{what}: {msg}");
    };
    // Entry i: offset at table + 8 + 16 i, length at table + 16 + 16 i.
    check("huge count", &|b| set_u64(b, table, u64::MAX / 8), "cannot hold");
    check("count off by one", &|b| set_u64(b, table, blobs().len() as u64 + 1), "cannot hold");
    check("misaligned", &|b| set_u64(b, table + 8 + 16 * 3, get_u64(&bytes, table + 8 + 16 * 3) + 1), "aligned");
    check("overlap", &|b| set_u64(b, table + 8 + 16 * 6, 0), "overlaps");
    check("huge blob", &|b| set_u64(b, table + 16 + 16 * 7, u64::MAX), "overflows");
    check("blob past the section", &|b| set_u64(b, table + 16 + 16 * 7, 1 << 40), "beyond the weights section");
}

#[test]
fn io_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.plan");
    let err = LoadedPlan::open(&path, &expect()).unwrap_err();
    assert!(matches!(err, PlanError::Io { op: "opening", .. }), "{err}");
    assert!(err.to_string().contains("missing.plan"), "{err}");
    assert_eq!(err.path(), path.display().to_string());
    let err = write_plan(dir.path().join("no/such/dir/x.plan"), &header(), &[], &[]).unwrap_err();
    assert!(matches!(err, PlanError::Io { .. }) && err.to_string().contains("x.plan"), "{err}");
}

#[test]
fn writer_refuses_what_a_plan_cannot_hold() {
    let mut h = header();
    h.format_version = FORMAT_VERSION + 1;
    assert!(matches!(plan_to_bytes(&h, &[], &[]), Err(PlanError::Unwritable { .. })));
    let mut h = header();
    h.device = "x".repeat(MAX_HEADER_STRING + 1);
    assert!(matches!(plan_to_bytes(&h, &[], &[]), Err(PlanError::Unwritable { .. })));
    h.device = "x".repeat(MAX_HEADER_STRING);
    let b = plan_to_bytes(&h, &[], &[]).unwrap();
    assert_eq!(LoadedPlan::from_bytes(&b, &PlanExpectation::any()).unwrap().header(), &h);
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn fuzzed_plans_never_panic() {
    let bytes = sample_bytes();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ok = 0;
    for round in 0..3000 {
        let mut b = bytes.clone();
        match round % 4 {
            // A few random bytes set to random values (or to 0xff: large lengths).
            0 | 1 => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(b.len());
                    b[at] = if rng.below(2) == 0 { rng.next() as u8 } else { 0xff };
                }
            }
            // Structural damage resealed so it passes the checksums.
            2 => {
                let at = FIXED_LEN + rng.below(header_end(&b) - FIXED_LEN);
                b[at] = rng.next() as u8;
                reseal(&mut b, None);
            }
            // Random truncation and garbage appended.
            _ => {
                b.truncate(rng.below(b.len() + 1));
                for _ in 0..rng.below(100) {
                    b.push(rng.next() as u8);
                }
            }
        }
        if let Ok(plan) = load(&b) {
            // Whatever loads is consistent: every weight is inside the file and aligned.
            for i in 0..plan.weights_len() {
                assert_eq!(plan.weight(i).unwrap().as_ptr() as usize % WEIGHT_ALIGN, 0);
            }
            ok += 1;
        }
    }
    // Only a few damaged plans may pass (a byte set to the value it had, garbage of length 0).
    assert!(ok < 300, "{ok} damaged plans loaded");
}

#[test]
fn chunked_checksum_streams_and_parallelizes_consistently() {
    use format::{section_checksum, ChunkedHasher, HASH_CHUNK};
    let mut rng = Rng(7);
    let data: Vec<u8> = (0..3 * HASH_CHUNK + 12345).map(|_| rng.next() as u8).collect();
    for len in [0, 1, HASH_CHUNK - 1, HASH_CHUNK, HASH_CHUNK + 1, 2 * HASH_CHUNK, data.len()] {
        let whole = section_checksum(&data[..len]);
        let mut h = ChunkedHasher::new();
        let mut rest = &data[..len];
        while !rest.is_empty() {
            let n = (rng.below(3 * HASH_CHUNK / 2) + 1).min(rest.len());
            h.update(&rest[..n]);
            rest = &rest[n..];
        }
        assert_eq!(h.finish(), whole, "length {len}");
    }
    // A change in the last chunk is seen.
    let mut changed = data.clone();
    *changed.last_mut().unwrap() ^= 1;
    assert_ne!(section_checksum(&changed), section_checksum(&data));
}

#[test]
fn large_weights_verify_across_chunks() {
    let big: Vec<u8> = (0..9 << 20).map(|i: usize| (i * 7 % 253) as u8).collect();
    let bytes = plan_to_bytes(&header(), b"m", &[b"small", &big, b"tail"]).unwrap();
    let plan = load(&bytes).unwrap();
    assert_eq!(plan.weight(1).unwrap(), &big[..]);
    for at in [section_range(&bytes, 2).start + 5 * (1 << 20), bytes.len() - 1] {
        let mut b = bytes.clone();
        b[at] ^= 4;
        assert!(matches!(load(&b), Err(PlanError::ChecksumMismatch { section: "weights", .. })), "byte {at}");
    }
}
