set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
f=$(find / -name 'libcudnn.so.9' -not -path '/proc/*' 2>/dev/null | head -1); [ -n "$f" ] && export LD_LIBRARY_PATH="$(dirname $f):$LD_LIBRARY_PATH"
mkdir -p target/models; python3 scripts/gen_models.py --out target/models resnet50 >/dev/null 2>&1
for r in 1 2 3; do for lvl in 1 2; do
  g=$(gpu-bin/kiln bench target/models/resnet50.onnx --device cuda --fp16 --shapes input=1x3x224x224 --opt-level $lvl --iterations 300 --warmup 30 --quiet 2>&1 | grep -oE 'GPU time \(ms, CUDA events\): min [0-9.]+  mean [0-9.]+  median [0-9.]+' | awk '{print $NF}')
  echo "round $r opt-level $lvl GPU median $g ms"
done; done
