"""A float64 numpy port of the forward pass (structurally parallel to mhc_ref.py) and of our AdamW step, checked
against the files bench/reference/expected.ts writes. Runs without torch: it validates the index conventions that
mhc_ref.py uses (the qkv split, the head layout, the HC transpose, Sinkhorn order, the stream maps).

Usage (repository root): python3 bench/reference/numpy_check.py [--expected bench/reference/expected]
                                                                [--out bench/reference/results/numpy-check.json]
"""
import argparse
import json
import os
import sys
import traceback

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'python'))
import stio  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
FIXTURES = ['baseline', 'hc', 'mhc']


# ---------------------------------------------------------------------------------------------------------------
# The model (mhc_ref.py MhcModel, in numpy float64)

def rms_norm(x, eps, weight=None):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y * weight if weight is not None else y


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def gelu(x):
    return x * sigmoid(1.702 * x)


def sinkhorn_knopp(z, iters):
    m = np.exp(np.maximum(z - z.max(axis=(-2, -1), keepdims=True), -80.0))
    for _ in range(iters):
        m = m / m.sum(axis=-2, keepdims=True)  # T_c: columns sum to 1
        m = m / m.sum(axis=-1, keepdims=True)  # T_r: rows sum to 1
    return m


def causal_mask(T):
    return np.triu(np.full((T, T), -1e9), k=1)


def attention(p, b, cfg, h, B, T):
    C, H = cfg['dModel'], cfg['heads']
    D = C // H
    x = rms_norm(h, cfg['normEps'], p[f'blocks.{b}.attn.norm.weight'])
    qkv = x @ p[f'blocks.{b}.attn.qkv.weight']  # [N, 3C] = q | k | v
    q, k, v = (qkv[:, i * C:(i + 1) * C].reshape(B, T, H, D).transpose(0, 2, 1, 3) for i in range(3))  # [B, H, T, D]
    scores = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / np.sqrt(D)) + causal_mask(T)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    y = (scores / scores.sum(-1, keepdims=True)) @ v  # [B, H, T, D]
    return y.transpose(0, 2, 1, 3).reshape(B * T, C) @ p[f'blocks.{b}.attn.proj.weight']


def mlp(p, b, cfg, h):
    x = rms_norm(h, cfg['normEps'], p[f'blocks.{b}.mlp.norm.weight'])
    return gelu(x @ p[f'blocks.{b}.mlp.fc.weight']) @ p[f'blocks.{b}.mlp.proj.weight']


def connection_maps(p, l, cfg, xs):
    N, n, C = xs.shape
    q = f'conn.{l}'
    eps = cfg['normEps']
    if cfg['arch'] == 'hc':
        proj = (rms_norm(xs, eps).reshape(N * n, C) @ p[f'{q}.theta']).reshape(N, n, 2 + n)
        pre, post, res = proj[:, :, 0], proj[:, :, 1], proj[:, :, 2:]
        h_pre = p[f'{q}.alpha_pre'] * np.tanh(pre) + p[f'{q}.b_pre']
        h_post = p[f'{q}.alpha_post'] * np.tanh(post) + p[f'{q}.b_post']
        h_res = p[f'{q}.alpha_res'] * np.tanh(res.transpose(0, 2, 1)) + p[f'{q}.b_res']
        return h_pre, h_post, h_res
    proj = rms_norm(xs.reshape(N, n * C), eps) @ p[f'{q}.phi']
    pre, post, res = proj[:, :n], proj[:, n:2 * n], proj[:, 2 * n:]
    h_pre = sigmoid(p[f'{q}.alpha_pre'] * pre + p[f'{q}.b_pre'])
    h_post = 2.0 * sigmoid(p[f'{q}.alpha_post'] * post + p[f'{q}.b_post'])
    h_res = sinkhorn_knopp(p[f'{q}.alpha_res'] * res.reshape(N, n, n) + p[f'{q}.b_res'], cfg['sinkhornIters'])
    return h_pre, h_post, h_res


def apply_connection(maps, xs, F):
    h_pre, h_post, h_res = maps
    y = F((xs * h_pre[:, :, None]).sum(axis=1))
    return h_res @ xs + h_post[:, :, None] * y[:, None, :]


def forward(p, cfg, tokens):
    B, T = tokens.shape
    N = B * T
    x = (p['tok_emb.weight'][tokens] + p['pos_emb.weight'][:T]).reshape(N, cfg['dModel'])
    if cfg['arch'] != 'baseline':
        x = np.repeat(x[:, None, :], cfg['expansion'], axis=1)
    maps = []
    for l in range(2 * cfg['layers']):
        F = (lambda h, b=l // 2: attention(p, b, cfg, h, B, T)) if l % 2 == 0 else (lambda h, b=l // 2: mlp(p, b, cfg, h))
        if cfg['arch'] == 'baseline':
            x = x + F(x)
            continue
        m = connection_maps(p, l, cfg, x)
        maps.append(m)
        x = apply_connection(m, x, F)
    if cfg['arch'] != 'baseline':
        x = x.sum(axis=1)
    return rms_norm(x, cfg['normEps'], p['norm.weight']) @ p['lm_head.weight'], maps


def cross_entropy(logits, targets):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.mean(logp[np.arange(len(logp)), targets.reshape(-1)])


# ---------------------------------------------------------------------------------------------------------------
# AdamW as src/model/engines/tfjs/engine.ts trainStep (global-norm clipping, bias correction, decoupled decay on `decay` params)

def adamw_step(params, grads, m, v, decay, t, lr, wd, beta1, beta2, eps, clip):
    norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    scale = clip / norm if clip > 0 and norm > clip else 1.0
    bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
    out = {}
    for k, p in params.items():
        g = grads[k] * scale
        m1 = m[k] * beta1 + g * (1 - beta1)
        v1 = v[k] * beta2 + g * g * (1 - beta2)
        update = (m1 / bc1) / (np.sqrt(v1 / bc2) + eps)
        out[k] = (p * (1 - lr * wd) if k in decay else p) - lr * update
    return out, norm


# ---------------------------------------------------------------------------------------------------------------

def diff(a, b):
    """maxAbs = max |a - b|; maxRel = maxAbs / max |b| (relative to the quantity's largest magnitude, as parity.py)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f'shape {a.shape} vs expected {b.shape}')
    ma = float(np.abs(a - b).max()) if a.size else 0.0
    scale = float(np.abs(b).max()) if b.size else 0.0
    return ma, (ma / scale if scale > 0 else ma)


def check(fixture, expected_dir):
    rows = []
    ckpt = os.path.join(ROOT, 'fixtures', fixture, 'ckpt-000150')
    w, manifest, opt = stio.read_checkpoint(ckpt, optimizer=True)
    cfg = manifest['model']
    specs = stio.param_specs(cfg)
    if [s[0] for s in specs] != list(w) or any(list(w[k].shape) != s for k, s, _, _ in specs):
        raise ValueError(f'{fixture}: checkpoint tensors do not match param_specs')
    exp, meta = stio.read_safetensors(os.path.join(expected_dir, f'{fixture}.safetensors'))
    p = {k: v.astype(np.float64) for k, v in w.items()}

    def row(quantity, got, want):
        ma, mr = diff(got, want)
        rows.append({'fixture': fixture, 'quantity': quantity, 'maxAbs': ma, 'maxRel': mr, 'dtype': 'float64', 'engine': 'numpy'})

    logits, maps = forward(p, cfg, exp['tokens'].astype(np.int64))
    row('logits', logits, exp['logits'])
    row('loss', cross_entropy(logits, exp['targets'].astype(np.int64)), exp['loss'])
    for name, i in (('h_pre', 0), ('h_post', 1), ('h_res', 2)):
        if maps:
            row(f'{name} (all layers)', np.stack([m[i] for m in maps]), np.stack([exp[f'maps.{l}.{name}'] for l in range(len(maps))]))
    for l, m in enumerate(maps):
        for name, i in (('h_pre', 0), ('h_post', 1), ('h_res', 2)):
            row(f'maps.{l}.{name}', m[i], exp[f'maps.{l}.{name}'])
    # AdamW from OUR gradients (this checks the optimiser maths only; torch checks the gradients on the GPU).
    st = json.loads(meta['step'])
    tc = manifest['train']
    grads = {k: exp[f'grad.{k}'].astype(np.float64) for k in w}
    decay = {k for k, _, d, _ in specs if d}
    after, norm = adamw_step(p, grads, {k: opt[f'm.{k}'].astype(np.float64) for k in w}, {k: opt[f'v.{k}'].astype(np.float64) for k in w},
                             decay, manifest['step'] + 1, st['lr'], tc['weightDecay'], tc['beta1'], tc['beta2'], tc['adamEps'], st['gradClip'])
    row('step: grad norm (from our grads)', norm, st['gradNorm'])
    row('step: weights after AdamW (from our grads)', np.concatenate([after[k].ravel() for k in w]),
        np.concatenate([exp[f'after.{k}'].ravel() for k in w]))
    row('step: weight change (from our grads)', np.concatenate([(after[k] - p[k]).ravel() for k in w]),
        np.concatenate([(exp[f'after.{k}'].astype(np.float64) - p[k]).ravel() for k in w]))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--expected', default=os.path.join(ROOT, 'bench', 'reference', 'expected'))
    ap.add_argument('--out', default=None, help='write the rows as JSON here')
    ap.add_argument('--all-layers', action='store_true', help='print every layer, not only the all-layer rows')
    a = ap.parse_args()
    rows = []
    for fixture in FIXTURES:
        try:
            rows += check(fixture, a.expected)
        except Exception as e:  # one broken fixture must not hide the others
            traceback.print_exc()
            rows.append({'fixture': fixture, 'quantity': 'error', 'error': f'{type(e).__name__}: {e}'})
    for r in rows:
        if 'error' in r:
            print(f"{r['fixture']:9s} ERROR {r['error']}")
        elif a.all_layers or not r['quantity'].startswith('maps.'):
            print(f"{r['fixture']:9s} {r['quantity']:45s} maxAbs {r['maxAbs']:.3e}  maxRel {r['maxRel']:.3e}")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, 'w') as f:
            json.dump(rows, f, indent=1)
    return 1 if any('error' in r for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
