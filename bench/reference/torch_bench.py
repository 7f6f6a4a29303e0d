"""Training throughput of the PyTorch reference (mhc_ref.py) in eager fp32, TF32 off: forward, backward, our
global-norm clipping (1.0) and AdamW, per step, for the presets small / medium / gpu and the archs baseline / hc / mhc
(n = 4, t_max = 20, mlpRatio 4, vocab 256, random tokens).

Each (preset, arch): `--warmup` untimed steps, then `--steps` steps timed as one stretch between two
torch.cuda.synchronize() calls (no host synchronisation inside). Rows (printed as JSON lines, and written to --out
as a JSON list): {"preset", "arch", "engine": "torch-eager", "tokensPerSec", "stepMs", ...config and environment}.
A failing (preset, arch) becomes a row with "error" and the others still run. With --count-kernels, one extra step
runs under torch.profiler to count the GPU kernels it launches.

Usage (repository root):
  python3 bench/reference/torch_bench.py --out bench/reference/results/torch-bench.json --count-kernels
  python3 bench/reference/torch_bench.py --device cpu --presets small --steps 2 --warmup 1      (smoke test)
  gpu preset size: --layers 12 --d-model 512 --heads 8 --seq-len 256 --batch 32 (the defaults)
"""
import argparse
import json
import os
import platform
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'python'))
import mhc_ref  # noqa: E402
import torch_setup  # noqa: E402


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def count_kernels(step, device):
    """GPU kernels (and memcpy/memset) launched by one step, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        sync(device)
    kernels = memops = 0
    for e in prof.events():
        dt = getattr(e, 'device_type', None)
        if dt is None or 'CUDA' not in str(dt):
            continue
        name = e.name.lower()
        if name.startswith('memcpy') or name.startswith('memset'):
            memops += 1
        else:
            kernels += 1
    return kernels, memops


def bench_one(preset, arch, a, device, env):
    p = dict(torch_setup.PRESETS[preset])
    if preset == 'gpu':
        p.update(layers=a.layers, dModel=a.d_model, heads=a.heads, seqLen=a.seq_len, batch=a.batch)
    B, T = p['batch'], p['seqLen']
    cfg = torch_setup.make_config(arch, p['layers'], p['dModel'], p['heads'], T, expansion=a.expansion,
                              sinkhornIters=a.sinkhorn_iters)
    row = {'preset': preset, 'arch': arch, 'engine': 'torch-eager', 'batch': B, 'seqLen': T, 'layers': cfg['layers'],
           'dModel': cfg['dModel'], 'heads': cfg['heads'], 'expansion': cfg['expansion'],
           'sinkhornIters': cfg['sinkhornIters'], 'optimizer': a.optimizer, 'steps': a.steps, 'warmup': a.warmup, **env}
    torch.manual_seed(a.seed)
    model = mhc_ref.init_params(mhc_ref.MhcModel(cfg), a.seed).to(device)
    row['params'] = sum(q.numel() for q in model.parameters())
    params = list(model.parameters())
    hyper = dict(lr=p['lr'], weight_decay=torch_setup.TRAIN_DEFAULTS['weightDecay'],
                 betas=(torch_setup.TRAIN_DEFAULTS['beta1'], torch_setup.TRAIN_DEFAULTS['beta2']), eps=torch_setup.TRAIN_DEFAULTS['adamEps'])
    if a.optimizer == 'ours':
        opt = mhc_ref.AdamW(model, **hyper)
    elif a.optimizer == 'torch-fused':
        opt = torch_setup.torch_adamw(model, fused=True, **hyper)
    else:
        opt = torch_setup.torch_adamw(model, **hyper)
    g = torch.Generator(device='cpu').manual_seed(a.seed + 1)
    batches = [torch.randint(0, cfg['vocabSize'], (B, T + 1), generator=g).to(device) for _ in range(4)]
    clip = torch_setup.TRAIN_DEFAULTS['gradClip']
    state = {'i': 0, 'loss': None}

    def step():
        r = batches[state['i'] % len(batches)]
        state['i'] += 1
        loss = model.loss(r[:, :-1], r[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        mhc_ref.clip_grad_(params, clip)
        opt.step()
        state['loss'] = loss.detach()

    for _ in range(a.warmup):
        step()
    sync(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync(device)
    seconds = time.perf_counter() - t0
    row['stepMs'] = 1000 * seconds / a.steps
    row['tokensPerSec'] = B * T * a.steps / seconds
    row['loss'] = float(state['loss'])
    if device.type == 'cuda':
        row['peakMemMiB'] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    if a.count_kernels and device.type == 'cuda':
        try:
            row['cudaKernelsPerStep'], row['cudaMemopsPerStep'] = count_kernels(step, device)
        except Exception as e:  # noqa: BLE001
            row['countKernelsError'] = f'{type(e).__name__}: {e}'
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--presets', default='small,medium,gpu')
    ap.add_argument('--archs', default='baseline,hc,mhc')
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--warmup', type=int, default=5)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--out', default=None, help='write the rows here as a JSON list')
    ap.add_argument('--optimizer', choices=['torch', 'torch-fused', 'ours'], default='torch',
                    help='torch.optim.AdamW (default: its foreach implementation), its fused one, or our AdamW op for op')
    ap.add_argument('--layers', type=int, default=12, help='gpu preset: Transformer blocks')
    ap.add_argument('--d-model', type=int, default=512, help='gpu preset: C')
    ap.add_argument('--heads', type=int, default=8, help='gpu preset')
    ap.add_argument('--seq-len', type=int, default=256, help='gpu preset: T')
    ap.add_argument('--batch', type=int, default=32, help='gpu preset')
    ap.add_argument('--expansion', type=int, default=4, help='n (hc/mhc)')
    ap.add_argument('--sinkhorn-iters', type=int, default=20, help='t_max (mhc)')
    ap.add_argument('--count-kernels', action='store_true', help='count the GPU kernels of one step (torch.profiler)')
    ap.add_argument('--seed', type=int, default=1337)
    a = ap.parse_args()
    device = torch.device(a.device)
    env = {'device': str(device), 'torch': torch.__version__, 'python': platform.python_version()}
    try:
        env['tf32'] = torch_setup.disable_tf32()
        if device.type == 'cuda':
            env['gpu'] = torch.cuda.get_device_name(device)
        else:
            env['threads'] = torch.get_num_threads()
    except Exception as e:  # noqa: BLE001
        env['envError'] = f'{type(e).__name__}: {e}'
    rows = []

    def save():
        if a.out:
            os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
            with open(a.out, 'w') as f:
                json.dump(rows, f, indent=1)

    for preset in a.presets.split(','):
        for arch in a.archs.split(','):
            try:
                row = bench_one(preset, arch, a, device, env)
            except Exception as e:  # noqa: BLE001 (one GPU run must return everything it can)
                traceback.print_exc()
                row = {'preset': preset, 'arch': arch, 'engine': 'torch-eager', 'error': f'{type(e).__name__}: {e}', **env}
            finally:
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
            save()  # after every row: a run killed midway still leaves what it measured
    print(f"\n{'preset':8s} {'arch':9s} {'tokens/s':>12s} {'step ms':>9s} {'kernels':>8s} {'peak MiB':>9s}")
    for r in rows:
        if 'error' in r:
            print(f"{r['preset']:8s} {r['arch']:9s} ERROR {r['error']}")
        else:
            print(f"{r['preset']:8s} {r['arch']:9s} {r['tokensPerSec']:12,.0f} {r['stepMs']:9.2f} "
                  f"{str(r.get('cudaKernelsPerStep', '-')):>8s} {r.get('peakMemMiB', float('nan')):9.0f}")
    if a.out:
        print(f'wrote {a.out}')
    return 1 if any('error' in r for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
