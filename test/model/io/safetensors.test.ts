// Tests for the safetensors reader/writer. Expected bytes and values are built independently here
// (DataView, hand-written JSON, literal constants, arithmetic formulas) rather than via the module itself.
import assert from 'node:assert/strict'
import {existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {test} from 'node:test'

import {
  decodeSafetensors,
  encodeSafetensors,
  type NamedTensor,
  readSafetensorsFile,
  SafetensorsError,
  writeSafetensorsFile,
} from '../../../src/model/io/safetensors.js'
import {Rng} from '../../../src/model/rng.js'

// ---------------------------------------------------------------------------------------------------
// helpers

/** Assemble a file by hand: u64 LE header length, header text as given (no padding added), data. */
function buildFile(headerText: string, data: Uint8Array = new Uint8Array(0), headerLenOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(headerText)
  const out = new Uint8Array(8 + json.length + data.length)
  new DataView(out.buffer).setBigUint64(0, headerLenOverride ?? BigInt(json.length), true)
  out.set(json, 8)
  out.set(data, 8 + json.length)
  return out
}

/** Little-endian float32 bytes via DataView (independent of host typed-array byte order). */
function f32Bytes(...xs: number[]): Uint8Array {
  const out = new Uint8Array(4 * xs.length)
  const dv = new DataView(out.buffer)
  for (const [i, x] of xs.entries()) dv.setFloat32(4 * i, x, true)
  return out
}

function i32Bytes(...xs: number[]): Uint8Array {
  const out = new Uint8Array(4 * xs.length)
  const dv = new DataView(out.buffer)
  for (const [i, x] of xs.entries()) dv.setInt32(4 * i, x, true)
  return out
}

function u16Bytes(...xs: number[]): Uint8Array {
  const out = new Uint8Array(2 * xs.length)
  const dv = new DataView(out.buffer)
  for (const [i, x] of xs.entries()) dv.setUint16(2 * i, x, true)
  return out
}

/** The exact bytes behind a typed array (to compare bit patterns, NaN payloads and -0 included). */
function rawBytes(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength)
}

function assertRejects(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof SafetensorsError, `expected SafetensorsError, got ${String(err)}`)
    assert.match(err.message, pattern)
    assert.ok(!/[\r\n]/.test(err.message), 'message must be one line')
    return true
  })
}

/** Deterministic uniform draws from the project's seeded PRNG: so fuzz failures are reproducible.. */
const mulberry32 = (seed: number) => {
  const r = new Rng(seed)
  return () => r.uniform()
}

function sampleTensors(): Record<string, NamedTensor> {
  // Float32 bit patterns that a value-level comparison would miss: -0 and a NaN with a payload.
  const f32 = new Float32Array([1.5, -0, 3.25e-39 /* subnormal */, 0, 0, 1e30])
  new Uint32Array(f32.buffer)[3] = 0x7f_c1_23_45
  new Uint32Array(f32.buffer)[4] = 0xff_80_00_00 // -inf
  return {
    'layer.0.weight': {dtype: 'F32', shape: [2, 3], data: f32},
    f64: {dtype: 'F64', shape: [4], data: new Float64Array([Math.PI, -1e-300, Number.MAX_VALUE, -0])},
    i32: {dtype: 'I32', shape: [1, 3, 1], data: new Int32Array([-2_147_483_648, 2_147_483_647, -1])},
    i64: {dtype: 'I64', shape: [3], data: new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n, 123_456_789_012_345_678n])},
    scalar: {dtype: 'F32', shape: [], data: new Float32Array([42.5])},
    empty: {dtype: 'F32', shape: [0, 5], data: new Float32Array(0)},
    i16: {dtype: 'I16', shape: [2], data: new Int16Array([-32_768, 32_767])},
    i8: {dtype: 'I8', shape: [3], data: new Int8Array([-128, 0, 127])},
    u8: {dtype: 'U8', shape: [3], data: new Uint8Array([0, 128, 255])},
    mask: {dtype: 'BOOL', shape: [2, 2], data: new Uint8Array([1, 0, 0, 1])},
  }
}

// ---------------------------------------------------------------------------------------------------
// round trip

test('round trip is bit-exact across dtypes and shapes, metadata kept', () => {
  const input = sampleTensors()
  const meta = {format: 'pt', note: 'line1\nline2 ünïcode', empty: ''}
  const bytes = encodeSafetensors(input, meta)
  const {tensors, metadata} = decodeSafetensors(bytes)
  assert.deepEqual(metadata, meta)
  assert.deepEqual(Object.keys(tensors).sort(), Object.keys(input).sort())
  for (const [name, t] of Object.entries(input)) {
    const got = tensors[name]
    assert.equal(got.dtype, t.dtype, name)
    assert.deepEqual(got.shape, t.shape, name)
    assert.equal(got.data.constructor, t.data.constructor, name)
    assert.deepEqual(rawBytes(got.data), rawBytes(t.data), `${name} bytes`)
  }

  assert.equal(tensors.scalar.data.length, 1)
  assert.equal(tensors.empty.data.length, 0)
  assert.equal((tensors.i64.data as BigInt64Array)[0], -(2n ** 63n))
})

test('encode layout: header padded to 8, data contiguous in given order, metadata omitted when absent', () => {
  const bytes = encodeSafetensors(sampleTensors())
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true))
  assert.equal((8 + n) % 8, 0)
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)))
  assert.equal(header.__metadata__, undefined)
  let expected = 0
  for (const name of Object.keys(sampleTensors())) {
    assert.equal(header[name].data_offsets[0], expected, name)
    expected = header[name].data_offsets[1]
  }

  assert.equal(8 + n + expected, bytes.length)
  assert.deepEqual(decodeSafetensors(encodeSafetensors({})), {tensors: {}, metadata: {}})
})

test('encode accepts a typed array that is a view into a larger buffer', () => {
  const big = new Float32Array([9, 1, 2, 3, 9])
  const view = big.subarray(1, 4)
  const out = decodeSafetensors(encodeSafetensors({v: {dtype: 'F32', shape: [3], data: view}}))
  assert.deepEqual([...(out.tensors.v.data as Float32Array)], [1, 2, 3])
})

// ---------------------------------------------------------------------------------------------------
// hand-built references

test('encode output equals a hand-built file byte for byte', () => {
  const bytes = encodeSafetensors(
    {
      w: {dtype: 'F32', shape: [2], data: new Float32Array([1.5, -2])},
      b: {dtype: 'I32', shape: [], data: new Int32Array([7])},
    },
    {k: 'v'},
  )

  // Independently: the header text we expect, padded with spaces so 8 + N is a multiple of 8.
  const json =
    '{"__metadata__":{"k":"v"},' +
    '"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
    '"b":{"dtype":"I32","shape":[],"data_offsets":[8,12]}}'
  const pad = (8 - (json.length % 8)) % 8
  const headerLen = json.length + pad
  const expected = new Uint8Array(8 + headerLen + 12)
  const dv = new DataView(expected.buffer)
  dv.setUint32(0, headerLen, true) // u64 LE: low word ...
  dv.setUint32(4, 0, true) //            ... high word
  for (let i = 0; i < json.length; i++) expected[8 + i] = json.codePointAt(i)! // ASCII only
  for (let i = 0; i < pad; i++) expected[8 + json.length + i] = 0x20
  const d = 8 + headerLen
  dv.setFloat32(d, 1.5, true)
  dv.setFloat32(d + 4, -2, true)
  dv.setInt32(d + 8, 7, true)
  assert.deepEqual(bytes, expected)
})

test('decode reads a hand-built file with an unpadded header and tensors stored out of name order', () => {
  // "a" is listed first in the header but stored second; header length is odd, so the data section
  // starts at an unaligned offset; metadata comes last.
  const header =
    '{"a":{"dtype":"I32","shape":[2],"data_offsets":[8,16]},' +
    '"z":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},"__metadata__":{"source":"hand"}}'
  const padded = header.length % 2 === 0 ? header + ' ' : header
  assert.notEqual((8 + padded.length) % 4, 0)
  const data = new Uint8Array([...f32Bytes(0.25, -8), ...i32Bytes(-5, 1 << 30)])
  const {tensors, metadata} = decodeSafetensors(buildFile(padded, data))
  assert.deepEqual(metadata, {source: 'hand'})
  assert.equal(tensors.z.dtype, 'F32')
  assert.deepEqual(tensors.z.shape, [1, 2])
  assert.deepEqual(tensors.z.data, new Float32Array([0.25, -8]))
  assert.deepEqual(tensors.a.data, new Int32Array([-5, 1 << 30]))
})

test('decode accepts zero-size tensors sharing an offset and an empty header', () => {
  const header =
    '{"e1":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},' +
    '"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' +
    '"e2":{"dtype":"I64","shape":[3,0],"data_offsets":[4,4]}}'
  const {tensors} = decodeSafetensors(buildFile(header, f32Bytes(2)))
  assert.equal(tensors.e1.data.length, 0)
  assert.ok(tensors.e2.data instanceof BigInt64Array)
  assert.deepEqual(tensors.x.data, new Float32Array([2]))
  assert.deepEqual(decodeSafetensors(buildFile('{}')), {tensors: {}, metadata: {}})
})

test('a tensor named "__proto__" stays an ordinary own key', () => {
  const file = buildFile('{"__proto__":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', new Uint8Array([5]))
  const {tensors} = decodeSafetensors(file)
  assert.equal(Object.getPrototypeOf(tensors), Object.prototype)
  assert.deepEqual(Object.keys(tensors), ['__proto__'])
  const again = decodeSafetensors(encodeSafetensors(tensors))
  assert.deepEqual([...Object.getOwnPropertyDescriptor(again.tensors, '__proto__')!.value.data], [5])
})

// ---------------------------------------------------------------------------------------------------
// half precision

test('F16 decode of hand-picked bit patterns', () => {
  const cases: [number, number][] = [
    [0x3c_00, 1],
    [0xc0_00, -2],
    [0x7b_ff, 65_504], // largest finite
    [0x00_01, 5.960_464_477_539_063e-8], // smallest subnormal, 2^-24
    [0x03_ff, 6.097_555_160_522_461e-5], // largest subnormal
    [0x04_00, 6.103_515_625e-5], // smallest normal, 2^-14
    [0x35_55, 0.333_251_953_125],
    [0x7c_00, Infinity],
    [0xfc_00, -Infinity],
    [0x00_00, 0],
    [0x80_00, -0],
    [0x7e_00, Number.NaN],
    [0xfe_01, Number.NaN],
  ]
  const file = buildFile(
    `{"h":{"dtype":"F16","shape":[${cases.length}],"data_offsets":[0,${2 * cases.length}]}}`,
    u16Bytes(...cases.map((c) => c[0])),
  )
  const {tensors} = decodeSafetensors(file)
  assert.equal(tensors.h.dtype, 'F16')
  assert.ok(tensors.h.data instanceof Float32Array, 'F16 is widened to Float32Array')
  for (const [i, [bits, want]] of cases.entries()) {
    const got = tensors.h.data[i] as number
    assert.ok(Object.is(got, want), `0x${bits.toString(16)}: got ${got}, want ${want}`)
  }

  // The canonical quiet NaN maps to the canonical float32 quiet NaN.
  assert.equal(new Uint32Array((tensors.h.data as Float32Array).buffer)[11], 0x7f_c0_00_00)
})

test('BF16 decode of hand-picked bit patterns', () => {
  const cases: [number, number][] = [
    [0x3f_80, 1],
    [0xc0_00, -2],
    [0x47_7f, 65_280], // 65504 is not representable in bf16; this is the nearest below
    [0x47_80, 65_536],
    [0x7f_7f, 3.389_531_389_251_535_5e38], // largest finite
    [0x00_01, 9.183_549_615_799_121e-41], // smallest subnormal, 2^-133
    [0x00_80, 1.175_494_350_822_287_5e-38], // smallest normal, 2^-126
    [0x7f_80, Infinity],
    [0xff_80, -Infinity],
    [0x80_00, -0],
    [0x7f_c0, Number.NaN],
  ]
  const file = buildFile(
    `{"b":{"dtype":"BF16","shape":[${cases.length}],"data_offsets":[0,${2 * cases.length}]}}`,
    u16Bytes(...cases.map((c) => c[0])),
  )
  const {tensors} = decodeSafetensors(file)
  assert.ok(tensors.b.data instanceof Float32Array)
  for (const [i, [bits, want]] of cases.entries()) {
    const got = tensors.b.data[i] as number
    assert.ok(Object.is(got, want), `0x${bits.toString(16)}: got ${got}, want ${want}`)
  }
})

test('F16 and BF16 decode match an arithmetic reference for all 65536 bit patterns', () => {
  const all = new Uint16Array(65_536).map((_, i) => i)
  const raw = u16Bytes(...all)
  const f16 = decodeSafetensors(encodeSafetensors({x: {dtype: 'F16', shape: [65_536], data: raw}})).tensors.x.data
  const bf16 = decodeSafetensors(encodeSafetensors({x: {dtype: 'BF16', shape: [256, 256], data: raw}})).tensors.x.data
  // Reference: value = (-1)^s * 2^(e - bias) * (1 + m / 2^mbits), or subnormal m * 2^(1 - bias - mbits).
  const ref = (h: number, ebits: number, mbits: number): number => {
    const bias = (1 << (ebits - 1)) - 1
    const s = h >> (ebits + mbits) ? -1 : 1
    const e = (h >> mbits) & ((1 << ebits) - 1)
    const m = h & ((1 << mbits) - 1)
    if (e === (1 << ebits) - 1) return m === 0 ? s * Infinity : Number.NaN
    if (e === 0) return s * m * 2 ** (1 - bias - mbits)
    return s * 2 ** (e - bias) * (1 + m / 2 ** mbits)
  }

  for (let h = 0; h < 65_536; h++) {
    const a = f16[h] as number
    const b = bf16[h] as number
    assert.ok(Object.is(a, ref(h, 5, 10)), `F16 0x${h.toString(16)}: ${a} vs ${ref(h, 5, 10)}`)
    assert.ok(Object.is(b, ref(h, 8, 7)), `BF16 0x${h.toString(16)}: ${b} vs ${ref(h, 8, 7)}`)
  }
})

// ---------------------------------------------------------------------------------------------------
// alignment / copying

test('decode of a Buffer slice with an odd byteOffset returns aligned copies', () => {
  const bytes = encodeSafetensors(sampleTensors())
  const backing = Buffer.alloc(bytes.length + 3)
  backing.set(bytes, 1)
  const slice = backing.subarray(1, 1 + bytes.length)
  assert.equal(slice.byteOffset % 2, 1)
  const {tensors} = decodeSafetensors(slice)
  for (const [name, t] of Object.entries(sampleTensors())) {
    const got = tensors[name].data
    assert.deepEqual(rawBytes(got), rawBytes(t.data), name)
    assert.equal(got.byteOffset, 0, `${name} is a fresh array`)
    assert.notEqual(got.buffer, backing.buffer, `${name} is not a view into the input`)
  }

  // Mutating the input afterwards must not change decoded tensors.
  backing.fill(0)
  assert.equal(tensors.scalar.data[0], 42.5)
})

test('decode works on a small pooled Buffer (shared slab, arbitrary byteOffset)', () => {
  const bytes = encodeSafetensors({x: {dtype: 'F64', shape: [2], data: new Float64Array([1, 2])}})
  for (let shift = 0; shift < 8; shift++) {
    Buffer.from(new Uint8Array(shift)) // nudge the pool offset
    const pooled = Buffer.from(bytes)
    assert.deepEqual(decodeSafetensors(pooled).tensors.x.data, new Float64Array([1, 2]))
  }
})

// ---------------------------------------------------------------------------------------------------
// rejection cases (decode)

const F32_2 = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'

test('decode rejects malformed files with SafetensorsError', () => {
  const eight = f32Bytes(1, 2)
  assertRejects(() => decodeSafetensors(new Uint8Array(7)), /too short/)
  assertRejects(() => decodeSafetensors(new Uint8Array(0)), /too short/)
  assertRejects(
    () => decodeSafetensors(buildFile(F32_2, eight, 2n ** 64n - 1n)),
    /header length 18446744073709551615 exceeds/,
  )
  assertRejects(() => decodeSafetensors(buildFile(F32_2, eight), {maxHeaderBytes: 10}), /exceeds the limit of 10/)
  assertRejects(() => decodeSafetensors(buildFile(F32_2, eight, 1000n)), /runs past the end/)
  assertRejects(() => decodeSafetensors(buildFile('{"a":', eight)), /not valid UTF-8 JSON/)
  assertRejects(() => decodeSafetensors(buildFile('', new Uint8Array(0))), /not valid UTF-8 JSON/)
  const badUtf8 = buildFile('{"xx":1}')
  badUtf8[10] = 0xff
  assertRejects(() => decodeSafetensors(badUtf8), /UTF-8/)
  assertRejects(() => decodeSafetensors(buildFile('[1,2]')), /must be a JSON object/)
  assertRejects(() => decodeSafetensors(buildFile('null')), /must be a JSON object/)
  assertRejects(
    () => decodeSafetensors(buildFile('{"a":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}}', new Uint8Array(2))),
    /tensor "a": unknown dtype "F8"/,
  )
  assertRejects(
    () =>
      decodeSafetensors(buildFile('{"a":{"dtype":"toString","shape":[2],"data_offsets":[0,2]}}', new Uint8Array(2))),
    /unknown dtype/,
  )
  assertRejects(
    () => decodeSafetensors(buildFile('{"a":{"shape":[2],"data_offsets":[0,8]}}', eight)),
    /unknown dtype undefined/,
  )
  // wrong byte count: F32 [3] needs 12 bytes
  assertRejects(
    () => decodeSafetensors(buildFile('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', eight)),
    /needs 12 bytes, data_offsets give 8/,
  )
  // overlap
  assertRejects(
    () =>
      decodeSafetensors(
        buildFile(
          '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}',
          new Uint8Array(12),
        ),
      ),
    /tensor "b".*overlap/,
  )
  // identical ranges also overlap
  assertRejects(
    () =>
      decodeSafetensors(
        buildFile(
          '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}',
          eight,
        ),
      ),
    /overlap/,
  )
  // gap in the middle, and a gap before the first tensor
  assertRejects(
    () =>
      decodeSafetensors(
        buildFile(
          '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}',
          new Uint8Array(12),
        ),
      ),
    /tensor "b": gap/,
  )
  assertRejects(
    () => decodeSafetensors(buildFile('{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', eight)),
    /gap/,
  )
  // trailing bytes (also: data but no tensors at all)
  assertRejects(
    () => decodeSafetensors(buildFile('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', eight)),
    /4 trailing bytes/,
  )
  assertRejects(() => decodeSafetensors(buildFile('{}', new Uint8Array(1))), /1 trailing bytes/)
  // offsets outside the data section / malformed
  assertRejects(
    () => decodeSafetensors(buildFile('{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', eight)),
    /outside data section of 8 bytes/,
  )
  assertRejects(
    () => decodeSafetensors(buildFile('{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}', eight)),
    /outside/,
  )
  assertRejects(
    () => decodeSafetensors(buildFile('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}}', eight)),
    /data_offsets must be \[begin, end\]/,
  )
  assertRejects(
    () => decodeSafetensors(buildFile('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,"8"]}}', eight)),
    /data_offsets must be/,
  )
  assertRejects(
    () => decodeSafetensors(buildFile('{"a":{"dtype":"F32","shape":[2],"data_offsets":[-0.5,8]}}', eight)),
    /data_offsets must be/,
  )
  // shapes
  assertRejects(
    () => decodeSafetensors(buildFile('{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', eight)),
    /shape entries must be non-negative integers, got -2/,
  )
  assertRejects(
    () => decodeSafetensors(buildFile('{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}}', eight)),
    /non-negative integers, got 1.5/,
  )
  assertRejects(
    () => decodeSafetensors(buildFile('{"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}}', eight)),
    /shape must be an array/,
  )
  assertRejects(
    () => decodeSafetensors(buildFile('{"a":{"dtype":"F32","shape":[1e300],"data_offsets":[0,8]}}', eight)),
    /non-negative integers/,
  )
  assertRejects(
    () =>
      decodeSafetensors(buildFile('{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}', eight)),
    /too many elements/,
  )
  // entries, names, metadata
  assertRejects(() => decodeSafetensors(buildFile('{"a":[1,2]}')), /header entry must be an object/)
  assertRejects(
    () => decodeSafetensors(buildFile('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}', eight)),
    /unexpected field "x"/,
  )
  assertRejects(
    () => decodeSafetensors(buildFile('{"":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', eight)),
    /empty name/,
  )
  assertRejects(
    () => decodeSafetensors(buildFile('{"__metadata__":{"k":1}}')),
    /__metadata__ value for "k" must be a string/,
  )
  assertRejects(() => decodeSafetensors(buildFile('{"__metadata__":["x"]}')), /__metadata__ must be an object/)
  assertRejects(
    () =>
      decodeSafetensors(buildFile('{"m":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}}', new Uint8Array([1, 2]))),
    /BOOL values must be 0 or 1/,
  )
  // A newline in a tensor name must not leak into the message.
  assertRejects(
    () => decodeSafetensors(buildFile(String.raw`{"a\nb":{"dtype":"F9","shape":[],"data_offsets":[0,0]}}`)),
    /"a\\nb"/,
  )
  assertRejects(() => decodeSafetensors(new Uint8Array(8), {maxHeaderBytes: -1}), /maxHeaderBytes/)
})

// ---------------------------------------------------------------------------------------------------
// rejection cases (encode)

test('encode rejects invalid input with SafetensorsError', () => {
  const ok = (): NamedTensor => ({dtype: 'F32', shape: [2], data: new Float32Array(2)})
  assertRejects(
    () => encodeSafetensors({a: {dtype: 'F32', shape: [3], data: new Float32Array(2)}}),
    /needs 3 elements, data has 2/,
  )
  assertRejects(() => encodeSafetensors({a: {dtype: 'F32', shape: [], data: new Float32Array(0)}}), /needs 1 elements/)
  assertRejects(
    () => encodeSafetensors({a: {dtype: 'F32', shape: [2], data: new Float64Array(2)}}),
    /needs a Float32Array, got Float64Array/,
  )
  assertRejects(
    () => encodeSafetensors({a: {dtype: 'I64', shape: [2], data: new Int32Array(2)}}),
    /needs a BigInt64Array/,
  )
  assertRejects(
    () => encodeSafetensors({a: {dtype: 'F16', shape: [2], data: new Float32Array(2)}}),
    /F16 needs a Uint8Array/,
  )
  assertRejects(
    () => encodeSafetensors({a: {dtype: 'BF16', shape: [2], data: new Uint8Array(2)}}),
    /needs 4 bytes \(2 per element\), data has 2/,
  )
  assertRejects(
    () => encodeSafetensors({a: {dtype: 'X' as never, shape: [2], data: new Float32Array(2)}}),
    /unknown dtype "X"/,
  )
  assertRejects(
    () => encodeSafetensors({a: {dtype: 'F32', shape: [-1], data: new Float32Array(0)}}),
    /non-negative integers/,
  )
  assertRejects(
    () => encodeSafetensors({a: {dtype: 'F32', shape: [0.5], data: new Float32Array(0)}}),
    /non-negative integers/,
  )
  assertRejects(() => encodeSafetensors({'': ok()}), /non-empty/)
  assertRejects(() => encodeSafetensors({__metadata__: ok()}), /reserved/)
  assertRejects(
    () => encodeSafetensors({a: {dtype: 'BOOL', shape: [1], data: new Uint8Array([3])}}),
    /BOOL values must be 0 or 1/,
  )
  assertRejects(
    () => encodeSafetensors({a: ok()}, {k: 5 as unknown as string}),
    /metadata value for "k" must be a string/,
  )
  assertRejects(() => encodeSafetensors({a: null as unknown as NamedTensor}), /expected \{dtype, shape, data\}/)
})

// ---------------------------------------------------------------------------------------------------
// fuzz

test('fuzz: corrupted files either decode or throw SafetensorsError', {timeout: 20_000}, () => {
  const rand = mulberry32(0x5a_fe_7e_45)
  const int = (n: number): number => Math.floor(rand() * n)
  const base = encodeSafetensors(
    {
      ...sampleTensors(),
      half: {dtype: 'F16', shape: [3], data: u16Bytes(0x3c_00, 0x7e_00, 0x80_01)},
      brain: {dtype: 'BF16', shape: [1, 2], data: u16Bytes(0x3f_80, 0xff_80)},
    },
    {kind: 'fuzz'},
  )
  const headerEnd = 8 + Number(new DataView(base.buffer).getBigUint64(0, true))
  const jsonChars = '{}[]",:0123456789-.eE \\'
  const counts = {ok: 0, rejected: 0}
  const t0 = Date.now()
  for (let i = 0; i < 2000; i++) {
    let bytes = base.slice()
    const mode = i % 6
    switch (mode) {
      case 0: {
        bytes = bytes.slice(0, int(bytes.length + 1)) // truncate

        break
      }

      case 1: {
        for (let k = 1 + int(8); k > 0; k--) {
          // flip bits anywhere
          const pos = int(bytes.length)
          bytes[pos] ^= 1 << int(8)
        }

        break
      }

      case 2: {
        for (let k = 1 + int(4); k > 0; k--) {
          // flip bits inside the header text
          const pos = 8 + int(headerEnd - 8)
          bytes[pos] ^= 1 << int(8)
        }

        break
      }

      case 3: {
        for (let k = 1 + int(3); k > 0; k--) {
          // plant JSON punctuation/digits in the header
          bytes[8 + int(headerEnd - 8)] = jsonChars.codePointAt(int(jsonChars.length))!
        }

        break
      }

      case 4: {
        for (let k = 1 + int(8); k > 0; k--) {
          // flip bits in the tensor data only
          const pos = headerEnd + int(bytes.length - headerEnd)
          bytes[pos] ^= 1 << int(8)
        }

        break
      }

      default: {
        // overwrite the length prefix: random u64, near the true length, or huge
        const dv = new DataView(bytes.buffer)
        const choice = int(3)
        const v =
          choice === 0
            ? (BigInt(int(2 ** 32)) << 32n) | BigInt(int(2 ** 32))
            : choice === 1
              ? BigInt(Math.max(0, headerEnd - 8 + int(41) - 20))
              : 2n ** 64n - 1n - BigInt(int(1000))
        dv.setBigUint64(0, v, true)
      }
    }

    try {
      decodeSafetensors(bytes)
      counts.ok++
    } catch (error) {
      if (!(error instanceof SafetensorsError)) {
        assert.fail(`case ${i} (mode ${mode}) threw ${(error as Error)?.constructor?.name}: ${String(error)}`)
      }

      assert.ok(!/[\r\n]/.test(error.message), `case ${i}: multi-line message`)
      counts.rejected++
    }
  }

  // Sanity: the fuzzer must exercise both paths (bit flips in tensor data mostly decode fine,
  // except in the BOOL tensor).
  assert.ok(counts.ok > 200, `only ${counts.ok} successes`)
  assert.ok(counts.rejected > 500, `only ${counts.rejected} rejections`)
  assert.ok(Date.now() - t0 < 10_000, 'fuzz loop too slow')
})

// ---------------------------------------------------------------------------------------------------
// files

test('writeSafetensorsFile + readSafetensorsFile round trip, atomic, no temp files left', () => {
  const dir = mkdtempSync(join(tmpdir(), 'safetensors-test-'))
  try {
    const path = join(dir, 'model.safetensors')
    writeSafetensorsFile(path, sampleTensors(), {step: '10'})
    const first = readSafetensorsFile(path)
    assert.deepEqual(first.metadata, {step: '10'})
    assert.deepEqual(rawBytes(first.tensors['layer.0.weight'].data), rawBytes(sampleTensors()['layer.0.weight'].data))
    assert.deepEqual(readFileSync(path), Buffer.from(encodeSafetensors(sampleTensors(), {step: '10'})))
    // Overwriting replaces the content.
    writeSafetensorsFile(path, {x: {dtype: 'I32', shape: [1], data: new Int32Array([9])}})
    const second = readSafetensorsFile(path)
    assert.deepEqual(Object.keys(second.tensors), ['x'])
    assert.deepEqual(second.metadata, {})
    assert.deepEqual(readdirSync(dir), ['model.safetensors'])
  } finally {
    rmSync(dir, {recursive: true, force: true})
  }
})

test('existing file is untouched when encode throws; read errors, fs ones included, are prefixed with the path', () => {
  const dir = mkdtempSync(join(tmpdir(), 'safetensors-test-'))
  try {
    const path = join(dir, 'keep.safetensors')
    writeSafetensorsFile(path, sampleTensors())
    const before = readFileSync(path)
    assertRejects(
      () => writeSafetensorsFile(path, {bad: {dtype: 'F32', shape: [5], data: new Float32Array(2)}}),
      new RegExp(`^${path.replaceAll(/[.*+?^${}()|[\]\\]/g, String.raw`\$&`)}: tensor "bad"`),
    )
    assert.deepEqual(readFileSync(path), before)
    assert.deepEqual(readdirSync(dir), ['keep.safetensors'])

    const broken = join(dir, 'broken.safetensors')
    writeFileSync(broken, before.subarray(0, 20))
    assertRejects(() => readSafetensorsFile(broken), /broken\.safetensors: header length \d+ runs past the end/)
    assert.ok(!existsSync(join(dir, 'missing.safetensors')))
    // A missing file, or one that is not a regular file, is the same one-line error naming it.
    assert.throws(() => readSafetensorsFile(join(dir, 'missing.safetensors')), /missing\.safetensors: no such file$/)
    assert.throws(() => readSafetensorsFile(dir), /: not a regular file$/)
  } finally {
    rmSync(dir, {recursive: true, force: true})
  }
})
