// The PyTorch side's file handling (python/stio.py, numpy only) against ours, across the language boundary: what one
// writes the other reads, 0-d scalars, bf16 and all; and the token windows record_maps.py --text takes are the ones
// analyze-gain samples. Needs python3 with numpy (on every machine of ours; torch is not needed).
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, test} from 'node:test'

import {mobyDickText, windowsToBatch} from '../src/model/io/data.js'
import {decodeSafetensors, encodeSafetensors} from '../src/model/io/safetensors.js'
import {mapWindows} from '../src/profile/analysis/maps.js'
import {repo} from './helpers.js'

let root = ''
before(() => {
  root = mkdtempSync(join(tmpdir(), 'mhc-python-'))
})
after(() => rmSync(root, {recursive: true, force: true}))

/** Runs Python with python/ importable; returns its stdout (it must exit 0). */
function python(code: string): string {
  const r = spawnSync(
    'python3',
    ['-c', `import sys, json\nsys.path.insert(0, ${JSON.stringify(join(repo, 'python'))})\n${code}`],
    {
      encoding: 'utf8',
    },
  )
  assert.equal(r.status, 0, `python3 failed:\n${r.stderr}`)
  return r.stdout
}

test('stio.write_safetensors → our decoder: 0-d scalars stay 0-d, bf16 and f64 exact', () => {
  const file = join(root, 'from-python.safetensors')
  python(`
import numpy as np, stio
bf16 = np.array([0x3f80, 0xc040, 0x0001, 0x8000], dtype='<u2')  # 1, -3, the smallest subnormal, -0
stio.write_safetensors(${JSON.stringify(file)}, {
    'alpha': np.float32(0.25),
    'w': np.arange(6, dtype=np.float64).reshape(2, 3) / 3,
    'b': ('BF16', bf16),
    'i': np.array([1, -2], dtype=np.int64),
}, {'producer': 'test'})`)
  const {tensors, metadata} = decodeSafetensors(readFileSync(file))
  assert.deepEqual(metadata, {producer: 'test'})
  assert.deepEqual(tensors.alpha.shape, [])
  assert.deepEqual([...(tensors.alpha.data as Float32Array)], [0.25])
  assert.deepEqual(
    [...(tensors.w.data as Float64Array)],
    [0, 1, 2, 3, 4, 5].map((v) => v / 3),
  )
  assert.equal(tensors.b.dtype, 'BF16')
  const b = [...(tensors.b.data as Float32Array)]
  assert.deepEqual(b.slice(0, 3), [1, -3, 2 ** -133])
  assert.ok(Object.is(b[3], -0))
  assert.deepEqual([...(tensors.i.data as BigInt64Array)], [1n, -2n])
})

test('our encoder → stio.read_safetensors (the hand parser): shapes, f16/bf16 widened exactly', () => {
  const file = join(root, 'from-node.safetensors')
  const raw = (bits: number[]) => new Uint8Array(Uint16Array.from(bits).buffer)
  writeFileSync(
    file,
    encodeSafetensors({
      s: {dtype: 'F32', shape: [], data: Float32Array.of(-1.5)},
      h: {dtype: 'F16', shape: [3], data: raw([0x3c_00, 0x00_01, 0xfb_ff])}, // 1, 2^-24, -65504
      b: {dtype: 'BF16', shape: [2], data: raw([0x3e_aa, 0x7f_7f])}, // 0.33203125, the largest finite
    }),
  )
  const out = JSON.parse(
    python(`
import stio
t, _ = stio.read_safetensors(${JSON.stringify(file)}, use_package=False)
print(json.dumps({k: {'shape': list(v.shape), 'values': [float(x) for x in v.reshape(-1)]} for k, v in t.items()}))`),
  )
  assert.deepEqual(out.s, {shape: [], values: [-1.5]})
  assert.deepEqual(out.h, {shape: [3], values: [1, 2 ** -24, -65_504]})
  assert.deepEqual(out.b, {shape: [2], values: [0.332_031_25, (2 - 2 ** -7) * 2 ** 127]})
})

test('stio.eval_windows takes the windows analyze-gain samples, half-way token counts included', () => {
  const text = join(root, 'moby.txt')
  writeFileSync(text, mobyDickText())
  const bytes = new TextEncoder().encode(mobyDickText())
  const val = bytes.subarray(Math.floor(bytes.length * (1 - 0.1)))
  for (const [tokens, seqLen] of [
    [80, 32], // 2.5 windows: JavaScript rounds half up
    [4096, 32],
    [1, 64],
    [200, 64],
  ]) {
    const ours = windowsToBatch(val, mapWindows(val, tokens, seqLen), seqLen).x
    const theirs = JSON.parse(
      python(`
import stio
print(json.dumps(stio.eval_windows(open(${JSON.stringify(text)}, 'rb').read(), ${tokens}, ${seqLen}).reshape(-1).tolist()))`),
    )
    assert.deepEqual(theirs, [...ours], `tokens ${tokens}, seqLen ${seqLen}`)
  }
})

test('the committed PyTorch parity (bench/results/torch-parity.json) holds the bound #14 sets', () => {
  const doc = JSON.parse(readFileSync(join(repo, 'bench', 'results', 'torch-parity.json'), 'utf8'))
  assert.equal(doc.summary.withinBound, true)
  assert.deepEqual(doc.summary.fixtures, ['baseline', 'hc', 'mhc'])
  const fp32 = doc.forward.filter((r: any) => r.dtype === 'float32')
  for (const fixture of ['baseline', 'hc', 'mhc']) {
    const rows = fp32.filter((r: any) => r.fixture === fixture)
    assert.ok(
      rows.some((r: any) => r.quantity === 'logits'),
      `${fixture}: no logits row`,
    )
    for (const r of rows) assert.ok(r.maxAbs <= 1e-4, `${fixture} ${r.quantity}: ${r.maxAbs}`)
  }

  for (const g of doc.gains)
    assert.ok(g.gainsMaxRel < 1e-5, `${g.fixture}: analyze-gain --maps differs by ${g.gainsMaxRel}`)
})
