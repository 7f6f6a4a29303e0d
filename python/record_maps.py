"""Record a maps file (per-token H_res, H_pre, H_post of every layer) from a PyTorch model through forward hooks, for
`mhc analyze-gain --maps FILE` and `mhc check --maps FILE`.

The file (README, "Maps files"): safetensors with h_res.{l} [tokens, n, n], h_pre.{l} and h_post.{l} [tokens, n], F32;
metadata format = "mhc-maps", version = "1", n, layers, h_res_constraint ("sinkhorn" | "none"), arch, layer_kinds,
source. Rows of H_res are output streams, columns input streams: x_{l+1} = H_res x_l + ...

Out of the box it records our reference model (mhc_ref.py, loaded from `mhc export`): every model.conn[l] returns
(H_pre, H_post, H_res). For another HC/mHC implementation, pass its connection modules in layer order and a function
that turns one hook call into the maps:

    import record_maps
    modules = [blk.hc_attn for blk in model.layers] ...          # one module per residual connection, in order
    def extract(module, args, output):                              # -> H_res [N, n, n], H_pre [N, n] | None, H_post | None
        return output.h_res, output.h_pre, output.h_post
    maps = record_maps.record(model, tokens, modules=modules, extract=extract)
    record_maps.write_maps_file('maps.safetensors', maps, constraint='sinkhorn', source='my trainer, step 5000')

Command line (our reference model):
    python3 python/record_maps.py EXPORT_DIR --text corpus.txt [--tokens 4096] --out maps.safetensors
    python3 python/record_maps.py EXPORT_DIR --tokens-file batch.safetensors:tokens --out maps.safetensors
--text samples windows of seqLen bytes evenly spaced over the text's last 10% (the validation split), the very windows
`mhc analyze-gain --data FILE --tokens N` samples; --tokens-file takes an integer tensor [sequences, T] from a
safetensors file.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mhc_ref  # noqa: E402
import stio  # noqa: E402


def _ours(module, args, output):
    h_pre, h_post, h_res = output
    return h_res, h_pre, h_post


@torch.no_grad()
def record(model, tokens, modules=None, extract=None, batch=16, run=None):
    """Runs `model` on tokens [S, T] (`batch` sequences at a time; `run(model, tokens)` if the model is called some
    other way) in eval mode (no dropout; the mode is restored after), and returns {'h_res': [per layer [S*T, n, n]],
    'h_pre', 'h_post': [per layer [S*T, n]] or None}, float32 numpy, tokens in order (sequence-major). `modules`: one
    per residual connection, in layer order; each must run exactly once per forward pass."""
    modules = list(model.conn) if modules is None else list(modules)
    extract = extract or _ours
    if not modules:
        raise ValueError('no connection modules: a plain residual model has no maps')
    seen = [[] for _ in modules]  # per layer, one (h_res, h_pre, h_post) per forward pass

    def hook(l):
        def fn(module, args, output):
            maps = extract(module, args, output)
            seen[l].append(tuple(None if t is None else t.detach().float().cpu().numpy() for t in maps))
        return fn

    handles = [m.register_forward_hook(hook(l)) for l, m in enumerate(modules)]
    was_training = model.training
    model.eval()
    try:
        for passes, i in enumerate(range(0, tokens.shape[0], batch), start=1):
            (run or (lambda m, t: m(t)))(model, tokens[i:i + batch])
            counts = {len(layer) for layer in seen}
            if counts != {passes}:
                raise ValueError(f'the connection modules ran {sorted(counts)} times in {passes} forward passes: '
                                 'pass one module per residual connection, each run once per forward pass')
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for k, name in enumerate(('h_res', 'h_pre', 'h_post')):
        parts = [[call[k] for call in layer] for layer in seen]
        present = [p is not None for layer in parts for p in layer]
        if not any(present):
            if name == 'h_res':
                raise ValueError('extract returned no H_res')
            out[name] = None
            continue
        if not all(present):
            raise ValueError(f'extract returned {name} for some calls and None for others')
        tail = 2 if name == 'h_res' else 1  # [..., n, n] or [..., n]: leading dimensions become tokens
        out[name] = [np.concatenate([p.reshape(-1, *p.shape[-tail:]) for p in layer]) for layer in parts]
    return out


def write_maps_file(path, maps, constraint=None, arch=None, layer_kinds=None, source=None):
    """Writes what record() returned as a maps file (F32)."""
    h_res = maps['h_res']
    n = h_res[0].shape[-1]
    tensors = {}
    for l, h in enumerate(h_res):
        tensors[f'h_res.{l}'] = np.asarray(h, np.float32)
        for name in ('h_pre', 'h_post'):
            if maps.get(name) is not None:
                tensors[f'{name}.{l}'] = np.asarray(maps[name][l], np.float32)
    meta = {'format': 'mhc-maps', 'version': '1', 'n': str(n), 'layers': str(len(h_res))}
    if constraint:
        meta['h_res_constraint'] = constraint
    if arch:
        meta['arch'] = arch
    if layer_kinds:
        meta['layer_kinds'] = ','.join(layer_kinds)
    if source:
        meta['source'] = source
    stio.write_safetensors(path, tensors, meta)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('export_dir', help='what `mhc export CKPT --out DIR` wrote')
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument('--text', help='UTF-8 text to sample windows from (its last 10%%)')
    src.add_argument('--tokens-file', help='FILE.safetensors:NAME, an integer tensor [sequences, T]')
    ap.add_argument('--tokens', type=int, default=4096, help='with --text: about this many tokens (default 4096)')
    ap.add_argument('--out', required=True)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = ap.parse_args()
    try:
        model, cfg = mhc_ref.load(a.export_dir, device=a.device)
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f'error: {a.export_dir}: not an mhc export ({type(e).__name__}: {e})')
    if cfg['arch'] == 'baseline':
        sys.exit(f'error: {a.export_dir}: a baseline model has no hyper-connection maps')
    if a.text:
        try:
            with open(a.text, 'rb') as f:
                tokens = stio.eval_windows(f.read(), a.tokens, cfg['seqLen'])
        except (OSError, ValueError) as e:
            sys.exit(f'error: --text {a.text}: {e}')
    else:
        file, _, name = a.tokens_file.rpartition(':')
        if not file:
            sys.exit(f'error: --tokens-file {a.tokens_file}: expected FILE.safetensors:NAME')
        try:
            tokens = stio.read_safetensors(file)[0][name].astype(np.int64)
        except (OSError, ValueError, KeyError) as e:
            sys.exit(f'error: --tokens-file {a.tokens_file}: {type(e).__name__}: {e}')
        if tokens.ndim != 2 or tokens.min() < 0 or tokens.max() >= cfg['vocabSize']:
            sys.exit(f'error: --tokens-file {a.tokens_file}: expected integers in [0, {cfg["vocabSize"]}) of shape [sequences, T]')
    maps = record(model, torch.from_numpy(tokens).to(a.device))
    write_maps_file(a.out, maps, constraint='sinkhorn' if cfg['arch'] == 'mhc' else 'none', arch=cfg['arch'],
                    layer_kinds=['attn' if l % 2 == 0 else 'mlp' for l in range(2 * cfg['layers'])],
                    source=f'python/record_maps.py {a.export_dir} (torch {torch.__version__}, {a.device}, '
                           f'{tokens.shape[0]} sequences of {tokens.shape[1]})')
    print(f'{a.out}: {len(maps["h_res"])} layers, {tokens.size} tokens, n = {cfg["expansion"]}')


if __name__ == '__main__':
    main()
