#!/usr/bin/env python3
"""Side-by-side CPU benchmark: the same ONNX models through kiln and through onnxruntime.

For every (model, batch, threads) the two runtimes take turns, round after round (kiln first in
even rounds, onnxruntime first in odd ones), each round in a fresh child process, so that load
from other work on the machine hits both alike and each runtime's peak resident memory (the
child's VmHWM, polled from /proc while it runs) is its own. A round runs `--warmup` untimed and
`--iterations` timed inferences (more for fast models: enough for about `--round-ms`, sized by a
short kiln probe, the same counts for both runtimes) and reports its median; the table shows the median of the
rounds' medians and the largest peak RSS of any round.

kiln runs a plan built once per (model, batch) with static shapes (`kiln build --shapes ...`,
cached under bench/out/, rebuilt when the kiln binary is newer) through `kiln bench PLAN --json
--threads T`. onnxruntime runs with the CPU provider, ORT_ENABLE_ALL, intra-op threads T and
inter-op threads 1, sequential execution. Both get random inputs of the same kind: floats in
[-1, 1), integers in [0, 2) (valid token ids and token types).

Models: ResNet-50, MobileNetV2, BERT-base (sequence 128) and a ViT-B/16 encoder from
scripts/gen_models.py (made on first use when missing).

usage: .venv/bin/python bench/bench.py [--models resnet50,bert_base] [--batches 1,8]
       [--threads 1,2] [--rounds 3] [--iterations 5] [--warmup 2] [--round-ms 500]
       [--kiln target/release/kiln]
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQUENCE = 128
# model name -> where the generator writes it by default; vit_b16 lives beside the benchmark
# (target/models may be shared with other checkouts).
MODEL_DIRS = {"resnet50": "target/models", "mobilenetv2": "target/models", "bert_base": "target/models",
              "vit_b16": "bench/models"}


def model_path(name):
    path = os.path.join(ROOT, MODEL_DIRS[name], f"{name}.onnx")
    if not os.path.exists(path):
        print(f"generating {path}", file=sys.stderr)
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts/gen_models.py"), "--out",
                        os.path.dirname(path), name], check=True)
    return path


def input_shapes(path, batch):
    """Each graph input's concrete shape: 'batch' dims -> batch, 'sequence' dims -> 128."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    shapes = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = []
        for d in inp.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif d.dim_param == "sequence":
                dims.append(SEQUENCE)
            else:
                dims.append(batch)
        shapes[inp.name] = (dims, inp.type.tensor_type.elem_type)
    return shapes


# --- child: one onnxruntime round ----------------------------------------------------------------
def ort_round(args):
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(args.seed)
    feeds = {}
    for name, (dims, elem) in input_shapes(args.model, args.batch).items():
        if elem == 1:  # FLOAT
            feeds[name] = rng.uniform(-1, 1, dims).astype(np.float32)
        else:
            feeds[name] = rng.integers(0, 2, dims).astype(np.int64)
    for _ in range(args.warmup):
        session.run(None, feeds)
    times = []
    for _ in range(args.iterations):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"median_ms": statistics.median(times)}))


# --- parent ---------------------------------------------------------------------------------------
def vm_hwm_mib(pid):
    """The process's peak resident memory so far (VmHWM), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def run_child(cmd):
    """Run `cmd`, return (its stdout, its peak RSS in MiB).

    The peak is the child's own VmHWM, polled while it runs (it only grows, so the last reading
    before exit is the peak up to then). Not ru_maxrss from wait4: on Linux that keeps the
    high-water mark of the forked parent's memory across exec, so every child would report at
    least this Python process's size."""
    with tempfile.TemporaryFile() as outf, tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(cmd, stdout=outf, stderr=errf, cwd=ROOT)
        peak = 0.0
        while proc.poll() is None:
            hwm = vm_hwm_mib(proc.pid)
            if hwm is not None:
                peak = max(peak, hwm)
            time.sleep(0.01)
        outf.seek(0)
        errf.seek(0)
        out, err = outf.read(), errf.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    return out.decode(), peak


def kiln_plan(kiln, name, path, batch, rebuild):
    os.makedirs(os.path.join(ROOT, "bench/out"), exist_ok=True)
    plan = os.path.join(ROOT, "bench/out", f"{name}_b{batch}.plan")
    stale = not os.path.exists(plan) or os.path.getmtime(plan) < os.path.getmtime(kiln)
    if rebuild or stale:
        shapes = ",".join(f"{n}={'x'.join(map(str, d))}" for n, (d, _) in input_shapes(path, batch).items())
        print(f"building {plan}", file=sys.stderr)
        subprocess.run([kiln, "build", path, "--shapes", shapes, "-o", plan, "--quiet"], check=True,
                       stdout=subprocess.DEVNULL)
    return plan


def run_counts(args, plan, threads):
    """(iterations, warmup) per round: at least --iterations/--warmup, and for fast models enough
    runs that a round lasts about --round-ms (a 5 ms model timed 5 times is mostly start-up:
    thread pools waking, first-touch page faults). One short kiln probe sizes it; both runtimes
    then get the same counts."""
    if args.round_ms <= 0:
        return args.iterations, args.warmup
    out, _ = run_child([args.kiln, "bench", plan, "--json", "--threads", str(threads), "--iterations", "3",
                        "--warmup", "1"])
    ms = json.loads(out.strip().splitlines()[-1])["latency_ms"]["median"]
    iterations = max(args.iterations, min(200, int(args.round_ms / max(ms, 1e-3))))
    return iterations, max(args.warmup, iterations // 5)


def bench_config(args, name, path, plan, batch, threads):
    iterations, warmup = run_counts(args, plan, threads)
    kiln_cmd = [args.kiln, "bench", plan, "--json", "--threads", str(threads), "--iterations",
                str(iterations), "--warmup", str(warmup)]
    ort_cmd = [sys.executable, os.path.abspath(__file__), "_ort", path, "--batch", str(batch), "--threads",
               str(threads), "--iterations", str(iterations), "--warmup", str(warmup)]
    res = {"kiln": ([], []), "ort": ([], [])}
    for r in range(args.rounds):
        order = [("kiln", kiln_cmd), ("ort", ort_cmd)]
        for who, cmd in order if r % 2 == 0 else order[::-1]:
            out, rss = run_child(cmd)
            data = json.loads(out.strip().splitlines()[-1])
            ms = data["latency_ms"]["median"] if who == "kiln" else data["median_ms"]
            res[who][0].append(ms)
            res[who][1].append(rss)
    return {who: (statistics.median(ms), max(rss), ms) for who, (ms, rss) in res.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="resnet50,mobilenetv2,bert_base,vit_b16")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per configuration (default 3)")
    ap.add_argument("--iterations", type=int, default=5, help="timed runs per round (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs per round (default 2)")
    ap.add_argument("--round-ms", type=float, default=500.0,
                    help="more timed runs for fast models, so a round lasts about this long (0: off; "
                         "default 500)")
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target/release/kiln"))
    ap.add_argument("--rebuild", action="store_true", help="rebuild kiln plans even when cached")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args()
    models = args.models.split(",")
    for m in models:
        if m not in MODEL_DIRS:
            ap.error(f"unknown model {m!r}; choose from {', '.join(MODEL_DIRS)}")
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]

    header = f"{'model':<12} {'batch':>5} {'thr':>3} {'kiln ms':>9} {'ort ms':>9} {'ratio':>6} " \
             f"{'kiln MiB':>9} {'ort MiB':>8}"
    print(header)
    print("-" * len(header), flush=True)
    rows = []
    for name in models:
        path = model_path(name)
        for batch in batches:
            plan = kiln_plan(args.kiln, name, path, batch, args.rebuild)
            for t in threads:
                r = bench_config(args, name, path, plan, batch, t)
                (k_ms, k_rss, k_rounds), (o_ms, o_rss, o_rounds) = r["kiln"], r["ort"]
                row = {"model": name, "batch": batch, "threads": t, "kiln_ms": k_ms, "ort_ms": o_ms,
                       "ratio": k_ms / o_ms, "kiln_peak_mib": k_rss, "ort_peak_mib": o_rss,
                       "kiln_rounds_ms": k_rounds, "ort_rounds_ms": o_rounds}
                rows.append(row)
                print(f"{name:<12} {batch:>5} {t:>3} {k_ms:>9.2f} {o_ms:>9.2f} {k_ms / o_ms:>6.2f} "
                      f"{k_rss:>9.0f} {o_rss:>8.0f}", flush=True)
    geo = math.exp(sum(math.log(r["ratio"]) for r in rows) / len(rows))
    print("-" * len(header))
    print(f"geometric mean of kiln/ort ratios: {geo:.2f} over {len(rows)} configurations")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "geomean_ratio": geo}, f, indent=1)


def ort_main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--iterations", type=int, required=True)
    ap.add_argument("--warmup", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ort_round(ap.parse_args(sys.argv[2:]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_ort":
        ort_main()
    else:
        main()
