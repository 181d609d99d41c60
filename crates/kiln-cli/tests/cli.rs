//! The `kiln` binary end to end on the example models.

use std::path::{Path, PathBuf};
use std::process::Command;

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
    for sub in ["run", "info"] {
        let out = kiln().arg(sub).arg(&garbage).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("garbage.onnx") && !err.contains("panicked"), "{sub}: {err}");
    }
}
