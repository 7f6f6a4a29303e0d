/* eslint-disable camelcase -- weight_map is the Hugging Face index format's own key */
// PyTorch export/import (src/model/io/pytorch.ts): the layouts element by element on non-square layers, the round
// trip of the fixtures, f16/bf16 inputs decoded to hand-computed values, and every kind of mismatch reported by name.
import assert from 'node:assert/strict'
import {existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, test} from 'node:test'

import {modelConfig} from '../../../src/model/config.js'
import {readCheckpointDir} from '../../../src/model/io/checkpoint.js'
import {
  EXPORT_CONFIG,
  EXPORT_WEIGHTS,
  exportCheckpoint,
  importExport,
  paramsFromTorch,
  parseKeyMap,
  TorchFormatError,
  torchTensors,
} from '../../../src/model/io/pytorch.js'
import {decodeSafetensors, encodeSafetensors, type NamedTensor} from '../../../src/model/io/safetensors.js'
import {initParamData, paramSpecs} from '../../../src/model/params.js'
import {repo} from '../../helpers.js'

let root = ''
before(() => {
  root = mkdtempSync(join(tmpdir(), 'mhc-torch-'))
})
after(() => rmSync(root, {recursive: true, force: true}))

// Small and non-square everywhere: C = 6, mlpRatio 2 (fc [6, 12]), V = 10, n = 3 (phi [18, 15], theta [6, 5]).
const tiny = (arch: 'baseline' | 'hc' | 'mhc') =>
  modelConfig(arch, {vocabSize: 10, seqLen: 4, layers: 1, dModel: 6, heads: 2, mlpRatio: 2, expansion: 3})

test('export transposes exactly the nn.Linear matrices, element by element, on non-square layers', () => {
  for (const arch of ['hc', 'mhc'] as const) {
    const cfg = tiny(arch)
    const params = initParamData(cfg, 3)
    const t = torchTensors(cfg, params)
    const expectShapes: Record<string, number[]> = {
      'tok_emb.weight': [10, 6], // nn.Embedding: [num, dim], as ours
      'pos_emb.weight': [4, 6],
      'blocks.0.attn.qkv.weight': [18, 6], // ours [6, 18]
      'blocks.0.mlp.fc.weight': [12, 6], // ours [6, 12]
      'blocks.0.mlp.proj.weight': [6, 12], // ours [12, 6]
      'lm_head.weight': [10, 6], // ours [6, 10]
      'conn.1.b_res': [3, 3], // not a linear map: as ours
      ...(arch === 'hc' ? {'conn.0.theta': [5, 6]} : {'conn.0.phi': [15, 18]}),
    }
    for (const [name, shape] of Object.entries(expectShapes)) assert.deepEqual(t[name].shape, shape, name)
    // Element (o, i) of the export is element (i, o) of ours: checked at every position of two layers.
    for (const name of ['blocks.0.mlp.fc.weight', arch === 'hc' ? 'conn.0.theta' : 'conn.0.phi']) {
      const [out, inn] = t[name].shape
      const ours = params[name]
      const theirs = t[name].data as Float32Array
      for (let o = 0; o < out; o++)
        for (let i = 0; i < inn; i++) assert.equal(theirs[o * inn + i], ours[i * out + o], `${name}[${o}, ${i}]`)
    }

    const unchanged = paramSpecs(cfg).filter((s) => !s.linear)
    for (const s of unchanged) assert.deepEqual(t[s.name].data, params[s.name], s.name)
    // And back: the import is the inverse, bit for bit.
    const back = paramsFromTorch(decodeSafetensors(encodeSafetensors(t)).tensors, cfg)
    for (const s of paramSpecs(cfg)) assert.deepEqual(back[s.name], params[s.name], s.name)
  }
})

test('the three fixtures round-trip through an export: identical weights and manifest', () => {
  for (const fixture of ['baseline', 'hc', 'mhc']) {
    const ck = readCheckpointDir(join(repo, 'fixtures', fixture, 'ckpt-000150'))
    const dir = join(root, `export-${fixture}`)
    const config = exportCheckpoint(ck, dir)
    const written = JSON.parse(readFileSync(join(dir, EXPORT_CONFIG), 'utf8'))
    assert.deepEqual(written.transposed, config.transposed)
    assert.equal(written.transposed.length, 4 * ck.manifest.model.layers + 1 + (fixture === 'baseline' ? 0 : 8))
    const imported = importExport(dir)
    assert.deepEqual(imported.model, ck.manifest.model)
    assert.deepEqual(imported.defaulted, [])
    for (const [name, values] of Object.entries(ck.params)) assert.deepEqual(imported.params[name], values, name)
    const {step, train, data, rng, metrics} = ck.manifest
    assert.deepEqual(imported.provenance, {source: ck.dir, step, train, data, rng, metrics})
  }
})

// f16 and bf16 bit patterns with their values worked out by hand.
const F16: [number, number][] = [
  [0x3c_00, 1],
  [0xc0_00, -2],
  [0x35_55, 0.333_251_953_125], // 1 + 341/1024, times 2^-2
  [0x00_01, 2 ** -24], // the smallest subnormal
  [0x03_ff, 1023 * 2 ** -24], // the largest subnormal
  [0x80_00, -0],
  [0x7b_ff, 65_504], // the largest finite
]
const BF16: [number, number][] = [
  [0x3f_80, 1],
  [0xc0_40, -3],
  [0x3e_aa, 0.332_031_25], // 1 + 42/128, times 2^-2
  [0x00_01, 2 ** -133], // the smallest subnormal
  [0x80_00, -0],
  [0x7f_7f, 3.389_531_389_251_535e38], // the largest finite
]

/** A tensor of `count` 2-byte values cycling through `patterns`, and the values it must decode to. */
function half(dtype: 'F16' | 'BF16', shape: number[], patterns: [number, number][]) {
  const count = shape.reduce((a, b) => a * b, 1)
  const raw = new Uint8Array(2 * count)
  const want = new Float32Array(count)
  for (let i = 0; i < count; i++) {
    const [bits, value] = patterns[i % patterns.length]
    raw[2 * i] = bits & 0xff
    raw[2 * i + 1] = bits >> 8
    want[i] = value
  }

  return {tensor: {dtype, shape, data: raw} as NamedTensor, want}
}

test('f16 and bf16 exports import to the hand-computed values (subnormals, -0, the largest finite)', () => {
  const cfg = tiny('mhc')
  for (const [dtype, patterns] of [
    ['F16', F16],
    ['BF16', BF16],
  ] as const) {
    const tensors: Record<string, NamedTensor> = {}
    const want: Record<string, Float32Array> = {}
    for (const s of paramSpecs(cfg)) {
      const shape = s.linear ? [...s.shape].reverse() : s.shape
      const h = half(dtype, shape, patterns)
      tensors[s.name] = h.tensor
      want[s.name] = h.want
    }

    const params = paramsFromTorch(decodeSafetensors(encodeSafetensors(tensors)).tensors, cfg)
    // A non-linear tensor comes back as stored; a linear one transposed: (i, o) of ours = (o, i) of theirs.
    assert.deepEqual(params['conn.0.b_res'], want['conn.0.b_res'])
    const negZero = patterns.findIndex(([, v]) => Object.is(v, -0))
    assert.ok(Object.is(params['conn.0.b_res'][negZero], -0), 'negative zero survives')
    const [out, inn] = [15, 18]
    for (let o = 0; o < out; o++)
      for (let i = 0; i < inn; i++)
        assert.equal(params['conn.0.phi'][i * out + o], want['conn.0.phi'][o * inn + i], `${dtype} phi[${o}, ${i}]`)
  }
})

test('Inf and NaN in an f16 or bf16 tensor are refused by name', () => {
  const cfg = tiny('hc')
  const tensors = torchTensors(cfg, initParamData(cfg, 1))
  tensors['conn.1.b_pre'] = half('F16', [3], [[0x7c_00, Infinity]]).tensor
  tensors['norm.weight'] = half('BF16', [6], [[0x7f_c0, Number.NaN]]).tensor
  assert.throws(
    () => paramsFromTorch(decodeSafetensors(encodeSafetensors(tensors)).tensors, cfg),
    (e: Error) =>
      e instanceof TorchFormatError &&
      /2 problems/.test(e.message) &&
      /conn\.1\.b_pre: non-finite value Infinity/.test(e.message) &&
      /norm\.weight: non-finite value NaN/.test(e.message),
  )
})

test('every mismatch is reported by name in one error: missing, unexpected, shape, dtype, key-map mistakes', () => {
  const cfg = tiny('mhc')
  const t = torchTensors(cfg, initParamData(cfg, 1))
  delete t['conn.1.alpha_res'] // missing
  t['blocks.0.attn.qkv.bias'] = {dtype: 'F32', shape: [18], data: new Float32Array(18)} // unexpected
  t['blocks.0.mlp.fc.weight'] = {...t['blocks.0.mlp.fc.weight'], shape: [6, 12]} // ours, not transposed: a shape error
  t['conn.0.b_post'] = {dtype: 'I32', shape: [3], data: new Int32Array(3)} // dtype
  const keyMap = parseKeyMap(
    JSON.stringify({'blocks.0.mlp.proj.weight': 'mlp_out', 'conn.7.phi': 'x', 'norm.weight': 'lm_head.weight'}),
    'map.json',
  )
  let message = ''
  try {
    paramsFromTorch(decodeSafetensors(encodeSafetensors(t)).tensors, cfg, keyMap)
  } catch (error) {
    assert.ok(error instanceof TorchFormatError, String(error))
    message = error.message
  }

  for (const expected of [
    'key map names conn.7.phi, which this mhc model does not have',
    'missing conn.1.alpha_res',
    'missing mlp_out (our blocks.0.mlp.proj.weight)',
    'blocks.0.mlp.fc.weight: shape [6, 12], expected [12, 6]',
    'conn.0.b_post: dtype I32, expected F32, F16, BF16 or F64',
    'lm_head.weight: also mapped to norm.weight',
    'lm_head.weight (our norm.weight): shape [10, 6], expected [6]',
  ])
    assert.ok(message.includes(expected), `"${expected}" not in: ${message}`)
  // Tensors no parameter claimed: the extra bias, and the ones the map moved away from their own names.
  assert.match(message, /; unexpected ([\w.]+, ){2}[\w.]+$/)
  for (const name of ['blocks.0.attn.qkv.bias', 'blocks.0.mlp.proj.weight', 'norm.weight'])
    assert.ok(message.split('; unexpected ')[1].split(', ').includes(name), name)
  assert.match(message, /: 8 problems: /)
  assert.doesNotMatch(message, /\n/)
})

test('a key map reads another implementation: renamed tensors, their own layout, ignored extras', () => {
  const cfg = tiny('hc')
  const params = initParamData(cfg, 5)
  const ours = torchTensors(cfg, params)
  // "Their" model: qkv kept in our [in, out] layout under another name, theta renamed, plus biases to ignore.
  const theirs: Record<string, NamedTensor> = {}
  for (const [k, v] of Object.entries(ours)) if (k !== 'blocks.0.attn.qkv.weight' && k !== 'conn.0.theta') theirs[k] = v
  theirs['layers.0.attn.to_qkv.weight'] = {dtype: 'F32', shape: [6, 18], data: params['blocks.0.attn.qkv.weight']}
  theirs['hc.0.dynamic_proj.weight'] = ours['conn.0.theta']
  theirs['layers.0.attn.to_qkv.bias'] = {dtype: 'F32', shape: [18], data: new Float32Array(18)}
  theirs['layers.0.ff.bias'] = {dtype: 'F32', shape: [12], data: new Float32Array(12)}
  const keyMap = parseKeyMap(
    JSON.stringify({
      'blocks.0.attn.qkv.weight': {name: 'layers.0.attn.to_qkv.weight', transpose: false},
      'conn.0.theta': {name: 'hc.0.dynamic_proj.weight'},
      $ignore: [String.raw`layers\.\d+\..*\.bias`],
    }),
    'map.json',
  )
  const back = paramsFromTorch(theirs, cfg, keyMap)
  for (const s of paramSpecs(cfg)) assert.deepEqual(back[s.name], params[s.name], s.name)
  // Without the $ignore the biases are unexpected, by name.
  assert.throws(
    () => paramsFromTorch(theirs, cfg, {...keyMap, ignore: []}),
    /1 problem: unexpected layers\.0\.attn\.to_qkv\.bias, layers\.0\.ff\.bias/,
  )
})

test('a key map may name anything, "__proto__" included: it is reported, not swallowed', () => {
  const cfg = tiny('baseline')
  const t = torchTensors(cfg, initParamData(cfg, 1))
  assert.throws(
    () => paramsFromTorch(t, cfg, parseKeyMap('{"__proto__": "norm.weight"}', 'map.json')),
    /key map names __proto__, which this baseline model does not have/,
  )
})

test('f64 tensors import when float32 can hold them; 1e300 is named as an overflow', () => {
  const cfg = tiny('baseline')
  const params = initParamData(cfg, 4)
  const t = torchTensors(cfg, params)
  const f64 = Object.fromEntries(
    Object.entries(t).map(([k, v]) => [
      k,
      {...v, dtype: 'F64' as const, data: Float64Array.from(v.data as Float32Array)},
    ]),
  )
  const back = paramsFromTorch(decodeSafetensors(encodeSafetensors(f64)).tensors, cfg)
  for (const s of paramSpecs(cfg)) assert.deepEqual(back[s.name], params[s.name], s.name)
  ;(f64['norm.weight'].data as Float64Array)[2] = 1e300
  assert.throws(() => paramsFromTorch(f64, cfg), /norm\.weight: 1e\+300 overflows float32 at flat index 2/)
})

test('an output directory: absent or empty, never a symbolic link, an empty path or an over-long name', () => {
  const ck = readCheckpointDir(join(repo, 'fixtures', 'baseline', 'ckpt-000150'))
  const target = join(root, 'empty-target')
  mkdirSync(target)
  symlinkSync(target, join(root, 'link'))
  assert.throws(() => exportCheckpoint(ck, join(root, 'link')), /a symbolic link/)
  assert.throws(() => exportCheckpoint(ck, ''), /an empty path/)
  assert.throws(() => exportCheckpoint(ck, join(root, 'x'.repeat(230))), /longer than 200 bytes/)
  exportCheckpoint(ck, target) // an empty directory is fine
  assert.ok(existsSync(join(target, EXPORT_WEIGHTS)))
})

test('malformed key maps and config files are one clear error each', () => {
  for (const [text, pattern] of [
    ['{', /not valid JSON/],
    ['[]', /expected an object/],
    ['{"a": 3}', /entry "a" must be a tensor name/],
    ['{"a": {"name": "b", "transpose": "yes"}}', /entry "a"/],
    ['{"a": {"name": "b", "extra": 1}}', /entry "a"/],
    ['{"$ignore": "x"}', /must be a list of regular expressions/],
    ['{"$ignore": ["("]}', /\$ignore/],
  ] as const)
    assert.throws(() => parseKeyMap(text, 'map.json'), pattern, text)

  const dir = join(root, 'bad-config')
  mkdirSync(dir)
  const cfg = tiny('baseline')
  writeFileSync(join(dir, EXPORT_WEIGHTS), encodeSafetensors(torchTensors(cfg, initParamData(cfg, 1))))
  for (const [config, pattern] of [
    [undefined, /config\.json is missing/],
    ['{"model": ', /not valid JSON/],
    ['{"format": "hf", "model": {}}', /format "hf"/],
    ['{"architectures": ["GPT2"]}', /no "model" object/],
    [JSON.stringify({model: {...cfg, dModel: 7}}), /invalid model config: dModel 7 is not divisible by heads 2/],
    [JSON.stringify({model: {...cfg, dModel: 4}}), /10 problems: tok_emb\.weight: shape \[10, 6\], expected \[10, 4\]/],
    [JSON.stringify({model: {...cfg, extra: 1}}), /model has unknown fields extra/],
    [JSON.stringify({model: {...cfg, normEps: -1}}), /normEps must be at least 0/],
    [JSON.stringify({model: cfg, checkpoint: {step: -3}}), /checkpoint\.step -3 is not a step/],
    [JSON.stringify({model: cfg, checkpoint: {train: {steps: 1}}}), /invalid checkpoint\.train/],
    [JSON.stringify({model: cfg, transposed: []}), /"transposed" is not the list mhc export writes/],
  ] as const) {
    rmSync(join(dir, EXPORT_CONFIG), {force: true})
    if (config !== undefined) writeFileSync(join(dir, EXPORT_CONFIG), config)
    assert.throws(() => importExport(dir), pattern, String(config))
  }

  // A foreign config.json with only the model: everything else is reported as filled in.
  writeFileSync(join(dir, EXPORT_CONFIG), JSON.stringify({model: cfg}))
  assert.deepEqual(importExport(dir).defaulted, ['step', 'train', 'data', 'rng'])
})

test('sharded exports (model.safetensors.index.json) are read whole; a tensor in two shards is refused', () => {
  const cfg = tiny('mhc')
  const params = initParamData(cfg, 9)
  const t = torchTensors(cfg, params)
  const names = Object.keys(t)
  const half1 = Object.fromEntries(names.slice(0, 20).map((k) => [k, t[k]]))
  const half2 = Object.fromEntries(names.slice(20).map((k) => [k, t[k]]))
  const dir = join(root, 'sharded')
  mkdirSync(dir)
  writeFileSync(join(dir, 'model-00001-of-00002.safetensors'), encodeSafetensors(half1))
  writeFileSync(join(dir, 'model-00002-of-00002.safetensors'), encodeSafetensors(half2))
  const weightMap = Object.fromEntries(
    names.map((k, i) => [k, i < 20 ? 'model-00001-of-00002.safetensors' : 'model-00002-of-00002.safetensors']),
  )
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({metadata: {}, weight_map: weightMap}))
  writeFileSync(join(dir, EXPORT_CONFIG), JSON.stringify({model: cfg}))
  const back = importExport(dir).params
  for (const s of paramSpecs(cfg)) assert.deepEqual(back[s.name], params[s.name], s.name)
  const index = (map: unknown) =>
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({weight_map: map}))
  // The index must say where each tensor is, and every tensor it lists must be there.
  index({...weightMap, [names[0]]: 'model-00002-of-00002.safetensors'})
  assert.throws(
    () => importExport(dir),
    /model-00001-of-00002\.safetensors holds tok_emb\.weight, which model\.safetensors\.index\.json puts in model-00002/,
  )
  index({...weightMap, 'extra.weight': 'model-00001-of-00002.safetensors'})
  assert.throws(() => importExport(dir), /lists extra\.weight, which no shard holds/)
  index(Object.values(weightMap))
  assert.throws(() => importExport(dir), /no "weight_map" object/)
  index(weightMap)

  writeFileSync(join(dir, 'model-00002-of-00002.safetensors'), encodeSafetensors({...half2, [names[0]]: t[names[0]]}))
  assert.throws(
    () => importExport(dir),
    new RegExp(`tensor ${names[0].replaceAll('.', String.raw`\.`)} is in more than one shard`),
  )
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({weight_map: {a: '../etc/passwd'}}))
  assert.throws(() => importExport(dir), /is not a file name in/)
})
