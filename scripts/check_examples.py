#!/usr/bin/env python3
"""Check `kiln run` on the example models against onnx's own reference evaluator.

For each example: random inputs (fixed seed) are written as .npy, run through
onnx.reference.ReferenceEvaluator (independent of kiln) and through the `kiln` binary, and the
outputs compared (rtol 1e-4, atol 1e-5).

With --models DIR it also checks the reference models written by scripts/gen_models.py
(resnet50.onnx, mobilenetv2.onnx, bert_base.onnx in DIR) at batch 1, BERT at sequence 16 to
keep the Python reference fast, with rtol 1e-3, atol 1e-4 (50 layers of float32 accumulate more
rounding); it prints kiln's own `ran in` time for each. Not part of scripts/test.sh (CI time).

usage: check_examples.py KILN_BINARY [EXAMPLES_DIR] [--models DIR]
"""
import argparse
import os
import re
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


def bert_inputs(rng, seq=16):
    mask = np.ones((1, seq), np.int64)
    mask[0, seq - 3:] = 0  # padded tail, so the extended attention mask matters
    return {
        "input_ids": rng.integers(0, 30522, (1, seq)).astype(np.int64),
        "attention_mask": mask,
        "token_type_ids": (np.arange(seq) >= seq // 2).astype(np.int64)[None, :],
    }


MODEL_CASES = {
    "resnet50.onnx": lambda rng: {"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)},
    "mobilenetv2.onnx": lambda rng: {"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)},
    "bert_base.onnx": bert_inputs,
}


def check(kiln, path, inputs, rtol, atol):
    """Run one model through both; print a line per output; return the number of mismatches."""
    name = os.path.basename(path)
    model = onnx.load(path)
    expected = ReferenceEvaluator(model).run(None, inputs)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        args = [kiln, "run", path, "--output-dir", tmp]
        for k, v in inputs.items():
            np.save(os.path.join(tmp, f"in_{k}.npy"), v)
            args += ["--input", f"{k}={os.path.join(tmp, f'in_{k}.npy')}"]
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"FAIL {name}: kiln run exited {proc.returncode}\n{proc.stderr.strip()}")
            return len(model.graph.output)
        ran = re.search(r"ran in ([0-9.]+ ms)", proc.stdout)
        for out, want in zip(model.graph.output, expected):
            got = np.load(os.path.join(tmp, f"{out.name}.npy"))
            ok = got.shape == want.shape and np.allclose(got, want, rtol=rtol, atol=atol)
            err = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("nan")
            print(f"{'PASS' if ok else 'FAIL'} {name} output {out.name} {list(got.shape)}: max abs diff {err:.2e}")
            failures += not ok
        if ran:
            print(f"     {name}: kiln ran in {ran.group(1)}")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kiln", help="path to the kiln binary")
    ap.add_argument("examples", nargs="?", default="examples", help="examples directory")
    ap.add_argument("--models", metavar="DIR",
                    help="also check resnet50/mobilenetv2/bert_base from scripts/gen_models.py in DIR")
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    failures = 0
    for name, make_inputs in CASES.items():
        failures += check(args.kiln, os.path.join(args.examples, name), make_inputs(rng), 1e-4, 1e-5)
    if args.models:
        for name, make_inputs in MODEL_CASES.items():
            path = os.path.join(args.models, name)
            if not os.path.exists(path):
                print(f"FAIL {name}: {path} missing (run scripts/gen_models.py --out {args.models})")
                failures += 1
                continue
            failures += check(args.kiln, path, make_inputs(rng), 1e-3, 1e-4)
    if failures:
        sys.exit(f"{failures} model outputs differ from onnx's reference")


if __name__ == "__main__":
    main()
