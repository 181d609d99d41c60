#!/usr/bin/env bash
# The GPU latency targets of issue 4, measured in alternating rounds (the lent GPU is shared and
# noisy; quote the median of the round medians): ResNet-50 fp16 batch 1 and 32, BERT-base fp16
# batch 1 (sequence 128), CUDA graph on. Run on the GPU machine with gpu-bin/kiln (see gpu-check.sh).
set -u
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
f=$(find / -name 'libcudnn.so.9' -not -path '/proc/*' 2>/dev/null | head -1)
[ -n "$f" ] && export LD_LIBRARY_PATH="$(dirname "$f"):$LD_LIBRARY_PATH"
mkdir -p target/models
python3 scripts/gen_models.py --out target/models resnet50 bert_base >/dev/null 2>&1
BERT="input_ids=1x128,attention_mask=1x128,token_type_ids=1x128"
for m in ${MODELS:-resnet50 bert_base}; do
  s=input=1x3x224x224; [ $m = bert_base ] && s=$BERT
  gpu-bin/kiln build target/models/$m.onnx --device cuda --fp16 --shapes "$s" -o target/$m.b1.plan --quiet >/dev/null
done
gpu-bin/kiln build target/models/resnet50.onnx --device cuda --fp16 --shapes input=32x3x224x224 -o target/resnet50.b32.plan --quiet >/dev/null
for r in 1 2 3; do
  for p in resnet50.b1 resnet50.b32 bert_base.b1; do
    g=$(gpu-bin/kiln bench target/$p.plan --iterations 300 --warmup 30 2>&1 \
      | grep -oE 'GPU time \(ms, CUDA events\): min [0-9.]+  mean [0-9.]+  median [0-9.]+' | awk '{print $NF}')
    echo "round $r $p fp16 GPU median $g ms"
  done
done
