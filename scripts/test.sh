#!/usr/bin/env bash
# kiln's whole test run: unit and integration tests, then the ONNX node conformance suite.
# Needs a Rust toolchain and python3; creates .venv with onnx==1.23.2 on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import onnx, sys; sys.exit(onnx.__version__ != '1.23.2')" 2>/dev/null; then
  echo "== creating .venv with onnx==1.23.2"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check onnx==1.23.2 numpy
fi

echo "== cargo test"
mkdir -p target
rc=0
cargo test --workspace --release >target/cargo-test.log 2>&1 || rc=$?
grep -E "^(test result|error|failures:|---- )|panicked|^test .* FAILED" target/cargo-test.log || true
if [ "$rc" -ne 0 ]; then
  echo "cargo test failed (exit $rc; full log: target/cargo-test.log)"; exit "$rc"
fi

echo "== example models: kiln run vs onnx's reference evaluator"
cargo build --release -q -p kiln-cli
.venv/bin/python scripts/check_examples.py target/release/kiln examples

echo "== ONNX node conformance (onnx 1.23.2)"
.venv/bin/python scripts/gen_conformance.py target/onnx-node-cases
cargo build --release -q -p kiln-conformance
echo "-- through the graph simplification passes (failures only)"
./target/release/kiln-conformance target/onnx-node-cases --optimize --quiet --expected conformance/expected_pass.txt
echo "-- the whole engine path: build (highest opt level), save the plan, load it, run (failures only)"
./target/release/kiln-conformance target/onnx-node-cases --engine --quiet --expected conformance/expected_pass.txt
echo "-- plain import + CPU execution"
./target/release/kiln-conformance target/onnx-node-cases \
  --report conformance/REPORT.md --expected conformance/expected_pass.txt
