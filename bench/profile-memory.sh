#!/usr/bin/env bash
# Measured against modelled memory for the recompute block size L_r, on two small mHC configurations (wasm, CPU), and
# the paper presets' modelled figures. Writes bench/results/memory-*.{json,svg}. About 3 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results
# A: 24 blocks (48 layers), n = 8, C = 16 -- stored block inputs large enough against a layer for an interior optimum
./bin/dev.js profile-memory --measure --layers 24 --d-model 16 --expansion 8 --seq-len 8 --batch 64 --json --chart $out/memory-measured-a.svg > $out/memory-measured-a.json
# B: 12 blocks (24 layers), n = 4, C = 64, T = 16
./bin/dev.js profile-memory --measure --layers 12 --d-model 64 --expansion 4 --seq-len 16 --batch 64 --json --chart $out/memory-measured-b.svg > $out/memory-measured-b.json
for p in paper-3b paper-9b paper-27b; do
  for unit in blocks sublayers; do
    ./bin/dev.js profile-memory --preset $p --layer-unit $unit --json > $out/memory-$p-$unit.json
  done
done
