// Maps files (src/model/io/maps-file.ts): what a valid one reads as, every way an invalid one is refused in one line,
// and fuzzed files that must end in that one error, never a hang or a crash.
/* eslint-disable camelcase -- the maps format's metadata keys are snake_case, as Python writes them */
import assert from 'node:assert/strict'
import {execFileSync} from 'node:child_process'
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, test} from 'node:test'

import {InputError} from '../../../src/model/errors.js'
import {MapsFileError, readMapsFile, writeMapsFile} from '../../../src/model/io/maps-file.js'
import {encodeSafetensors, type NamedTensor} from '../../../src/model/io/safetensors.js'
import {Rng} from '../../../src/model/rng.js'

let root = ''
before(() => {
  root = mkdtempSync(join(tmpdir(), 'mhc-maps-'))
})
after(() => rmSync(root, {recursive: true, force: true}))
let counter = 0
const file = (bytes: Uint8Array) => {
  const p = join(root, `m-${++counter}.safetensors`)
  writeFileSync(p, bytes)
  return p
}

const META = {format: 'mhc-maps', version: '1', n: '2', layers: '2'}
const f32 = (shape: number[], values: number[]): NamedTensor => ({dtype: 'F32', shape, data: Float32Array.from(values)})
// Two layers, n = 2, three tokens; layer 1's H_res is not doubly stochastic (analysed, not rejected).
const valid = (): Record<string, NamedTensor> => ({
  'h_res.0': f32([3, 2, 2], [1, 0, 0, 1, 0.5, 0.5, 0.5, 0.5, 0.9, 0.1, 0.1, 0.9]),
  'h_res.1': f32([3, 2, 2], [2, 0, 0, 1, 1, 1, 1, 1, -1, 0, 0, 3]),
})

test('a valid file reads as written; H_res that is not doubly stochastic is kept as it is', () => {
  const m = readMapsFile(file(encodeSafetensors(valid(), {...META, h_res_constraint: 'none', source: 'torch 2.11'})))
  assert.equal(m.n, 2)
  assert.equal(m.tokens, 3)
  assert.equal(m.hRes.length, 2)
  assert.deepEqual([...m.hRes[1]], [2, 0, 0, 1, 1, 1, 1, 1, -1, 0, 0, 3])
  assert.equal(m.hPre, undefined)
  assert.equal(m.constraint, 'none')
  assert.equal(m.source, 'torch 2.11')
})

test('writeMapsFile → readMapsFile round trip, with H_pre and H_post', () => {
  const rng = new Rng(5)
  const rand = (k: number) => Float32Array.from({length: k}, () => rng.normal())
  const maps = {hRes: [rand(5 * 9), rand(5 * 9)], hPre: [rand(15), rand(15)], hPost: [rand(15), rand(15)], tokens: 5}
  const p = join(root, 'round.safetensors')
  writeMapsFile(p, maps, {n: 3, constraint: 'sinkhorn', arch: 'mhc', layerKinds: ['attn', 'mlp']})
  const m = readMapsFile(p)
  assert.deepEqual(m.hRes, maps.hRes)
  assert.deepEqual(m.hPre, maps.hPre)
  assert.deepEqual(m.hPost, maps.hPost)
  assert.deepEqual(m.layerKinds, ['attn', 'mlp'])
  assert.equal(m.constraint, 'sinkhorn')
})

test('F16 and BF16 maps are widened exactly (hand-computed bit patterns)', () => {
  // 1.0, 0.5, 0.25, −0 in F16 (0x3C00, 0x3800, 0x3400, 0x8000) and BF16 (0x3F80, 0x3F00, 0x3E80, 0x8000).
  const raw = (...u16: number[]) => new Uint8Array(Uint16Array.from(u16).buffer)
  const tensors = {
    'h_res.0': {dtype: 'F16', shape: [1, 2, 2], data: raw(0x3c_00, 0x38_00, 0x34_00, 0x80_00)} as NamedTensor,
    'h_res.1': {dtype: 'BF16', shape: [1, 2, 2], data: raw(0x3f_80, 0x3f_00, 0x3e_80, 0x80_00)} as NamedTensor,
  }
  const m = readMapsFile(file(encodeSafetensors(tensors, META)))
  for (const h of m.hRes) {
    assert.deepEqual(Array.from(h.slice(0, 3)), [1, 0.5, 0.25])
    assert.ok(Object.is(h[3], -0))
  }
})

test('every invalid file is one MapsFileError line naming the problem', () => {
  const cases: [Record<string, NamedTensor>, Record<string, string>, RegExp][] = [
    [valid(), {...META, format: 'mhc-checkpoint'}, /not a maps file \(metadata format is "mhc-checkpoint"/],
    [valid(), {...META, version: '2'}, /maps file version "2"/],
    [valid(), {...META, n: 'two'}, /metadata n must be an integer in \[1, 64\], got "two"/],
    [valid(), {...META, layers: '3'}, /missing h_res\.2/],
    [{'h_res.0': valid()['h_res.0']}, META, /missing h_res\.1/],
    [{...valid(), 'h_res.2': valid()['h_res.0'], extra: f32([1], [0])}, META, /unexpected tensors h_res\.2, extra/],
    [
      {
        ...valid(),
        'h_res.1': f32(
          [3, 4],
          Array.from({length: 12}, () => 0),
        ),
      },
      META,
      /h_res\.1: shape \[3, 4\], expected \[tokens, 2, 2\]/,
    ],
    [
      {
        ...valid(),
        'h_res.1': f32(
          [2, 2, 2],
          Array.from({length: 8}, () => 0),
        ),
      },
      META,
      /h_res\.1: 2 tokens, the other maps have 3/,
    ],
    [{...valid(), 'h_pre.0': f32([3, 2], [1, 0, 1, 0, 1, 0])}, META, /missing h_pre\.1/],
    [
      {...valid(), 'h_res.0': f32([3, 2, 2], [1, 0, 0, 1, 0, Number.NaN, 0, 1, 1, 0, 0, 1])},
      META,
      /h_res\.0: a non-finite value \(NaN\) at token 1/,
    ],
    [{...valid(), 'h_res.0': {dtype: 'I32', shape: [3, 2, 2], data: new Int32Array(12)}}, META, /h_res\.0: dtype I32/],
    [valid(), {...META, h_res_constraint: 'softmax'}, /h_res_constraint must be "none" or "sinkhorn"/],
    [valid(), {...META, layer_kinds: 'attn'}, /layer_kinds names 1 layers, not 2/],
  ]
  for (const [tensors, meta, why] of cases) {
    const p = file(encodeSafetensors(tensors, meta))
    assert.throws(
      () => readMapsFile(p),
      (e: unknown) => e instanceof MapsFileError && why.test(e.message) && !e.message.includes('\n'),
      String(why),
    )
  }
})

test('2000 fuzzed files (truncated, bit-flipped, oversized header length, garbage JSON) each end in one InputError', () => {
  const rng = new Rng(11)
  const good = encodeSafetensors(valid(), META)
  for (let i = 0; i < 2000; i++) {
    const bytes = Uint8Array.from(good)
    let mutated: Uint8Array = bytes
    switch (i % 4) {
      case 0: {
        mutated = bytes.slice(0, rng.int(bytes.length))
        break
      }

      case 1: {
        for (let k = 0; k < 1 + rng.int(8); k++) bytes[rng.int(bytes.length)] ^= 1 << rng.int(8)
        break
      }

      case 2: {
        new DataView(bytes.buffer).setBigUint64(0, BigInt(rng.int(2 ** 31)) * 1000n, true)
        break
      }

      default: {
        bytes[8 + rng.int(40)] = '{}[]:,"x\\'.codePointAt(rng.int(10))!
      }
    }

    const p = join(root, 'fuzz.safetensors')
    writeFileSync(p, mutated)
    try {
      const m = readMapsFile(p) // a flip in tensor data may leave a valid file: it must then read consistently
      assert.equal(m.hRes.length, 2)
    } catch (error) {
      assert.ok(error instanceof InputError, `case ${i}: ${(error as Error).stack}`)
      assert.ok(!(error as Error).message.includes('\n'), `case ${i}: one line`)
    }
  }
})

test('a missing path, a directory, a device or a FIFO is one error, never a hang', () => {
  const fifo = join(root, 'fifo')
  execFileSync('mkfifo', [fifo])
  for (const [path, pattern] of [
    [join(root, 'absent.safetensors'), /no such file/],
    [root, /not a regular file/],
    ['/dev/zero', /not a regular file/],
    [fifo, /not a regular file/],
  ] as const)
    assert.throws(
      () => readMapsFile(path),
      (e: Error) => e instanceof InputError && pattern.test(e.message),
      path,
    )
})
