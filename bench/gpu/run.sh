#!/usr/bin/env bash
# On the GPU machine (after bench/gpu/prepare.sh here; see bench/README.md): everything in one run, so that the
# engines are compared on the same host (GPU hosts differ by ±30%). Works in /tmp/mhc-gpu:
#   bench-webgpu.jsonl, bench-tfjs-webgpu.jsonl   training throughput through the Engine seam (bench/gpu/bench.ts)
#   torch-bench.json                               PyTorch eager fp32 of the same model (bench/reference/torch_bench.py)
#   parity.json                                    the PyTorch reference against our outputs (bench/reference/parity.py)
#   train-<arch>.json                              `mhc train --backend webgpu` of the default run, per arch
#   gpu.json                                       all of it collected (bench/gpu/collect.py)
# and copies gpu.json, parity.json, torch-bench.json and log.txt (every stage's output) to $OUT (the device tool
# brings back at most 8 files).
# Usage: bash bench/gpu/run.sh [--quick]   (--quick: the small preset only, a few steps: a smoke test)
set -uo pipefail
source .gpu/setup.sh >/dev/null
export PYTHONUNBUFFERED=1
DEST=${OUT:-/tmp/mhc-gpu-out}
OUT=/tmp/mhc-gpu
mkdir -p "$OUT" "$DEST"
quick=${1:-}
presets=small,medium,gpu; steps=30; tsteps=4; trainsteps=400
[ "$quick" = --quick ] && { presets=small; steps=5; tsteps=2; trainsteps=20; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/device.txt"
stage() { echo "== $1 ($(date +%T))"; }
stage "webgpu engine"
timeout 240 node .bundle/bench.mjs --engine webgpu --presets $presets --steps $steps > "$OUT/bench-webgpu.jsonl" 2> "$OUT/bench-webgpu.err"
stage "webgpu engine against wasm, 5 steps"
timeout 90 node .bundle/gpu-check.mjs --backend webgpu --data .bundle/moby-dick.txt > "$OUT/gpu-check.txt" 2>&1
stage "PyTorch eager fp32"
timeout 240 python3 bench/reference/torch_bench.py --presets $presets --steps $steps --warmup 5 --out "$OUT/torch-bench.json" > "$OUT/torch-bench.txt" 2>&1
stage "parity"
timeout 60 python3 bench/reference/parity.py --expected .bundle/expected --out "$OUT/parity.json" > "$OUT/parity.txt" 2>&1
stage "mhc train --backend webgpu"
for arch in baseline hc mhc; do
  timeout 120 node .bundle/cli.mjs train --backend webgpu --arch $arch --steps $trainsteps --data .bundle/moby-dick.txt \
    --out "/tmp/mhc-runs/$arch" --json > "$OUT/train-$arch.json" 2> "$OUT/train-$arch.err"
done
stage "tfjs-webgpu"
timeout 280 node .bundle/bench.mjs --engine tfjs-webgpu --presets $presets --steps $tsteps --warmup 1 > "$OUT/bench-tfjs-webgpu.jsonl" 2> "$OUT/bench-tfjs-webgpu.err"
stage "collect"
python3 bench/gpu/collect.py "$OUT" "bash bench/gpu/run.sh $quick" > "$OUT/gpu.json"
cp "$OUT/gpu.json" "$DEST/"; cp "$OUT/parity.json" "$OUT/torch-bench.json" "$DEST/" 2>/dev/null
for f in "$OUT"/*.err "$OUT"/*.txt; do echo "===== $f"; tail -c 4000 "$f"; done > "$DEST/log.txt"
python3 -c "import json,sys; d=json.load(open('$OUT/gpu.json')); [print(r) for r in d['ratios']]; print(json.dumps(d['train'])[:1500]); print(d['errors'][:3])"
