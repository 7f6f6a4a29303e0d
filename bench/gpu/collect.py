"""Collects one bench/gpu/run.sh run into a single JSON document on stdout:
{"device", "command", "rows": [{"preset", "arch", "engine", "tokensPerSec", "stepMs", ...}], "ratios": [...],
 "train": {arch: {...}}, "parity": [...], "errors": [...]}.
Usage: python3 bench/gpu/collect.py OUTDIR COMMAND
"""
import json
import os
import sys


def lines(path):
    """JSON rows, one per line, from a file that may be missing or cut short by a timeout."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith('{'):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out


def load(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def main():
    out, command = sys.argv[1], sys.argv[2]
    device = open(os.path.join(out, 'device.txt')).read().strip() if os.path.exists(os.path.join(out, 'device.txt')) else 'unknown'
    keep = ('preset', 'arch', 'engine', 'tokensPerSec', 'stepMs')
    rows, errors = [], []
    for name in ('bench-webgpu.jsonl', 'bench-tfjs-webgpu.jsonl'):
        for r in lines(os.path.join(out, name)):
            rows.append({**{k: r[k] for k in keep}, **{k: r[k] for k in ('medianStepMs', 'dispatches', 'timedSteps', 'batch', 'seqLen') if k in r}})
        err = os.path.join(out, name.replace('.jsonl', '.err'))
        if os.path.exists(err) and os.path.getsize(err) > 0:
            errors.append({'stage': name, 'stderr': open(err).read()[-2000:]})
    for r in load(os.path.join(out, 'torch-bench.json'), []):
        if 'error' in r:
            errors.append({'stage': 'torch', 'row': r})
        elif 'tokensPerSec' in r:
            rows.append({**{k: r[k] for k in keep}, 'torch': r.get('torch'), 'tf32': r.get('tf32')})
    by = {(r['preset'], r['arch'], r['engine']): r for r in rows}
    ratios = []
    for (preset, arch, engine), r in sorted(by.items()):
        torch = by.get((preset, arch, 'torch-eager'))
        if engine != 'torch-eager' and torch:
            ratios.append({'preset': preset, 'arch': arch, 'engine': engine, 'ofTorchEager': r['tokensPerSec'] / torch['tokensPerSec']})
    train = {}
    for arch in ('baseline', 'hc', 'mhc'):
        j = load(os.path.join(out, f'train-{arch}.json'), None)
        if j is None:
            err = os.path.join(out, f'train-{arch}.err')
            errors.append({'stage': f'train {arch}', 'stderr': open(err).read()[-2000:] if os.path.exists(err) else 'no output'})
            continue
        train[arch] = {k: j.get(k) for k in ('backend', 'steps', 'trainLoss', 'valLoss', 'evals', 'tokensPerSec', 'seconds', 'error')}
    parity = [r for r in load(os.path.join(out, 'parity.json'), []) if r.get('quantity') in ('environment', 'error') or not r.get('ok', True)
              or r.get('quantity') in ('logits', 'loss', 'h_pre (all layers)', 'h_post (all layers)', 'h_res (all layers)')]
    check = lines(os.path.join(out, 'gpu-check.txt'))
    json.dump({'device': device, 'command': command, 'rows': rows, 'ratios': ratios, 'train': train, 'parity': parity,
               'webgpuVsWasm': check[-1] if check else None, 'errors': errors},
              sys.stdout, indent=1)
    print()


if __name__ == '__main__':
    main()
