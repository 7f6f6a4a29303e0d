"""TensorBoard reads our event files (#15): for each run directory given, TensorBoard's own EventAccumulator loads the
events.out.tfevents.* file that `mhc train` wrote, and every scalar is compared with the run's metrics.jsonl (float32,
as simple_value stores them), and every wall time with the record's `time` (exactly: both are doubles). Prints one
JSON document: the tensorboard version, per run the tags, the number of points per tag, the largest value difference,
the largest wall-time difference, and `ok`.
Usage (a machine with the tensorboard package): python3 bench/tensorboard-check.py RUN [RUN ...]
"""
import json
import math
import struct
import sys

import tensorboard
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TAGS = {'step': [('train/loss', 'loss'), ('train/grad_norm', 'gradNorm'), ('train/lr', 'lr'),
                 ('train/tokens_per_sec', 'tokensPerSec')], 'eval': [('val/loss', 'valLoss')]}


def f32(v):
    return struct.unpack('<f', struct.pack('<f', v))[0]


def check(run):
    expected = {}
    with open(f'{run}/metrics.jsonl') as f:
        for line in f:
            r = json.loads(line)
            for tag, field in TAGS.get(r['type'], []):
                expected.setdefault(tag, []).append((r['step'], f32(r[field]), r.get('time')))
    acc = EventAccumulator(run, size_guidance={'scalars': 0})  # 0: keep every point
    acc.Reload()
    tags = sorted(acc.Tags()['scalars'])
    out = {'run': run, 'tags': tags, 'points': {}, 'maxAbsDiff': 0.0, 'maxWallTimeDiff': 0.0,
           'ok': tags == sorted(expected)}
    for tag in tags:
        got = [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)]
        want = expected.get(tag, [])
        out['points'][tag] = len(got)
        if [g[0] for g in got] != [w[0] for w in want]:
            out['ok'] = False
            out.setdefault('stepMismatch', []).append(tag)
            continue
        d = max((abs(g[1] - w[1]) for g, w in zip(got, want) if math.isfinite(g[1]) and math.isfinite(w[1])),
                default=0.0)
        if any(w[2] is None for w in want):
            out['ok'] = False
            out.setdefault('noTime', []).append(tag)
        dt = max((abs(g[2] - w[2]) for g, w in zip(got, want) if w[2] is not None), default=0.0)
        out['maxAbsDiff'] = max(out['maxAbsDiff'], d)
        out['maxWallTimeDiff'] = max(out['maxWallTimeDiff'], dt)
        out['ok'] = out['ok'] and d == 0.0 and dt == 0.0
    return out


def main():
    runs = [check(r) for r in sys.argv[1:]]
    print(json.dumps({'tensorboard': tensorboard.__version__, 'runs': runs, 'ok': all(r['ok'] for r in runs)}, indent=1))


if __name__ == '__main__':
    main()
