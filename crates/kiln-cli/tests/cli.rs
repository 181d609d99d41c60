//! The `kiln` binary end to end on the example models.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name)
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn run_writes_every_output_as_npy() {
    for (model, output) in [("cnn.onnx", "logits"), ("transformer.onnx", "last_hidden_state")] {
        let out = temp_dir(model);
        let status = kiln().arg("run").arg(example(model)).arg("--output-dir").arg(&out).output().unwrap();
        let stdout = String::from_utf8_lossy(&status.stdout);
        assert!(status.status.success(), "{model}: {}{stdout}", String::from_utf8_lossy(&status.stderr));
        assert!(stdout.contains(&format!("output {output}")), "{stdout}");
        let bytes = std::fs::read(out.join(format!("{output}.npy"))).unwrap();
        assert!(bytes.starts_with(b"\x93NUMPY"), "{model}: not an npy file");
    }
}

#[test]
fn run_accepts_npy_inputs_and_shapes() {
    let out = temp_dir("shapes");
    let first = kiln()
        .args(["run", "--shape", "input=2x3x32x32", "--output-dir"])
        .arg(&out)
        .arg(example("cnn.onnx"))
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("[2, 10]"));
    // Feed the logits back as an input of the wrong shape: the error names the input.
    let bad = kiln()
        .arg("run")
        .arg(example("cnn.onnx"))
        .arg("--input")
        .arg(format!("input={}", out.join("logits.npy").display()))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("input") && err.contains("rank"), "{err}");
}

#[test]
fn info_lists_inputs_ops_and_parameters() {
    let out = kiln().arg("info").arg(example("transformer.onnx")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("input_ids: i64[batch, sequence]"), "{stdout}");
    assert!(stdout.contains("MatMul") && stdout.contains("parameters:"), "{stdout}");
    assert!(!stdout.contains("UNSUPPORTED"), "{stdout}");
}

#[test]
fn errors_are_reported_not_panicked() {
    let dir = temp_dir("garbage");
    let garbage = dir.join("garbage.onnx");
    std::fs::write(&garbage, b"definitely not a protobuf \xff\xff\xff").unwrap();
    for sub in ["run", "info", "inspect", "bench", "compare", "build"] {
        let out = kiln().arg(sub).arg(&garbage).args(plan_output(sub, &dir)).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("garbage.onnx") && !err.contains("panicked"), "{sub}: {err}");
    }
}

/// `-o DIR/unused.plan` for `build` (which requires it), nothing for the other commands.
fn plan_output(sub: &str, dir: &Path) -> Vec<std::ffi::OsString> {
    if sub == "build" {
        vec!["-o".into(), dir.join("unused.plan").into()]
    } else {
        Vec::new()
    }
}

/// Stdout of a run that must succeed (stderr in the panic message otherwise).
fn ok(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Stderr of a run that must fail cleanly: exit code 1, no panic.
fn fails(out: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert!(stderr.contains("error:"), "{what}: {stderr}");
    stderr
}

/// The `inspect --json` keys every consumer relies on.
fn check_inspect_json(text: &str, what: &str) -> Value {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    let layers = v["layers"].as_array().unwrap_or_else(|| panic!("{what}: no layers: {v}"));
    assert!(!layers.is_empty(), "{what}");
    for l in layers {
        for key in ["name", "kind", "precision", "tactic"] {
            assert!(l[key].as_str().is_some_and(|s| !s.is_empty()), "{what}: layer key {key}: {l}");
        }
        let fused = l["fused_nodes"].as_array().unwrap_or_else(|| panic!("{what}: fused_nodes: {l}"));
        assert!(!fused.is_empty() && fused.iter().all(|n| n.as_str().is_some()), "{what}: {l}");
    }
    assert!(v["activation_bytes"].as_u64().is_some_and(|n| n > 0), "{what}: {v}");
    assert!(v["weight_bytes"].as_u64().is_some_and(|n| n > 0), "{what}: {v}");
    v
}

/// `bench --json` prints exactly latency_ms {min, mean, median, p90, p99} and throughput_per_s.
fn check_bench_json(text: &str, what: &str) -> Value {
    let v: Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{what}: stdout is not only JSON ({e}): {text}"));
    let top: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(top.len(), 2, "{what}: {v}");
    assert!(v["throughput_per_s"].as_f64().is_some_and(|t| t > 0.0), "{what}: {v}");
    let lat = v["latency_ms"].as_object().unwrap_or_else(|| panic!("{what}: {v}"));
    assert_eq!(lat.len(), 5, "{what}: {v}");
    let get = |k: &str| lat[k].as_f64().unwrap_or_else(|| panic!("{what}: latency_ms.{k}: {v}"));
    let (min, mean, median, p90, p99) = (get("min"), get("mean"), get("median"), get("p90"), get("p99"));
    assert!(min > 0.0 && min <= median && median <= p90 && p90 <= p99 && min <= mean && mean <= p99, "{what}: {v}");
    v
}

#[test]
fn inspect_json_describes_an_engine_built_from_onnx() {
    let out = kiln()
        .args(["inspect", "--json", "--quiet", "--shapes", "input=1x3x32x32"])
        .arg(example("cnn.onnx"))
        .output()
        .unwrap();
    let v = check_inspect_json(&ok(out, "inspect --json cnn.onnx"), "inspect --json cnn.onnx");
    let layers = v["layers"].as_array().unwrap();
    assert!(layers.len() <= 17, "at most one engine layer per ONNX node: {}", layers.len());
    // Every ONNX node the engine still computes is named by exactly one layer.
    let mut fused: Vec<&str> =
        layers.iter().flat_map(|l| l["fused_nodes"].as_array().unwrap()).filter_map(Value::as_str).collect();
    let n = fused.len();
    fused.sort();
    fused.dedup();
    assert_eq!(fused.len(), n, "a node fused into two layers: {fused:?}");
    assert!(v["peak_live_bytes"].as_u64().unwrap() <= v["activation_bytes"].as_u64().unwrap());

    let text = ok(
        kiln().args(["inspect", "--quiet", "--shapes", "input=1x3x32x32"]).arg(example("cnn.onnx")).output().unwrap(),
        "inspect cnn.onnx",
    );
    for word in ["layers:", "fused ONNX nodes", "activations: arena", "peak live", "weights:", "Conv"] {
        assert!(text.contains(word), "missing '{word}':\n{text}");
    }
}

/// `--no-prune` reaches the builder (the JSON says so) and, for a model without structured
/// zeros, changes nothing else: the same layers, tactics and cost.
#[test]
fn no_prune_is_a_build_flag_and_a_dense_model_builds_the_same() {
    let inspect = |extra: &[&str]| {
        let out = kiln()
            .args(["inspect", "--json", "--quiet", "--opt-level", "1", "--shapes", "input=1x3x32x32"])
            .args(extra)
            .arg(example("cnn.onnx"))
            .output()
            .unwrap();
        check_inspect_json(&ok(out, "inspect --json cnn.onnx"), "inspect --json cnn.onnx")
    };
    let (on, off) = (inspect(&[]), inspect(&["--no-prune"]));
    assert_eq!(on["prune"], Value::Bool(true));
    assert_eq!(off["prune"], Value::Bool(false));
    assert!(on["pruned"].is_null() && off["pruned"].is_null(), "no structured zeros in cnn.onnx: {on}");
    assert!(on["flops"].as_u64().is_some_and(|f| f > 0), "{on}");
    for key in ["layers", "params", "flops", "activation_bytes", "weight_bytes"] {
        assert_eq!(on[key], off[key], "{key}");
    }
    let dir = temp_dir("no-prune");
    let text = ok(
        kiln()
            .args(["build", "--quiet", "--no-prune", "--shapes", "input=1x3x32x32", "-o"])
            .arg(dir.join("cnn.plan"))
            .arg(example("cnn.onnx"))
            .output()
            .unwrap(),
        "build --no-prune cnn.onnx",
    );
    assert!(text.contains("pruned:      off (--no-prune)") && text.contains("GFLOPs"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_reports_latency_throughput_profile_and_trace() {
    let out = kiln()
        .args(["bench", "--json", "--quiet", "--iterations", "3", "--warmup", "1", "--threads", "1"])
        .args(["--shape", "input=2x3x32x32"])
        .arg(example("cnn.onnx"))
        .output()
        .unwrap();
    check_bench_json(&ok(out, "bench --json cnn.onnx"), "bench --json cnn.onnx");

    let dir = temp_dir("trace");
    let trace = dir.join("trace.json");
    let out = kiln()
        .args(["bench", "--quiet", "--iterations", "4", "--warmup", "0", "--profile", "--trace"])
        .arg(&trace)
        .args(["--min-shapes", "input_ids=1x4", "--opt-shapes", "input_ids=2x8", "--max-shapes", "input_ids=4x16"])
        .args(["--shape", "input_ids=3x5"])
        .arg(example("transformer.onnx"))
        .output()
        .unwrap();
    let text = ok(out, "bench --profile --trace transformer.onnx");
    for word in
        ["latency (ms): min", "median", "p99", "runs/s", "batch 3", "inferences/s", "per-layer time", "MatMul", "%"]
    {
        assert!(text.contains(word), "missing '{word}':\n{text}");
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    assert!(
        !events.is_empty() && events.len().is_multiple_of(4),
        "one event per layer per iteration: {}",
        events.len()
    );
    for e in events {
        assert_eq!(e["ph"], "X", "{e}");
        assert!(e["name"].as_str().is_some() && e["cat"].as_str().is_some(), "{e}");
        assert!(e["ts"].as_f64().is_some_and(|t| t >= 0.0) && e["dur"].as_f64().is_some_and(|d| d >= 0.0), "{e}");
    }
}

#[test]
fn compare_passes_on_the_examples() {
    let text = ok(
        kiln().args(["compare", "--quiet", "--per-layer"]).arg(example("cnn.onnx")).output().unwrap(),
        "compare --per-layer cnn.onnx",
    );
    assert!(text.contains("logits") && text.contains("max rel") && text.contains("per layer"), "{text}");
    assert!(text.contains("PASSED"), "{text}");
    let text = ok(
        kiln()
            .args(["compare", "--quiet", "--shape", "input_ids=2x8"])
            .args(["--min-shapes", "input_ids=1x1", "--max-shapes", "input_ids=4x16"])
            .arg(example("transformer.onnx"))
            .output()
            .unwrap(),
        "compare transformer.onnx",
    );
    assert!(text.contains("last_hidden_state") && text.contains("PASSED"), "{text}");
    let text = ok(
        kiln()
            .args(["compare", "--quiet", "--per-layer", "--shapes", "input_ids=1x6"])
            .arg(example("transformer.onnx"))
            .output()
            .unwrap(),
        "compare --per-layer transformer.onnx",
    );
    assert!(text.contains("PASSED"), "{text}");
}

/// build → inspect → run → bench on a plan file, and what a damaged plan does.
#[test]
fn plans_round_trip_through_every_command() {
    let dir = temp_dir("plan");
    let plan = dir.join("cnn.plan");
    let out = kiln()
        .args(["build", "--quiet", "--min-shapes", "input=1x3x32x32", "--opt-shapes", "input=2x3x32x32"])
        .args(["--max-shapes", "input=4x3x32x32", "-o"])
        .arg(&plan)
        .arg(example("cnn.onnx"))
        .output()
        .unwrap();
    let text = ok(out, "build cnn.onnx");
    for word in ["17 ONNX nodes", "engine layers", "arena", "peak live", "weights", "time"] {
        assert!(text.contains(word), "missing '{word}':\n{text}");
    }
    assert!(std::fs::read(&plan).unwrap().starts_with(b"KILNPLAN"));

    let text = ok(kiln().args(["inspect", "--json"]).arg(&plan).output().unwrap(), "inspect --json plan");
    let v = check_inspect_json(&text, "inspect --json plan");
    assert_eq!(v["inputs"][0]["max"], serde_json::json!([4, 3, 32, 32]), "{v}");

    // Random inputs at the profile's opt shape, or at --shape within the profile.
    let outdir = dir.join("out");
    let text = ok(kiln().arg("run").arg(&plan).arg("--output-dir").arg(&outdir).output().unwrap(), "run plan");
    assert!(text.contains("[2, 10]"), "{text}");
    assert!(std::fs::read(outdir.join("logits.npy")).unwrap().starts_with(b"\x93NUMPY"));
    let text = ok(
        kiln()
            .arg("run")
            .arg(&plan)
            .args(["--shape", "input=3x3x32x32", "--output-dir"])
            .arg(&outdir)
            .output()
            .unwrap(),
        "run plan --shape",
    );
    assert!(text.contains("[3, 10]"), "{text}");
    let err = fails(kiln().arg("run").arg(&plan).args(["--shape", "input=5x3x32x32"]).output().unwrap(), "outside");
    assert!(err.contains("profile"), "{err}");

    let out = kiln().args(["bench", "--json", "--iterations", "3", "--warmup", "1"]).arg(&plan).output().unwrap();
    check_bench_json(&ok(out, "bench --json plan"), "bench --json plan");

    // Truncated plans are refused with the file named, never a panic.
    let bytes = std::fs::read(&plan).unwrap();
    for keep in [bytes.len() / 2, 12] {
        let cut = dir.join(format!("cut{keep}.plan"));
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        for sub in ["run", "inspect", "bench"] {
            let err = fails(kiln().arg(sub).arg(&cut).output().unwrap(), &format!("{sub} truncated plan"));
            assert!(err.contains(&format!("cut{keep}.plan")), "{sub}: {err}");
        }
    }

    // A transformer plan: integer inputs, a symbolic sequence length.
    let tplan = dir.join("transformer.plan");
    ok(
        kiln()
            .args(["build", "--quiet", "--shapes", "input_ids=1x8", "--opt-level", "1", "-o"])
            .arg(&tplan)
            .arg(example("transformer.onnx"))
            .output()
            .unwrap(),
        "build transformer.onnx",
    );
    let text =
        ok(kiln().arg("run").arg(&tplan).arg("--output-dir").arg(&outdir).output().unwrap(), "run transformer plan");
    assert!(text.contains("output last_hidden_state") && text.contains("[1, 8, 64]"), "{text}");
}

#[test]
fn garbage_plans_are_refused_cleanly() {
    let dir = temp_dir("badplan");
    let garbage = dir.join("garbage.plan");
    std::fs::write(&garbage, b"KILNPLAN\x01\x00\x00\x00\xff\xff\xff\xff this is not a plan").unwrap();
    for sub in ["run", "inspect", "bench"] {
        let err = fails(kiln().arg(sub).arg(&garbage).output().unwrap(), sub);
        assert!(err.contains("garbage.plan"), "{sub}: {err}");
    }
    // build and compare need the ONNX model.
    for sub in ["build", "compare"] {
        let err = fails(kiln().arg(sub).arg(&garbage).args(plan_output(sub, &dir)).output().unwrap(), sub);
        assert!(err.contains("is a plan"), "{sub}: {err}");
    }
}

#[test]
fn bad_build_flags_are_clear_errors() {
    let plan = temp_dir("badflags").join("never.plan");
    let build = |args: &[&str]| {
        let out = kiln().arg("build").arg(example("cnn.onnx")).arg("-o").arg(&plan).args(args).output().unwrap();
        fails(out, &args.join(" "))
    };
    let e = build(&["--shapes", "nope=1x3x32x32"]);
    assert!(e.contains("'nope' is not an input") && e.contains("inputs: input"), "{e}");
    let e = build(&["--min-shapes", "input=4x3x32x32", "--max-shapes", "input=2x3x32x32"]);
    assert!(e.contains("min shape 4x3x32x32 is larger than the max shape 2x3x32x32"), "{e}");
    let e = build(&["--shapes", "input=1x3x32"]);
    assert!(e.contains("rank"), "{e}");
    let e = build(&["--shapes", "input=1x4x32x32"]);
    assert!(e.contains("fixed at 3"), "{e}");
    let e = build(&["--shapes", "input=1xbx32x32"]);
    assert!(e.contains("'b' is not a dimension"), "{e}");
    let e = build(&["--workspace", "12Q"]);
    assert!(e.contains("--workspace") && e.contains("suffix"), "{e}");
    let e = build(&["--shapes", "input=1x3x32x32", "--max-shapes", "input=2x3x32x32"]);
    assert!(e.contains("both"), "{e}");
    assert!(!plan.exists(), "a failed build writes no plan");
    // Out-of-range levels are clap's usage errors (exit 2).
    let out =
        kiln().arg("build").arg(example("cnn.onnx")).arg("-o").arg(&plan).args(["--opt-level", "3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--opt-level"));
    // A run shape outside the built profile.
    let e = fails(
        kiln()
            .args(["bench", "--iterations", "1", "--min-shapes", "input=1x3x32x32", "--max-shapes", "input=2x3x32x32"])
            .args(["--shape", "input=3x3x32x32"])
            .arg(example("cnn.onnx"))
            .output()
            .unwrap(),
        "bench outside profile",
    );
    assert!(e.contains("outside the engine's profile"), "{e}");
}
