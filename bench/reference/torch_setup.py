"""What the benchmarks and the parity check need around python/mhc_ref.py: our presets (model part and peak lr, as
src/model/config.ts has them, plus a bigger GPU size), torch.optim.AdamW with our decay groups, and TF32 off."""
import os

import torch

PRESETS = {  # src/model/config.ts PRESETS (model part; lr is the preset's peak learning rate)
    'tiny': dict(layers=1, dModel=32, heads=2, seqLen=32, batch=8, lr=3e-3),
    'small': dict(layers=4, dModel=128, heads=4, seqLen=64, batch=16, lr=3e-3),
    'deep': dict(layers=12, dModel=64, heads=4, seqLen=64, batch=16, lr=3e-3),
    'medium': dict(layers=6, dModel=256, heads=8, seqLen=128, batch=32, lr=2e-3),
    'gpu': dict(layers=12, dModel=512, heads=8, seqLen=256, batch=32, lr=2e-3),  # not one of ours: a bigger GPU size
}
TRAIN_DEFAULTS = dict(weightDecay=0.1, beta1=0.9, beta2=0.95, adamEps=1e-8, gradClip=1.0)


def make_config(arch, layers, dModel, heads, seqLen, vocabSize=256, mlpRatio=4, expansion=4, sinkhornIters=20,
                gateInit=0.01, normEps=1e-20):
    return dict(arch=arch, vocabSize=vocabSize, seqLen=seqLen, layers=layers, dModel=dModel, heads=heads,
                mlpRatio=mlpRatio, expansion=expansion, sinkhornIters=sinkhornIters, gateInit=gateInit,
                normEps=normEps)


def preset_config(preset, arch, **overrides):
    p = {k: v for k, v in PRESETS[preset].items() if k not in ('batch', 'lr')}
    p.update({k: v for k, v in overrides.items() if v is not None})
    return make_config(arch, **p)


def torch_adamw(model, lr, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, **kw):
    """torch.optim.AdamW with weight decay on our `decay` parameters only. Its update is the same decoupled form:
    p <- p (1 - lr wd), then p <- p - lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) (a different rounding order than ours)."""
    decay = model.decay_names()
    named = list(model.named_parameters())
    groups = [{'params': [p for k, p in named if k in decay], 'weight_decay': weight_decay},
              {'params': [p for k, p in named if k not in decay], 'weight_decay': 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kw)


def disable_tf32():
    """TF32 off for matmuls and cuDNN (the legacy setters: setting only these keeps every getter readable)."""
    info = {}
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    except Exception as e:  # noqa: BLE001
        info['setError'] = f'{type(e).__name__}: {e}'
    for key, get in (('cuda.matmul.allow_tf32', lambda: torch.backends.cuda.matmul.allow_tf32),
                     ('cudnn.allow_tf32', lambda: torch.backends.cudnn.allow_tf32),
                     ('float32_matmul_precision', torch.get_float32_matmul_precision)):
        try:
            info[key] = get()
        except Exception as e:  # noqa: BLE001
            info[key] = f'unreadable: {type(e).__name__}: {e}'
    if os.environ.get('TORCH_ALLOW_TF32_CUBLAS_OVERRIDE'):
        info['TORCH_ALLOW_TF32_CUBLAS_OVERRIDE'] = os.environ['TORCH_ALLOW_TF32_CUBLAS_OVERRIDE']
    return info
