"""Parity of the PyTorch reference (python/mhc_ref.py) with OUR TensorFlow.js implementation, on the three fixture
checkpoints (fixtures/{baseline,hc,mhc}/ckpt-000150) loaded through `mhc export` (EXPECTED/exports/<fixture>, nn.Linear
layouts) and the outputs bench/reference/expected.ts wrote for them (EXPECTED/<fixture>.safetensors).

Per fixture and dtype (float32, then float64; TF32 off), rows {"fixture", "quantity", "maxAbs", "maxRel", ...}:
  forward on the expected file's tokens: logits, loss, H_pre / H_post / H_res (all layers, then each layer), and the
  maps again as python/record_maps.py records them through forward hooks;
  one training step from the checkpoint (its AdamW moments, step 150 -> 151, clipping at the expected file's
  threshold): the loss, the gradient norm and every gradient (torch autograd vs ours), the weights after the step
  (our AdamW ported op for op, and torch.optim.AdamW, both from OUR gradients; our AdamW from torch's gradients).
maxAbs = max |torch - ours|; maxRel = maxAbs / max |ours| (relative to the quantity's largest magnitude).
`ok` compares maxAbs with `tol` (indicative tolerances for float32 agreement). Every section runs in its own
try/except: an error becomes a row {"quantity": "error", "section", "error"} and the rest goes on.

Usage (repository root): python3 bench/reference/parity.py [--device cuda] [--dtypes float32,float64]
                         [--expected bench/reference/expected] [--out bench/reference/results/parity.json]
"""
import argparse
import json
import os
import platform
import sys
import time
import traceback

import numpy as np
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
sys.path.insert(0, os.path.join(ROOT, 'python'))
import mhc_ref  # noqa: E402
import torch_setup  # noqa: E402
import record_maps  # noqa: E402
import stio  # noqa: E402

FIXTURES = ['baseline', 'hc', 'mhc']
# Indicative float32 tolerances on maxAbs. weightsTorchGrads is loose: AdamW divides by sqrt(v), so where a gradient is
# zero in exact arithmetic and only rounding noise in both implementations (HC's conn.0.b_pre / alpha_pre: layer 0's
# streams are identical copies of the embedding) different noise becomes an O(lr) difference in the update.
TOL = {'logits': 1e-4, 'loss': 1e-5, 'map': 1e-5, 'grad': 1e-6, 'gradNorm': 2e-5, 'weights': 1e-6, 'weightsTorchGrads': 1e-4}


def diff(got, want):
    a = got.detach().double().cpu().numpy() if torch.is_tensor(got) else np.asarray(got, np.float64)
    b = np.asarray(want, np.float64)
    if a.shape != b.shape:
        raise ValueError(f'shape {a.shape} vs expected {b.shape}')
    ma = float(np.abs(a - b).max()) if a.size else 0.0
    scale = float(np.abs(b).max()) if b.size else 0.0
    return ma, (ma / scale if scale > 0 else ma)


class Rows:
    def __init__(self):
        self.rows = []

    def add(self, fixture, dtype, quantity, got, want, tol, **extra):
        ma, mr = diff(got, want)
        r = {'fixture': fixture, 'dtype': dtype, 'quantity': quantity, 'maxAbs': ma, 'maxRel': mr, 'tol': tol,
             'ok': bool(ma <= tol), **extra}
        self.rows.append(r)
        return r

    def error(self, fixture, dtype, section, e):
        traceback.print_exc()
        self.rows.append({'fixture': fixture, 'dtype': dtype, 'quantity': 'error', 'section': section,
                          'error': f'{type(e).__name__}: {e}'})


def section(rows, fixture, dtype, name):
    """Decorator-like helper: run fn, record an exception as an error row."""
    def run(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 (one GPU run must return everything it can)
            rows.error(fixture, dtype, name, e)
    return run


def check_fixture(rows, fixture, expected_dir, device, dtype):
    dname = str(dtype).replace('torch.', '')
    ckpt = os.path.join(ROOT, 'fixtures', fixture, 'ckpt-000150')
    exp, meta = stio.read_safetensors(os.path.join(expected_dir, f'{fixture}.safetensors'))
    export = os.path.join(expected_dir, 'exports', fixture)
    _, manifest, opt_state = stio.read_checkpoint(ckpt, optimizer=True)  # the AdamW moments, in our layout
    model, cfg = mhc_ref.load(export, device=device, dtype=dtype)
    transposed = set(mhc_ref.read_export_config(export)['transposed'])
    ours_layout = lambda k, t: mhc_ref.to_ours(k, t, transposed)  # noqa: E731 (its own inverse)
    names = [k for k, _ in model.named_parameters()]
    specs = [s[0] for s in stio.param_specs(cfg)]
    if set(names) != set(specs) or set(model.state_dict()) != set(specs):
        raise ValueError(f'parameter names differ from ours: {sorted(set(names) ^ set(specs))[:5]}')
    tok = lambda k: torch.from_numpy(exp[k].astype(np.int64)).to(device)  # noqa: E731

    @section(rows, fixture, dname, 'forward')
    def _():
        with torch.no_grad():
            logits, maps = model(tok('tokens'), return_maps=True)
            loss = torch.nn.functional.cross_entropy(logits, tok('targets').reshape(-1))
        rows.add(fixture, dname, 'logits', logits, exp['logits'], TOL['logits'])
        rows.add(fixture, dname, 'loss', loss, exp['loss'], TOL['loss'])
        L = len(maps)
        if L != (0 if cfg['arch'] == 'baseline' else 2 * cfg['layers']):
            raise ValueError(f'{L} layers of maps')
        for q in ('h_pre', 'h_post', 'h_res'):
            if L:
                rows.add(fixture, dname, f'{q} (all layers)', torch.stack([m[q] for m in maps]),
                         np.stack([exp[f'maps.{l}.{q}'] for l in range(L)]), TOL['map'])
        for l in range(L):
            for q in ('h_pre', 'h_post', 'h_res'):
                rows.add(fixture, dname, f'maps.{l}.{q}', maps[l][q], exp[f'maps.{l}.{q}'], TOL['map'])
        if L:  # the same maps through forward hooks (what record_maps.py writes; float32 numpy)
            hooked = record_maps.record(model, tok('tokens'))
            for q in ('h_pre', 'h_post', 'h_res'):
                rows.add(fixture, dname, f'{q} via forward hooks (all layers)', np.stack(hooked[q]),
                         np.stack([exp[f'maps.{l}.{q}'] for l in range(L)]), TOL['map'])

    st = json.loads(meta['step'])
    t = manifest['step'] + 1
    tc = manifest['train']
    hyper = dict(lr=st['lr'], weight_decay=tc['weightDecay'], betas=(tc['beta1'], tc['beta2']), eps=tc['adamEps'])
    theirs = {}  # torch's gradients, for the last section

    @section(rows, fixture, dname, 'gradients')
    def _():
        model.zero_grad(set_to_none=True)
        loss = model.loss(tok('step.tokens'), tok('step.targets'))
        loss.backward()
        rows.add(fixture, dname, 'step: loss', loss, st['loss'], TOL['loss'])
        gmax = max(float(np.abs(exp[f'grad.{k}']).max()) for k in names if exp[f'grad.{k}'].size)
        worst, worst_rel = None, -1.0
        for k, p in model.named_parameters():
            theirs[k] = p.grad.detach().clone()
            # each parameter relative to its own largest gradient, floored at 1% of the largest of all (some, e.g.
            # conn.0's on identical streams, have gradients that are zero up to rounding)
            ma, _ = diff(ours_layout(k, p.grad), exp[f'grad.{k}'])
            rel = ma / max(float(np.abs(exp[f'grad.{k}']).max()), 0.01 * gmax)
            if rel > worst_rel:
                worst, worst_rel = k, rel
        norm = mhc_ref.clip_grad_([p for _, p in model.named_parameters()], 0.0)
        rows.add(fixture, dname, 'step: gradient norm', norm, st['gradNorm'], TOL['gradNorm'])
        rows.add(fixture, dname, 'step: gradients (all parameters)',
                 torch.cat([ours_layout(k, theirs[k]).reshape(-1) for k in names]),
                 np.concatenate([exp[f'grad.{k}'].reshape(-1) for k in names]), TOL['grad'],
                 worstParam=worst, worstParamMaxRel=worst_rel)

    after = np.concatenate([exp[f'after.{k}'].reshape(-1) for k in names])

    def run_step(make_opt, grads, label):
        m, _ = mhc_ref.load(export, device=device, dtype=dtype)
        params = dict(m.named_parameters())
        opt = make_opt(m)
        for k, p in params.items():  # the checkpoint's moments, at step 150
            # clone: on the CPU in float32 .to() returns the numpy-backed tensor itself, which the step would modify
            mk = ours_layout(k, torch.from_numpy(opt_state[f'm.{k}'])).to(device=device, dtype=dtype).contiguous().clone()
            vk = ours_layout(k, torch.from_numpy(opt_state[f'v.{k}'])).to(device=device, dtype=dtype).contiguous().clone()
            if isinstance(opt, mhc_ref.AdamW):
                opt.m[k], opt.v[k] = mk, vk
            else:
                opt.state[p] = {'step': torch.tensor(float(manifest['step'])), 'exp_avg': mk, 'exp_avg_sq': vk}
        if isinstance(opt, mhc_ref.AdamW):
            opt.t = manifest['step']
        for k, p in params.items():
            p.grad = grads[k].to(device=device, dtype=dtype).contiguous().clone()
        mhc_ref.clip_grad_(list(params.values()), st['gradClip'])
        opt.step()
        per = {k: diff(ours_layout(k, params[k]), exp[f'after.{k}'])[0] for k in names}
        worst = max(per, key=per.get)
        rows.add(fixture, dname, f'step: weights after ({label})',
                 torch.cat([ours_layout(k, params[k].detach()).reshape(-1) for k in names]),
                 after, TOL['weights'] if grads is ours else TOL['weightsTorchGrads'], worstParam=worst,
                 worstParamMaxAbs=per[worst])
        if isinstance(opt, mhc_ref.AdamW) and opt.t != t:
            raise ValueError(f'AdamW step {opt.t}, expected {t}')

    ours = {k: ours_layout(k, torch.from_numpy(exp[f'grad.{k}'])) for k in names}
    manual = lambda m: mhc_ref.AdamW(m, **hyper)  # noqa: E731
    builtin = lambda m: torch_setup.torch_adamw(m, **hyper)  # noqa: E731

    def with_torch_grads():
        if not theirs:
            raise RuntimeError('no torch gradients (see the gradients error)')
        run_step(manual, theirs, 'our AdamW, torch gradients')

    section(rows, fixture, dname, 'step: our AdamW, our gradients')(lambda: run_step(manual, ours, 'our AdamW, our gradients'))
    section(rows, fixture, dname, 'step: torch AdamW, our gradients')(lambda: run_step(builtin, ours, 'torch.optim.AdamW, our gradients'))
    section(rows, fixture, dname, 'step: our AdamW, torch gradients')(with_torch_grads)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--dtypes', default='float32,float64')
    ap.add_argument('--expected', default=os.path.join(ROOT, 'bench', 'reference', 'expected'))
    ap.add_argument('--fixtures', default=','.join(FIXTURES))
    ap.add_argument('--out', default=os.path.join(ROOT, 'bench', 'reference', 'results', 'parity.json'))
    ap.add_argument('--all-layers', action='store_true', help='print every layer\'s map rows too')
    a = ap.parse_args()
    rows = Rows()
    env = {'fixture': None, 'quantity': 'environment', 'device': a.device, 'torch': torch.__version__,
           'python': platform.python_version(), 'numpy': np.__version__, 'time': time.strftime('%Y-%m-%dT%H:%M:%S%z')}
    try:
        env['tf32'] = torch_setup.disable_tf32()
        if a.device.startswith('cuda'):
            env['gpu'] = torch.cuda.get_device_name(torch.device(a.device))
            env['cuda'] = torch.version.cuda
    except Exception as e:  # noqa: BLE001
        env['envError'] = f'{type(e).__name__}: {e}'
    rows.rows.append(env)
    for dt in a.dtypes.split(','):
        for fixture in a.fixtures.split(','):
            try:
                check_fixture(rows, fixture, a.expected, a.device, getattr(torch, dt))
            except Exception as e:  # noqa: BLE001
                rows.error(fixture, dt, 'setup', e)
    for r in rows.rows:
        if r['quantity'] == 'environment':
            print(json.dumps(r))
        elif r['quantity'] == 'error':
            print(f"{r['fixture']:9s} {r['dtype']:8s} ERROR in {r['section']}: {r['error']}")
        elif a.all_layers or not r['quantity'].startswith('maps.'):
            extra = ''
            if 'worstParamMaxRel' in r:
                extra = f"  (worst: {r['worstParam']}, maxRel {r['worstParamMaxRel']:.2e})"
            elif 'worstParamMaxAbs' in r:
                extra = f"  (worst: {r['worstParam']}, maxAbs {r['worstParamMaxAbs']:.2e})"
            print(f"{r['fixture']:9s} {r['dtype']:8s} {r['quantity']:52s} maxAbs {r['maxAbs']:.3e}  maxRel {r['maxRel']:.3e}"
                  f"  {'ok' if r['ok'] else 'ABOVE TOL ' + format(r['tol'], '.0e')}{extra}")
    bad = [r for r in rows.rows if r['quantity'] == 'error' or r.get('ok') is False]
    print(f'{len(rows.rows) - 1 - len(bad)} rows within tolerance, {len(bad)} not (errors or above tolerance)')
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, 'w') as f:
            json.dump(rows.rows, f, indent=1)
        print(f'wrote {a.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
