"""Reading and writing safetensors files and reading our checkpoints with numpy only (no torch), shared by mhc_ref.py,
record_maps.py and bench/reference/ (parity.py, numpy_check.py).

safetensors layout: 8-byte little-endian u64 N, N bytes of JSON header {name: {dtype, shape, data_offsets}, ...,
"__metadata__": {str: str}}, then the raw little-endian data; data_offsets are relative to the data section.
The `safetensors` package is used when it is importable, the hand parser otherwise (same result).
"""
import json
import math
import os
import struct

import numpy as np

_DTYPES = {'F64': '<f8', 'F32': '<f4', 'F16': '<f2', 'I64': '<i8', 'I32': '<i4', 'I16': '<i2', 'I8': 'i1', 'U8': 'u1',
           'BOOL': '?'}


def read_safetensors_header(path):
    with open(path, 'rb') as f:
        (n,) = struct.unpack('<Q', f.read(8))
        header = json.loads(f.read(n).decode('utf-8'))
    return header, 8 + n


def _bf16_to_f32(raw):
    """bfloat16 bits (uint16) widened to float32 exactly: they are a float32's upper half."""
    return (raw.astype('<u4') << 16).view('<f4')


def read_safetensors(path, use_package=True):
    """{name: np.ndarray} (native-endian copies; BF16 widened to float32) and the metadata dict."""
    header, start = read_safetensors_header(path)
    metadata = header.pop('__metadata__', {}) or {}
    if use_package and not any(e.get('dtype') == 'BF16' for e in header.values() if isinstance(e, dict)):
        try:
            from safetensors.numpy import load_file
            # The header's shape, always: some versions of the package load a 0-d tensor (shape []) as shape (1,).
            return {k: np.ascontiguousarray(v).reshape(header[k]['shape']) for k, v in load_file(path).items()}, metadata
        except ImportError:
            pass
    with open(path, 'rb') as f:
        f.seek(start)
        data = f.read()
    out = {}
    for name, e in header.items():
        b, end = e['data_offsets']
        if e['dtype'] == 'BF16':
            out[name] = _bf16_to_f32(np.frombuffer(data[b:end], dtype='<u2')).reshape(e['shape']).astype(np.float32)
            continue
        if e['dtype'] not in _DTYPES:
            raise ValueError(f'{path}: tensor {name}: unsupported dtype {e["dtype"]}')
        arr = np.frombuffer(data[b:end], dtype=_DTYPES[e['dtype']]).reshape(e['shape'])
        out[name] = arr.astype(arr.dtype.newbyteorder('='), copy=True)
    return out, metadata


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: np.ndarray} (float64/32/16, int64/32/16/8, uint8, bool) and string metadata as a safetensors
    file, by hand (no package needed): to a temp file beside `path`, then renamed over it. A value may also be
    (code, array) to write the array's bytes under another dtype code, e.g. ('BF16', bf16_tensor.view(torch.int16)
    .numpy()), which numpy cannot name."""
    codes = {np.dtype(v).newbyteorder('<'): k for k, v in _DTYPES.items()}
    header, chunks, offset = {}, [], 0
    if metadata:
        header['__metadata__'] = {str(k): str(v) for k, v in metadata.items()}
    for name, arr in tensors.items():
        code, arr = arr if isinstance(arr, tuple) else (None, arr)
        arr = np.asarray(arr, order='C')  # not ascontiguousarray: it turns a 0-d scalar into shape (1,)
        le = arr.astype(arr.dtype.newbyteorder('<'), copy=False)
        code = code or codes.get(le.dtype)
        if code is None:
            raise ValueError(f'tensor {name}: dtype {arr.dtype} has no safetensors code here')
        data = le.tobytes()
        header[name] = {'dtype': code, 'shape': list(arr.shape), 'data_offsets': [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(',', ':')).encode('utf-8')
    head += b' ' * (-(8 + len(head)) % 8)  # the data section starts 8-byte aligned
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            f.write(struct.pack('<Q', len(head)))
            f.write(head)
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_checkpoint(ckpt_dir, optimizer=False):
    """(weights {name: float32 array in our [in, out] layout}, manifest dict[, optimizer {'m.<name>', 'v.<name>'}])."""
    with open(os.path.join(ckpt_dir, 'manifest.json'), encoding='utf-8') as f:
        manifest = json.load(f)
    if manifest.get('format') != 'mhc-checkpoint':
        raise ValueError(f'{ckpt_dir}: not an mhc checkpoint (format {manifest.get("format")!r})')
    weights, _ = read_safetensors(os.path.join(ckpt_dir, 'model.safetensors'))
    if not optimizer:
        return weights, manifest
    opt, _ = read_safetensors(os.path.join(ckpt_dir, 'optimizer.safetensors'))
    return weights, manifest, opt


def eval_windows(data, tokens, seq_len):
    """About `tokens` bytes of `data`'s last 10% (its validation split) in whole windows of seq_len + 1, evenly spaced:
    the windows mhc analyze-gain samples (src/profile/analysis/maps.ts mapWindows, src/model/io/data.ts evalWindows).
    Returns the window inputs as int64 [count, seq_len]."""
    val = np.frombuffer(bytes(data[int(len(data) * 0.9):]), dtype=np.uint8)
    count = max(1, math.floor(tokens / seq_len + 0.5))  # JavaScript's Math.round, not Python's round-half-even
    span = len(val) - seq_len - 1
    if span < 0:
        raise ValueError(f'the last 10% of the text ({len(val)} bytes) is shorter than one window of {seq_len + 1}')
    offsets = [0] if count <= 1 else [(i * span) // (count - 1) for i in range(count)]
    return np.stack([val[o:o + seq_len] for o in offsets]).astype(np.int64)


def param_specs(cfg):
    """[(name, shape, decay, init)] in our order (src/model/params.ts paramSpecs); init is ('normal', std) or
    ('const', value) or ('fn', f(flat_index) -> value)."""
    V, T, C, L, r, n = cfg['vocabSize'], cfg['seqLen'], cfg['dModel'], cfg['layers'], cfg['mlpRatio'], cfg['expansion']
    arch, gate = cfg['arch'], cfg['gateInit']
    std = 0.02
    proj_std = std / (2 * L) ** 0.5
    specs = [('tok_emb.weight', [V, C], True, ('normal', std)), ('pos_emb.weight', [T, C], True, ('normal', std))]
    for b in range(L):
        p = f'blocks.{b}'
        specs += [
            (f'{p}.attn.norm.weight', [C], False, ('const', 1.0)),
            (f'{p}.attn.qkv.weight', [C, 3 * C], True, ('normal', std)),
            (f'{p}.attn.proj.weight', [C, C], True, ('normal', proj_std)),
            (f'{p}.mlp.norm.weight', [C], False, ('const', 1.0)),
            (f'{p}.mlp.fc.weight', [C, r * C], True, ('normal', std)),
            (f'{p}.mlp.proj.weight', [r * C, C], True, ('normal', proj_std)),
        ]
    if arch != 'baseline':
        for l in range(2 * L):
            p = f'conn.{l}'
            diagonal = lambda i: i // n == i % n  # noqa: E731
            if arch == 'hc':
                b_res = ('fn', lambda i: 1.0 if diagonal(i) else 0.0)
                b_pre = ('fn', (lambda l_: lambda i: 1.0 if i == l_ % n else 0.0)(l))
                b_post = ('const', 1.0)
                proj = (f'{p}.theta', [C, 2 + n])
            else:
                b_res = ('fn', lambda i: 0.0 if diagonal(i) else -4.0)
                b_pre = ('const', -float(np.log(n - 1)))
                b_post = ('const', 0.0)
                proj = (f'{p}.phi', [n * C, 2 * n + n * n])
            specs += [
                (proj[0], proj[1], True, ('normal', std)),
                (f'{p}.alpha_pre', [], False, ('const', gate)),
                (f'{p}.alpha_post', [], False, ('const', gate)),
                (f'{p}.alpha_res', [], False, ('const', gate)),
                (f'{p}.b_pre', [n], False, b_pre),
                (f'{p}.b_post', [n], False, b_post),
                (f'{p}.b_res', [n, n], False, b_res),
            ]
    specs += [('norm.weight', [C], False, ('const', 1.0)), ('lm_head.weight', [C, V], True, ('normal', std))]
    return specs
