#!/usr/bin/env bash
# PyTorch in and out (#14), end to end, for bench/results/torch-parity.json: the three fixtures exported by
# `mhc export`, loaded in the PyTorch reference (python/mhc_ref.py) and compared with our own outputs on the same
# tokens (bench/reference/parity.py: logits, loss, every layer's H_pre / H_post / H_res, also through forward hooks);
# then a maps file recorded in PyTorch (python/record_maps.py) on the windows `mhc analyze-gain` samples, analysed with
# `analyze-gain --maps` and compared with `analyze-gain` on the checkpoint itself.
# Needs EXPECTED (default .bundle/expected) from `node --import tsx bench/reference/expected.ts EXPECTED` (it also
# writes EXPECTED/exports/), the CLI as $MHC (default: node .bundle/cli.mjs, else ./bin/dev.js), python3 with torch.
# Usage: bash bench/reference/torch-parity.sh OUTDIR [--device cuda|cpu]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: torch-parity.sh OUTDIR [--device cuda|cpu]}; shift
expected=${EXPECTED:-.bundle/expected}
if [ -z "${MHC:-}" ]; then [ -f .bundle/cli.mjs ] && MHC="node .bundle/cli.mjs" || MHC=./bin/dev.js; fi
PY=${PYTHON:-python3}
data=()
[ -f .bundle/moby-dick.txt ] && data=(--data .bundle/moby-dick.txt) # the bundled CLI reads the corpus from a file
mkdir -p "$out"
$PY bench/reference/parity.py --expected "$expected" --dtypes float32,float64 "$@" --out "$out/parity.json" > "$out/parity.txt"
tail -1 "$out/parity.txt" | head -1
for f in hc mhc; do
  $PY python/record_maps.py "$expected/exports/$f" --tokens-file "$expected/$f.safetensors:gain.tokens" \
    --out "$out/maps-$f.safetensors" "$@"
  $MHC analyze-gain "fixtures/$f" --backend wasm --json "${data[@]}" > "$out/gain-checkpoint-$f.json"
  $MHC analyze-gain --maps "$out/maps-$f.safetensors" --json > "$out/gain-maps-$f.json"
done
# A bf16 copy of the mHC export written by PyTorch (its own rounding), imported and analysed: how far bf16 weights
# move the gains.
$PY - "$expected/exports/mhc" "$out/mhc-bf16" <<'PY'
import os, shutil, sys
import torch
sys.path.insert(0, 'python')
import mhc_ref, stio
src, dst = sys.argv[1:]
model, _ = mhc_ref.load(src)
os.makedirs(dst, exist_ok=True)
shutil.copy(os.path.join(src, 'config.json'), dst)
stio.write_safetensors(os.path.join(dst, 'model.safetensors'),
                       {k: ('BF16', v.detach().to(torch.bfloat16).view(torch.int16).numpy()) for k, v in model.state_dict().items()},
                       {'format': 'pt', 'producer': f'torch {torch.__version__}, bf16'})
PY
rm -rf "$out/mhc-bf16-ckpt"
$MHC import "$out/mhc-bf16" --out "$out/mhc-bf16-ckpt" --json > "$out/import-bf16.json"
$MHC analyze-gain "$out/mhc-bf16-ckpt" --backend wasm --json "${data[@]}" > "$out/gain-bf16-mhc.json"
$PY bench/reference/torch_parity.py "$out" "bash bench/reference/torch-parity.sh OUTDIR $*" > "$out/torch-parity.json"
$PY -c "import json,sys; d=json.load(open('$out/torch-parity.json')); print(json.dumps(d['summary'], indent=1))"
