"""PyTorch reference of the mhc project's model (src/model/params.ts, src/model/engines/tfjs/network.ts): baseline, HC and mHC byte-level Transformers.

Same maths and parameter names as ours, in PyTorch's layouts, so that it loads what `mhc export` writes:
  * state_dict() keys equal our tensor names (tok_emb.weight, blocks.{b}.attn.qkv.weight, conn.{l}.phi, ...);
  * the matrices our checkpoints store [in, out] (y = x @ W) are nn.Linear-shaped here, [out, in] (y = x @ W.T): the
    export's config.json lists them under "transposed" (the one list is `linear` in src/model/params.ts);
  * RMSNorm x * rsqrt(mean(x^2) + eps) (eps = normEps, 1e-20), GELU x * sigmoid(1.702 x), causal mask -1e9 ADDED to
    the scores, connection l = 2b (attention of block b), 2b + 1 (its MLP);
  * HC: per-stream RMSNorm (no weight), theta -> [pre | post | res], tanh, alpha gates, b biases,
    H_res = alpha_res * tanh(res^T) + b_res;
  * mHC: RMSNorm of the flattened n*C stream, phi -> [pre | post | res], H_pre = sigmoid(.),
    H_post = 2 sigmoid(.), H_res = Sinkhorn-Knopp(alpha_res * res.view(n, n) + b_res), columns then rows, t_max times;
  * x_{l+1} = H_res x_l + H_post^T F(H_pre x_l); the embedding is copied to the n streams; the streams are summed
    before the final norm; loss = mean next-byte cross-entropy.

Each connection is a module, model.conn[l], whose forward(x_l [N, n, C]) returns (H_pre [N, n], H_post [N, n],
H_res [N, n, n]): forward hooks on those modules see every layer's maps (record_maps.py).

API: MhcModel(cfg), model(tokens) -> logits [B*T, V], model(tokens, return_maps=True) -> (logits, maps),
model.loss(tokens, targets), load(export_dir) -> (model, cfg), init_params(cfg or model, seed) -> model, AdamW (ours,
hand-written), clip_grad_(params, max_norm) (ours), to_ours(name, tensor, transposed) (a tensor back in our [in, out]
layout). Benchmark helpers (presets, torch.optim.AdamW with our decay groups, TF32 off) are in
bench/reference/torch_setup.py.
cfg is our ModelConfig as a dict (camelCase keys, as in config.json's "model").
"""
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stio  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# Building blocks (functions of tensors, as in model.ts)

def rms_norm(x, eps, weight=None):
    y = x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps)
    return y * weight if weight is not None else y


def gelu(x):
    return x * torch.sigmoid(x * 1.702)


def sinkhorn_knopp(logits, iters):
    """Doubly stochastic projection of [..., n, n] logits: M0 = exp(max(z - max z, -80)), then `iters` times divide by
    the column sums, then by the row sums. The max shift is detached (SK ignores a constant), as in our fused kernel."""
    z = logits - logits.amax(dim=(-2, -1), keepdim=True).detach()
    m = torch.exp(torch.clamp(z, min=-80.0))
    for _ in range(iters):
        m = m / m.sum(dim=-2, keepdim=True)  # T_c: every column sums to 1
        m = m / m.sum(dim=-1, keepdim=True)  # T_r: every row sums to 1
    return m


class _W(nn.Module):
    """One parameter called `weight` (so that state_dict keys read like ours: `norm.weight`)."""

    def __init__(self, *shape):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*shape))


def _linear(n_in, n_out):
    return nn.Linear(n_in, n_out, bias=False)  # weight [out, in]


class Attention(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.norm, self.qkv, self.proj = _W(C), _linear(C, 3 * C), _linear(C, C)


class Mlp(nn.Module):
    def __init__(self, C, ratio):
        super().__init__()
        self.norm, self.fc, self.proj = _W(C), _linear(C, ratio * C), _linear(ratio * C, C)


class Block(nn.Module):
    def __init__(self, C, ratio):
        super().__init__()
        self.attn, self.mlp = Attention(C), Mlp(C, ratio)


class Connection(nn.Module):
    """conn.{l}: theta [2+n, C] (hc) or phi [2n+n^2, nC] (mhc), both [out, in]; alpha_pre/post/res (scalars);
    b_pre/b_post [n], b_res [n, n]. forward(xs [N, n, C]) -> (H_pre [N, n], H_post [N, n], H_res [N, n, n])."""

    def __init__(self, arch, C, n, eps, sinkhorn_iters):
        super().__init__()
        self.arch, self.n, self.eps, self.sinkhorn_iters = arch, n, eps, sinkhorn_iters
        if arch == 'hc':
            self.theta = nn.Parameter(torch.empty(2 + n, C))
        else:
            self.phi = nn.Parameter(torch.empty(2 * n + n * n, n * C))
        self.alpha_pre = nn.Parameter(torch.empty(()))
        self.alpha_post = nn.Parameter(torch.empty(()))
        self.alpha_res = nn.Parameter(torch.empty(()))
        self.b_pre = nn.Parameter(torch.empty(n))
        self.b_post = nn.Parameter(torch.empty(n))
        self.b_res = nn.Parameter(torch.empty(n, n))

    def forward(self, xs):
        N, n, C = xs.shape
        if self.arch == 'hc':
            proj = F.linear(rms_norm(xs, self.eps).reshape(N * n, C), self.theta).reshape(N, n, 2 + n)
            pre, post, res = proj.split([1, 1, n], dim=2)
            h_pre = self.alpha_pre * torch.tanh(pre.reshape(N, n)) + self.b_pre
            h_post = self.alpha_post * torch.tanh(post.reshape(N, n)) + self.b_post
            # res[N, j, i] = theta_res_i . x~_j and H_res[i, j] = theta_res_i . x~_j: hence the transpose.
            h_res = self.alpha_res * torch.tanh(res.transpose(1, 2)) + self.b_res
            return h_pre, h_post, h_res
        proj = F.linear(rms_norm(xs.reshape(N, n * C), self.eps), self.phi)
        pre, post, res = proj.split([n, n, n * n], dim=1)
        h_pre = torch.sigmoid(self.alpha_pre * pre + self.b_pre)
        h_post = 2 * torch.sigmoid(self.alpha_post * post + self.b_post)
        h_res = sinkhorn_knopp(self.alpha_res * res.reshape(N, n, n) + self.b_res, self.sinkhorn_iters)
        return h_pre, h_post, h_res


class MhcModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = dict(cfg)
        V, T, C, L = cfg['vocabSize'], cfg['seqLen'], cfg['dModel'], cfg['layers']
        if cfg['arch'] not in ('baseline', 'hc', 'mhc'):
            raise ValueError(f'unknown arch {cfg["arch"]!r}')
        if C % cfg['heads']:
            raise ValueError(f'dModel {C} is not divisible by heads {cfg["heads"]}')
        self.tok_emb, self.pos_emb = _W(V, C), _W(T, C)
        self.blocks = nn.ModuleList(Block(C, cfg['mlpRatio']) for _ in range(L))
        if cfg['arch'] != 'baseline':
            self.conn = nn.ModuleList(Connection(cfg['arch'], C, cfg['expansion'], cfg['normEps'], cfg['sinkhornIters'])
                                      for _ in range(2 * L))
        self.norm, self.lm_head = _W(C), _linear(C, V)
        self._masks = {}
        with torch.no_grad():  # zeros until weights are loaded (load) or drawn (init_params)
            for name, p in self.named_parameters():
                p.zero_()

    # -- sublayers ------------------------------------------------------------------------------------------------
    def causal_mask(self, T, device, dtype):
        key = (T, str(device), dtype)
        m = self._masks.get(key)
        if m is None:
            m = torch.triu(torch.full((T, T), -1e9, dtype=dtype, device=device), diagonal=1)
            self._masks[key] = m
        return m

    def attention(self, b, h, B, T):
        a = self.blocks[b].attn
        C, H = self.cfg['dModel'], self.cfg['heads']
        D = C // H
        x = rms_norm(h, self.cfg['normEps'], a.norm.weight)
        q, k, v = (t.reshape(B, T, H, D).transpose(1, 2) for t in a.qkv(x).split(C, dim=1))  # [B, H, T, D]
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D)) + self.causal_mask(T, h.device, h.dtype)
        y = torch.softmax(scores, dim=-1) @ v  # [B, H, T, D]
        return a.proj(y.transpose(1, 2).reshape(B * T, C))

    def mlp(self, b, h):
        m = self.blocks[b].mlp
        return m.proj(gelu(m.fc(rms_norm(h, self.cfg['normEps'], m.norm.weight))))

    # -- connections ----------------------------------------------------------------------------------------------
    @staticmethod
    def apply_connection(maps, xs, F_):
        h_pre, h_post, h_res = maps
        y = F_((xs * h_pre.unsqueeze(2)).sum(dim=1))  # F(H_pre x_l): [N, C]
        return h_res @ xs + h_post.unsqueeze(2) * y.unsqueeze(1)

    # -- the model --------------------------------------------------------------------------------------------------
    def forward(self, tokens, return_maps=False):
        """tokens: int64 [B, T] (T <= seqLen). Returns logits [B*T, V]; with return_maps also a list, one entry per
        connection, of {'h_pre': [N, n], 'h_post': [N, n], 'h_res': [N, n, n]} (empty for the baseline)."""
        B, T = tokens.shape
        N, C, arch = B * T, self.cfg['dModel'], self.cfg['arch']
        x = (F.embedding(tokens, self.tok_emb.weight) + self.pos_emb.weight[:T]).reshape(N, C)
        if arch != 'baseline':
            x = x.unsqueeze(1).expand(N, self.cfg['expansion'], C)  # the embedding on every stream
        maps = []
        for l in range(2 * self.cfg['layers']):
            b = l // 2
            F_ = (lambda h, b=b: self.attention(b, h, B, T)) if l % 2 == 0 else (lambda h, b=b: self.mlp(b, h))
            if arch == 'baseline':
                x = x + F_(x)
                continue
            m = self.conn[l](x)  # (H_pre, H_post, H_res): what forward hooks on conn[l] see
            if return_maps:
                maps.append({'h_pre': m[0], 'h_post': m[1], 'h_res': m[2]})
            x = self.apply_connection(m, x, F_)
        if arch != 'baseline':
            x = x.sum(dim=1)  # streams summed before the final norm
        logits = self.lm_head(rms_norm(x, self.cfg['normEps'], self.norm.weight))
        return (logits, maps) if return_maps else logits

    def loss(self, tokens, targets):
        """Mean next-byte cross-entropy (nats)."""
        return F.cross_entropy(self(tokens), targets.reshape(-1))

    def decay_names(self):
        return {name for name, _, decay, _ in stio.param_specs(self.cfg) if decay}


# ---------------------------------------------------------------------------------------------------------------
# Parameters: our checkpoints, a fresh init

def load(export_dir, device='cpu', dtype=torch.float32):
    """What `mhc export` wrote (config.json + model.safetensors, nn.Linear layouts) -> (MhcModel, cfg)."""
    config = read_export_config(export_dir)
    cfg = config['model']
    weights, _ = stio.read_safetensors(os.path.join(export_dir, 'model.safetensors'))
    model = MhcModel(cfg)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return model.to(device=device, dtype=dtype), cfg


def read_export_config(export_dir):
    with open(os.path.join(export_dir, 'config.json'), encoding='utf-8') as f:
        config = json.load(f)
    if config.get('format', 'mhc-pytorch') != 'mhc-pytorch' or 'model' not in config:
        raise ValueError(f'{export_dir}: config.json is not an mhc export (run mhc export CKPT --out DIR)')
    return config


def to_ours(name, t, transposed):
    """A tensor of parameter `name` in our [in, out] layout (transposed: the export's config.json "transposed")."""
    return t.T if name in transposed else t


def init_params(model, seed=1337):
    """A model (or a cfg dict: a new MhcModel) with our initialisation scheme (model.ts paramSpecs: N(0, 0.02), depth-scaled output projections, the b biases that
    make the untrained network a pre-norm residual one, alpha = gateInit), drawn with torch's generator: the same
    distribution as ours, not the same numbers."""
    if isinstance(model, dict):
        model = MhcModel(model)
    g = torch.Generator(device='cpu').manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, shape, _, (kind, arg) in stio.param_specs(model.cfg):
            p = params[name]
            if kind == 'normal':  # p.shape: nn.Linear weights are the transpose of our spec's shape
                t = torch.randn(tuple(p.shape), generator=g, dtype=torch.float32) * arg
            elif kind == 'const':
                t = torch.full(shape, float(arg))
            else:
                size = math.prod(shape)
                t = torch.tensor([arg(i) for i in range(size)], dtype=torch.float32).reshape(shape)
            p.copy_(t)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Optimiser: global-norm clipping and AdamW as src/model/engines/tfjs/engine.ts

def clip_grad_(params, max_norm):
    """Ours: scale every gradient by max_norm / ||g|| when the global norm exceeds max_norm (0: no clipping). Returns
    the global norm before clipping (a device tensor; no host synchronisation)."""
    grads = [p.grad for p in params if p.grad is not None]
    if hasattr(torch, '_foreach_norm'):
        norms = torch._foreach_norm(grads)
    else:
        norms = [torch.linalg.vector_norm(g) for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms))
    if max_norm > 0:
        scale = torch.clamp(max_norm / total, max=1.0)
        if hasattr(torch, '_foreach_mul_'):
            torch._foreach_mul_(grads, scale)
        else:
            for g in grads:
                g.mul_(scale)
    return total


class AdamW:
    """Our AdamW, op for op (train.ts trainStep): m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    update = (m / bc1) / (sqrt(v / bc2) + eps); p = p (1 - lr wd) [decay params only] - lr update."""

    def __init__(self, model, lr, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8):
        decay = model.decay_names()
        self.named = [(k, p, k in decay) for k, p in model.named_parameters()]
        self.lr, self.wd, self.betas, self.eps = lr, weight_decay, betas, eps
        self.t = 0
        self.m = {k: torch.zeros_like(p) for k, p, _ in self.named}
        self.v = {k: torch.zeros_like(p) for k, p, _ in self.named}

    def zero_grad(self, set_to_none=True):
        for _, p, _ in self.named:
            p.grad = None

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for k, p, decay in self.named:
            g = p.grad
            m = self.m[k].mul_(b1).add_(g * (1 - b1))
            v = self.v[k].mul_(b2).add_(g.square() * (1 - b2))
            update = (m / bc1) / ((v / bc2).sqrt() + self.eps)
            if decay:
                p.mul_(1 - self.lr * self.wd)
            p.sub_(update * self.lr)
