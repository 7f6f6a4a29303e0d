#!/usr/bin/env bash
# On the CPU machine, before a GPU run: what the GPU machine lacks goes into git-ignored folders that travel with the
# working tree (64 MiB in all): .gpu/ (Node, the Vulkan loader, Dawn; ../shared/gpu/pack.sh) and .bundle/ (the CLI and
# the bench bundled with esbuild, Moby Dick as a text file, and the reference outputs for the PyTorch parity check).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash ../shared/gpu/pack.sh >/dev/null
node scripts/bundle.mjs bench/gpu/cli.ts bench/gpu/bench.ts bench/gpu/profile.ts bench/gpu-check.ts
node --import tsx -e "import('./src/model/io/data.ts').then(({mobyDickText}) => require('node:fs').writeFileSync('.bundle/moby-dick.txt', mobyDickText()))"
node --import tsx bench/reference/expected.ts .bundle/expected >/dev/null
du -sh .gpu .bundle
