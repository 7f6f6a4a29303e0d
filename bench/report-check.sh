#!/usr/bin/env bash
# mhc report in a real browser: the report of the three fixtures, opened in headless Chromium (Debian's package:
# apt-get install chromium), checked and photographed. Writes bench/results/report-check.json and
# bench/results/report-screenshot.png.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
./bin/dev.js report fixtures/hc fixtures/mhc fixtures/baseline --out "$tmp/report.html" --tokens 1024 --backend wasm
node --import tsx bench/report-check.ts "$tmp/report.html" bench/results/report-screenshot.png > bench/results/report-check.json
python3 -c "import json; d=json.load(open('bench/results/report-check.json')); print('ok' if d['ok'] else 'NOT OK', d['browser'])"
