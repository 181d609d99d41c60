#!/usr/bin/env python3
"""Check `kiln run` on the example models against onnx's own reference evaluator.

For each example: random inputs (fixed seed) are written as .npy, run through
onnx.reference.ReferenceEvaluator (independent of kiln) and through the `kiln` binary, and the
outputs compared (rtol 1e-4, atol 1e-5).

usage: check_examples.py KILN_BINARY [EXAMPLES_DIR]
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

CASES = {
    "cnn.onnx": lambda rng: {"input": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)},
    "transformer.onnx": lambda rng: {"input_ids": rng.integers(0, 1000, (2, 16)).astype(np.int64)},
}


def main():
    kiln = sys.argv[1]
    examples = sys.argv[2] if len(sys.argv) > 2 else "examples"
    rng = np.random.default_rng(7)
    failures = 0
    for name, make_inputs in CASES.items():
        path = os.path.join(examples, name)
        inputs = make_inputs(rng)
        expected = ReferenceEvaluator(onnx.load(path)).run(None, inputs)
        with tempfile.TemporaryDirectory() as tmp:
            args = [kiln, "run", path, "--output-dir", tmp]
            for k, v in inputs.items():
                np.save(os.path.join(tmp, f"in_{k}.npy"), v)
                args += ["--input", f"{k}={os.path.join(tmp, f'in_{k}.npy')}"]
            subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
            model = onnx.load(path)
            for out, want in zip(model.graph.output, expected):
                got = np.load(os.path.join(tmp, f"{out.name}.npy"))
                ok = got.shape == want.shape and np.allclose(got, want, rtol=1e-4, atol=1e-5)
                err = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("nan")
                print(f"{'PASS' if ok else 'FAIL'} {name} output {out.name} {list(got.shape)}: max abs diff {err:.2e}")
                failures += not ok
    if failures:
        sys.exit(f"{failures} example outputs differ from onnx's reference")


if __name__ == "__main__":
    main()
