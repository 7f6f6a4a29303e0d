"""TensorBoard reads our event files (#15): for each run directory given, TensorBoard's own EventAccumulator loads the
events.out.tfevents.* file that `mhc train` wrote, and every scalar is compared with the run's metrics.jsonl (float32,
as simple_value stores them). Prints one JSON document: the tensorboard version, per run the tags, the number of
points per tag and the largest difference, and `ok`.
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
                expected.setdefault(tag, []).append((r['step'], f32(r[field])))
    acc = EventAccumulator(run, size_guidance={'scalars': 0})  # 0: keep every point
    acc.Reload()
    tags = sorted(acc.Tags()['scalars'])
    out = {'run': run, 'tags': tags, 'points': {}, 'maxAbsDiff': 0.0, 'ok': tags == sorted(expected)}
    for tag in tags:
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        want = expected.get(tag, [])
        out['points'][tag] = len(got)
        if [s for s, _ in got] != [s for s, _ in want]:
            out['ok'] = False
            out.setdefault('stepMismatch', []).append(tag)
            continue
        d = max((abs(a - b) for (_, a), (_, b) in zip(got, want) if math.isfinite(a) and math.isfinite(b)), default=0.0)
        out['maxAbsDiff'] = max(out['maxAbsDiff'], d)
        out['ok'] = out['ok'] and d == 0.0
    return out


def main():
    runs = [check(r) for r in sys.argv[1:]]
    print(json.dumps({'tensorboard': tensorboard.__version__, 'runs': runs, 'ok': all(r['ok'] for r in runs)}, indent=1))


if __name__ == '__main__':
    main()
