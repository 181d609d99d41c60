#!/usr/bin/env bash
# The whole GPU check, run on a machine with an NVIDIA GPU from binaries built elsewhere:
#   cargo build --release -p kiln-cli -p kiln-conformance
#   mkdir -p gpu-bin && strip -o gpu-bin/kiln target/release/kiln \
#       && strip -o gpu-bin/kiln-conformance target/release/kiln-conformance
#   cargo test --release -p kiln-cuda --no-run   # then strip the tests/gpu.rs executable to gpu-bin/kiln-gpu-tests
#   scripts/gpu-check.sh [tests] [compare] [bench] [conformance] [prune] [profile]
#   (default: tests compare bench conformance)
# It generates the reference models and the ONNX conformance cases with the machine's python3
# (numpy + onnx), then: `kiln compare --device cuda` (fp32 and fp16) against the CPU reference,
# `kiln bench --device cuda` (fp16, CUDA graph), and the conformance suite through the GPU engine.
# Logs go to $OUT (or target/gpu-check); the last lines are a short table.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-gpu-bin}
LOG=${OUT:-target/gpu-check}
mkdir -p "$LOG" target/models
steps=${*:-tests compare bench conformance}

# cuBLAS/NVRTC live with the toolkit; cuDNN may come only inside a Python wheel.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
if ! ldconfig -p | grep -q 'libcudnn.so.9'; then
  for f in $(find / -name 'libcudnn.so.9' -not -path '/proc/*' 2>/dev/null | head -1); do
    export LD_LIBRARY_PATH="$(dirname "$f"):$LD_LIBRARY_PATH"
  done
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
table=()
row() { table+=("$(printf '%-44s %s' "$1" "$2")"); }

if [[ " $steps " == *" tests "* ]]; then
  "$BIN/kiln-gpu-tests" --test-threads 1 >"$LOG/gpu_tests.log" 2>&1
  row "kiln-cuda tests (GPU vs CPU reference)" "$(grep -E '^test result' "$LOG/gpu_tests.log" | tail -1)"
  grep -q 'skipping' "$LOG/gpu_tests.log" && row "  WARNING" "tests skipped: $(grep -m1 skipping "$LOG/gpu_tests.log")"
fi

if [[ " $steps " == *" compare "* || " $steps " == *" bench "* || " $steps " == *" profile "* ]]; then
  python3 scripts/gen_models.py --out target/models resnet50 mobilenetv2 bert_base >"$LOG/models.log" 2>&1 \
    || { echo "model generation failed"; tail -5 "$LOG/models.log"; }
fi
BERT_SHAPES="input_ids=1x128,attention_mask=1x128,token_type_ids=1x128"

if [[ " $steps " == *" compare "* ]]; then
  for prec in fp32 fp16; do
    flag=""; rtol=1e-4
    [ "$prec" = fp16 ] && { flag="--fp16"; rtol=1e-2; }
    for m in resnet50 mobilenetv2 bert_base; do
      shapes="input=1x3x224x224"; [ "$m" = bert_base ] && shapes="$BERT_SHAPES"
      log="$LOG/compare_${m}_${prec}.log"
      "$BIN/kiln" compare "target/models/$m.onnx" --device cuda $flag --shapes "$shapes" --rtol "$rtol" --quiet >"$log" 2>&1
      rc=$?
      err=$(grep -oE 'largest relative error [0-9.e+-]+' "$log" | head -1)
      row "compare $m $prec (rtol $rtol)" "$([ $rc = 0 ] && echo PASS || echo FAIL) ${err}"
      [ $rc = 0 ] || tail -3 "$log"
    done
  done
fi

if [[ " $steps " == *" bench "* ]]; then
  bench() { # name model shapes flags...
    local name=$1 model=$2 shapes=$3; shift 3
    local log="$LOG/bench_${name}.log"
    "$BIN/kiln" bench "target/models/$model.onnx" --device cuda --shapes "$shapes" --iterations 200 --warmup 20 --quiet "$@" >"$log" 2>&1
    local gpu e2e
    gpu=$(grep -oE 'GPU time \(ms, CUDA events\): min [0-9.]+  mean [0-9.]+  median [0-9.]+' "$log" | awk '{print $NF}')
    e2e=$(grep -oE 'latency \(ms\): min [0-9.]+  mean [0-9.]+  median [0-9.]+' "$log" | awk '{print $NF}')
    row "bench $name" "GPU median ${gpu:-?} ms, end-to-end median ${e2e:-?} ms"
    [ -n "$gpu" ] || tail -3 "$log"
  }
  bench resnet50_b1_fp16 resnet50 input=1x3x224x224 --fp16
  bench resnet50_b32_fp16 resnet50 input=32x3x224x224 --fp16
  bench bert_b1_fp16 bert_base "$BERT_SHAPES" --fp16
  bench resnet50_b1_fp32 resnet50 input=1x3x224x224
  bench resnet50_b1_fp16_nograph resnet50 input=1x3x224x224 --fp16 --no-cuda-graph
  bench resnet50_b1_fp16_again resnet50 input=1x3x224x224 --fp16
fi

if [[ " $steps " == *" prune "* ]]; then
  # Issue 6 on the GPU: dense vs structurally pruned models, fp32 accuracy against the zeroed
  # model at opt level 0 (kiln compare) and fp16 GPU latency, dense and pruned alternating.
  python3 scripts/gen_models.py --out target/models --pruned resnet50 mobilenetv2 bert_base >>"$LOG/models.log" 2>&1
  for m in resnet50 mobilenetv2 bert_base; do
    shapes="input=1x3x224x224"; [ "$m" = bert_base ] && shapes="$BERT_SHAPES"
    for p in p30 p50 p70; do
      "$BIN/kiln" compare "target/models/${m}_$p.onnx" --device cuda --shapes "$shapes" --quiet >"$LOG/prune_compare.log" 2>&1
      err=$(grep -oE 'largest relative error [0-9.e+-]+' "$LOG/prune_compare.log" | awk '{print $NF}')
      row "prune compare ${m}_$p fp32" "${err:-FAIL}"
    done
    for round in 1 2; do
      for p in dense p30 p50 p70; do
        f="target/models/${m}_$p.onnx"; [ $p = dense ] && f="target/models/$m.onnx"
        "$BIN/kiln" bench "$f" --device cuda --fp16 --shapes "$shapes" --iterations 200 --warmup 20 --quiet \
          >"$LOG/prune_bench.log" 2>&1
        gpu=$(grep -oE 'GPU time \(ms, CUDA events\): min [0-9.]+  mean [0-9.]+  median [0-9.]+' "$LOG/prune_bench.log" | awk '{print $NF}')
        row "prune bench ${m} $p fp16 round $round" "GPU median ${gpu:-?} ms"
      done
    done
  done
fi

if [[ " $steps " == *" profile "* ]]; then
  KILN_CUDA_PROFILE=1 "$BIN/kiln" bench target/models/resnet50.onnx --device cuda --fp16 --shapes input=1x3x224x224 \
    --iterations 3 --warmup 2 --quiet >"$LOG/profile_resnet50.log" 2>&1
  row "profile resnet50 fp16 b1" "see $LOG/profile_resnet50.log"
  tail -12 "$LOG/profile_resnet50.log"
fi

if [[ " $steps " == *" conformance "* ]]; then
  python3 scripts/gen_conformance.py target/onnx-node-cases >"$LOG/gen_conformance.log" 2>&1 \
    || { echo "case generation failed"; tail -5 "$LOG/gen_conformance.log"; }
  KILN_PLACEMENT_LOG="$LOG/placements.tsv" timeout 400 "$BIN/kiln-conformance" target/onnx-node-cases --engine --quiet \
    >"$LOG/conformance_gpu.log" 2>&1
  row "conformance --engine (GPU)" "$(grep -E '^[0-9]+ passed' "$LOG/conformance_gpu.log" | tail -1)"
  row "  placement" "$(grep -E '^device:' "$LOG/conformance_gpu.log" | tail -1)"
  grep -E '^FAIL' "$LOG/conformance_gpu.log" >"$LOG/conformance_failures.txt"
  # Why layers ran on the CPU: cases per "op cpu (reason)", most frequent first.
  cut -f3 "$LOG/placements.tsv" | tr ';' '\n' | sed 's/^ *//' | grep -v '^$' | sort | uniq -c | sort -rn \
    >"$LOG/placement_reasons.txt"
fi

echo "== kiln GPU check"
printf '%s\n' "${table[@]}"
