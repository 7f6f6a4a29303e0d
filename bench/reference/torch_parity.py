"""Collects what bench/reference/torch-parity.sh produced in OUTDIR into one JSON document (stdout):
  forward:  per fixture and dtype, max |torch - ours| and relative to max |ours| of the logits, the loss and H_pre /
            H_post / H_res over all layers (also as recorded through forward hooks), from parity.json;
  gains:    per fixture, `analyze-gain --maps <maps recorded in PyTorch>` against `analyze-gain <checkpoint>`: the
            largest absolute difference over every number of every layer (single, composite and prefix Amax gains,
            mean and max over tokens, the per-layer matrix statistics) and the largest relative difference of the
            gains, and which number each was;
  bf16Import: the mHC export rounded to bf16 by PyTorch, read back by `mhc import`, analysed: its gains against the
            f32 checkpoint's (how much bf16 weights move them);
  summary:  the issue's must-be-true line (fp32 logits and maps within 1e-4) and the largest gain difference;
  rows:     every parity.py row (the training-step rows too).
Usage: python3 bench/reference/torch_parity.py OUTDIR COMMAND
"""
import json
import os
import sys

FORWARD = ('logits', 'loss', 'h_pre (all layers)', 'h_post (all layers)', 'h_res (all layers)',
           'h_pre via forward hooks (all layers)', 'h_post via forward hooks (all layers)',
           'h_res via forward hooks (all layers)')
BOUND = 1e-4


def leaves(x, path=''):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from leaves(v, f'{path}.{k}' if path else k)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from leaves(v, f'{path}[{i}]')
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield path, float(x)


def compare_gains(a, b):
    ra, rb = a['runs'][0], b['runs'][0]
    if (ra['n'], ra['tokens'], len(ra['layers'])) != (rb['n'], rb['tokens'], len(rb['layers'])):
        raise ValueError(f"different shapes: n/tokens/layers {ra['n']}/{ra['tokens']}/{len(ra['layers'])} vs "
                         f"{rb['n']}/{rb['tokens']}/{len(rb['layers'])}")
    keys = ('layers', 'meanSingle', 'meanComposite', 'meanPrefix')
    la = dict(leaves({k: ra[k] for k in keys}))
    lb = dict(leaves({k: rb[k] for k in keys}))
    if la.keys() != lb.keys():
        raise ValueError(f'different fields: {sorted(set(la) ^ set(lb))[:5]}')
    worst_abs = max(la, key=lambda k: abs(la[k] - lb[k]))
    # Relative differences of the gains (Amax forward/backward: all at least ~1); the matrix statistics such as the
    # row-sum error sit at rounding level (~1e-9), where a relative difference says nothing: maxAbs covers them.
    gains = [k for k in la if '.forward.' in k or '.backward.' in k]
    worst_rel = max(gains, key=lambda k: abs(la[k] - lb[k]) / abs(la[k]))
    return {'numbers': len(la), 'tokens': ra['tokens'], 'n': ra['n'], 'layers': len(ra['layers']),
            'maxAbs': abs(la[worst_abs] - lb[worst_abs]), 'maxAbsAt': worst_abs,
            'gainNumbers': len(gains), 'gainsMaxRel': abs(la[worst_rel] - lb[worst_rel]) / abs(la[worst_rel]),
            'gainsMaxRelAt': worst_rel,
            'checkpointCompositeBackwardMax': max(l['composite']['backward']['max'] for l in ra['layers']),
            'mapsCompositeBackwardMax': max(l['composite']['backward']['max'] for l in rb['layers'])}


def main():
    out, command = sys.argv[1], sys.argv[2]
    with open(os.path.join(out, 'parity.json')) as f:
        rows = json.load(f)
    env = next((r for r in rows if r.get('quantity') == 'environment'), {})
    forward = [{k: r[k] for k in ('fixture', 'dtype', 'quantity', 'maxAbs', 'maxRel')}
               for r in rows if r.get('quantity') in FORWARD]
    errors = [r for r in rows if r.get('quantity') == 'error']
    gains = []
    for f in ('hc', 'mhc'):
        try:
            with open(os.path.join(out, f'gain-checkpoint-{f}.json')) as fa, open(os.path.join(out, f'gain-maps-{f}.json')) as fb:
                gains.append({'fixture': f, **compare_gains(json.load(fa), json.load(fb))})
        except Exception as e:  # noqa: BLE001 (report, do not lose the rest)
            gains.append({'fixture': f, 'error': f'{type(e).__name__}: {e}'})
    bf16 = {'fixture': 'mhc', 'what': 'the export rounded to bf16 by PyTorch, mhc import, analyze-gain; against the f32 checkpoint'}
    try:
        with open(os.path.join(out, 'gain-checkpoint-mhc.json')) as fa, open(os.path.join(out, 'gain-bf16-mhc.json')) as fb:
            bf16.update(compare_gains(json.load(fa), json.load(fb)))
    except Exception as e:  # noqa: BLE001
        bf16['error'] = f'{type(e).__name__}: {e}'
    fp32 = [r for r in forward if r['dtype'] == 'float32']
    logits = max((r['maxAbs'] for r in fp32 if r['quantity'] == 'logits'), default=None)
    maps = max((r['maxAbs'] for r in fp32 if r['quantity'].startswith('h_')), default=None)
    fixtures = sorted({r['fixture'] for r in fp32 if r['quantity'] == 'logits'})
    summary = {
        'fp32LogitsMaxAbs': logits, 'fp32MapsMaxAbs': maps, 'bound': BOUND, 'fixtures': fixtures,
        'withinBound': logits is not None and maps is not None and logits <= BOUND and maps <= BOUND
        and fixtures == ['baseline', 'hc', 'mhc'] and not errors,
        'gainsMaxRel': max((g.get('gainsMaxRel', float('inf')) for g in gains), default=None),
        'gainsMaxAbs': max((g.get('maxAbs', float('inf')) for g in gains), default=None),
        'parityRowsAboveTolerance': sum(1 for r in rows if r.get('ok') is False), 'parityErrors': len(errors),
    }
    json.dump({'command': command, 'environment': env, 'summary': summary, 'forward': forward, 'gains': gains,
               'bf16Import': bf16, 'rows': rows}, sys.stdout, indent=1)
    print()


if __name__ == '__main__':
    main()
