// Fuzzing the two readers of untrusted bytes: the safetensors decoder and the checkpoint loader. Thousands of
// truncated, bit-flipped, oversized and mangled inputs (seeded, so a failure reproduces); each must end, well within
// a time bound, either in a valid result or in the reader's own one-line error (never another error type, a crash or
// a hang). Checksums are also fixed up after corrupting a file, so the parser behind them is reached too.
import assert from 'node:assert/strict'
import {createHash} from 'node:crypto'
import {mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, test} from 'node:test'

import {ModelConfig, PRESETS, TrainConfig} from '../../../src/model/config.js'
import {CheckpointError} from '../../../src/model/io/checkpoint.js'
import {decodeSafetensors, encodeSafetensors, NamedTensor, SafetensorsError} from '../../../src/model/io/safetensors.js'
import {initParamData, zerosLike} from '../../../src/model/params.js'
import {Rng} from '../../../src/model/rng.js'
import {readCheckpoint, saveCheckpoint} from '../../../src/model/train/run-dir.js'

const CASE_MS = 200 // per input; a real checkpoint of the tiny preset reads in a few ms

/** Deterministic uniform draws from the project's seeded PRNG: .. */
const mulberry32 = (seed: number) => {
  const r = new Rng(seed)
  return () => r.uniform()
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')

/** Byte-level corruptions shared by both fuzzers. Each returns a new array and a short description. */
function mutateBytes(src: Uint8Array, rand: () => number): {bytes: Uint8Array; what: string} {
  const int = (n: number) => Math.floor(rand() * n)
  const headerEnd =
    src.length >= 8
      ? Math.min(src.length, 8 + Number(new DataView(src.buffer, src.byteOffset, 8).getBigUint64(0, true)))
      : src.length
  switch (int(7)) {
    case 0: {
      // truncated anywhere, header and empty file included
      const n = int(src.length)
      return {bytes: src.slice(0, n), what: `truncated to ${n}`}
    }

    case 1: {
      // bit flips anywhere
      const b = src.slice()
      const k = 1 + int(8)
      for (let i = 0; i < k; i++) b[int(b.length)] ^= 1 << int(8)
      return {bytes: b, what: `${k} flipped bits`}
    }

    case 2: {
      // bit flips in the length prefix or JSON header, where the parser has to cope
      const b = src.slice()
      const k = 1 + int(4)
      for (let i = 0; i < k; i++) b[int(headerEnd)] ^= 1 << int(8)
      return {bytes: b, what: `${k} flipped header bits`}
    }

    case 3: {
      // a wrong header length: huge, zero, off by a little, past the end
      const b = src.slice()
      const choices = [
        0n,
        1n,
        7n,
        2n ** 64n - 1n,
        2n ** 63n,
        2n ** 53n + 1n,
        100_000_001n,
        BigInt(src.length),
        BigInt(src.length - 7),
        BigInt(headerEnd - 8 + int(17) - 8),
        BigInt(int(2 ** 31)),
      ]
      const v = choices[int(choices.length)]
      const n = v < 0n ? 0n : v
      new DataView(b.buffer).setBigUint64(0, n, true)
      return {bytes: b, what: `header length ${n}`}
    }

    case 4: {
      // oversized: up to 1 MiB of trailing garbage
      const extra = new Uint8Array(1 + int(1 << 20)).map(() => int(256))
      const b = new Uint8Array(src.length + extra.length)
      b.set(src)
      b.set(extra, src.length)
      return {bytes: b, what: `${extra.length} extra bytes`}
    }

    case 5: {
      // garbage with a plausible length prefix
      const n = int(4096)
      const b = new Uint8Array(8 + n).map(() => int(256))
      new DataView(b.buffer).setBigUint64(0, BigInt(int(n + 16)), true)
      return {bytes: b, what: `${n} random bytes`}
    }

    default: {
      // a byte run overwritten (a torn sector)
      const b = src.slice()
      const at = int(b.length)
      const len = 1 + int(512)
      for (let i = at; i < Math.min(b.length, at + len); i++) b[i] = int(2) ? 0 : int(256)
      return {bytes: b, what: `${len} bytes overwritten at ${at}`}
    }
  }
}

/** Header-level corruptions: a well-framed file whose JSON says something wrong, so validation (not framing) is hit. */
function mutateHeader(src: Uint8Array, rand: () => number): {bytes: Uint8Array; what: string} {
  const int = (n: number) => Math.floor(rand() * n)
  const n = Number(new DataView(src.buffer, src.byteOffset, 8).getBigUint64(0, true))
  const header = JSON.parse(new TextDecoder().decode(src.subarray(8, 8 + n)))
  const data = src.subarray(8 + n)
  const names = Object.keys(header).filter((k) => k !== '__metadata__')
  const junk = [
    null,
    -1,
    0,
    1.5,
    2 ** 53,
    2 ** 60,
    1e308,
    -0,
    '',
    'F32',
    'X',
    [],
    {},
    [1, 2, 3],
    [-1],
    [2 ** 31, 2 ** 31],
    ['a'],
    true,
    'x'.repeat(int(100_000)),
  ]
  const pick = () => junk[int(junk.length)]
  let what: string
  let text: string | undefined
  const name = names[int(names.length)]
  switch (int(8)) {
    case 0: {
      header[name].dtype = pick()
      what = `${name}.dtype`
      break
    }

    case 1: {
      header[name].shape = int(2) ? pick() : Array.from({length: int(64)}, () => (int(3) ? int(4) : 2 ** int(60)))
      what = `${name}.shape`
      break
    }

    case 2: {
      header[name].data_offsets = int(2) ? pick() : [int(data.length + 8) - 4, int(data.length + 8) - 4]
      what = `${name}.data_offsets`
      break
    }

    case 3: {
      const field = ['dtype', 'shape', 'data_offsets'][int(3)]
      delete header[name][field]
      what = `${name}.${field} removed`
      break
    }

    case 4: {
      // defineProperty: plain assignment of "__proto__" would set the prototype, not add a key
      const odd = ['__proto__', '', 'constructor', 'toString', 'x'.repeat(1000), '__metadata__'][int(6)]
      Object.defineProperty(header, odd, {
        value: int(2) ? pick() : {...header[name]},
        enumerable: true,
        writable: true,
        configurable: true,
      })
      what = `tensor named ${JSON.stringify(odd.slice(0, 20))}`
      break
    }

    case 5: {
      header.__metadata__ = int(2) ? pick() : {k: pick()}
      what = '__metadata__'
      break
    }

    case 6: {
      // deep nesting: the JSON parser must fail cleanly, not blow the stack
      const d = 1 + int(200_000)
      text = `{"a":${'['.repeat(d)}${']'.repeat(int(2) ? d : 0)}}`
      what = `nesting ${d}`
      break
    }

    default: {
      // a valid but huge header (MiBs of padding) that must still parse quickly
      text = JSON.stringify(header) + ' '.repeat(int(4 << 20))
      what = 'padded header'
    }
  }

  const json = new TextEncoder().encode(text ?? JSON.stringify(header))
  const out = new Uint8Array(8 + json.length + data.length)
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true)
  out.set(json, 8)
  out.set(data, 8 + json.length)
  return {bytes: out, what: `header: ${what}`}
}

let root: string
const cfg: ModelConfig = {arch: 'mhc', ...PRESETS.tiny.model}
const tc: TrainConfig = {...PRESETS.tiny.train}
let ckptDir: string
let pristine: Record<string, Uint8Array>

before(async () => {
  root = mkdtempSync(join(tmpdir(), 'mhc-fuzz-'))
  ckptDir = saveCheckpoint(
    join(root, 'run'),
    {step: 3, params: initParamData(cfg, 5), m: zerosLike(cfg), v: zerosLike(cfg), dataRng: new Rng(9).state},
    cfg,
    tc,
    {data: {source: 'moby-dick', sha256: 'ab'.repeat(32), bytes: 1000}, metrics: {trainLoss: 2}, backend: 'wasm'},
  )
  // Plain Uint8Array copies: Buffer#slice is a view, and the mutators must never write into the originals.
  pristine = Object.fromEntries(
    ['manifest.json', 'model.safetensors', 'optimizer.safetensors'].map((f) => [
      f,
      new Uint8Array(readFileSync(join(ckptDir, f))),
    ]),
  )
})
after(() => {
  if (root) rmSync(root, {recursive: true, force: true})
})

/** Runs `fn`, timing it; the outcome must be a value or an error of `errorType`. */
function attempt(
  fn: () => unknown,
  errorType: new (...args: any[]) => Error,
  what: string,
): {ok: boolean; ms: number; chars: number} {
  const t0 = performance.now()
  let ok = true
  let chars = 0
  try {
    fn()
  } catch (error) {
    ok = false
    if (!(error instanceof errorType))
      assert.fail(`${what}: threw ${(error as Error)?.name}: ${String((error as Error)?.message).slice(0, 300)}`)
    assert.ok(!/[\r\n]/.test((error as Error).message), `${what}: one-line message`)
    chars = (error as Error).message.length
  }

  const ms = performance.now() - t0
  assert.ok(ms < CASE_MS, `${what}: took ${ms.toFixed(0)} ms`)
  return {ok, ms, chars}
}

function atOddOffset(b: Uint8Array): Uint8Array {
  const wide = new Uint8Array(b.length + 3)
  wide.set(b, 3)
  return wide.subarray(3)
}

test('decodeSafetensors: 4000 corrupt inputs each give a SafetensorsError (or a valid decode) within the time bound', () => {
  const f32 = new Float32Array([1, -2, 3.5, Number.NaN, Infinity, 0])
  const bases: Uint8Array[] = [
    pristine['model.safetensors'],
    atOddOffset(pristine['optimizer.safetensors']), // a view whose byteOffset is not a multiple of 4
    encodeSafetensors(
      {
        f32: {dtype: 'F32', shape: [2, 3], data: f32},
        f64: {dtype: 'F64', shape: [2], data: new Float64Array([1e300, -0])},
        f16: {dtype: 'F16', shape: [2], data: new Uint8Array([0x00, 0x3c, 0x00, 0x7c])},
        bf16: {dtype: 'BF16', shape: [1], data: new Uint8Array([0x80, 0x3f])},
        i64: {dtype: 'I64', shape: [1], data: new BigInt64Array([-5n])},
        i32: {dtype: 'I32', shape: [3], data: new Int32Array([1, 2, 3])},
        i16: {dtype: 'I16', shape: [1], data: new Int16Array([7])},
        i8: {dtype: 'I8', shape: [2], data: new Int8Array([-1, 1])},
        u8: {dtype: 'U8', shape: [0, 4], data: new Uint8Array(0)},
        b: {dtype: 'BOOL', shape: [], data: new Uint8Array([1])},
      } as Record<string, NamedTensor>,
      {format: 'pt'},
    ),
  ]
  const rand = mulberry32(7)
  let errors = 0
  let maxMs = 0
  let maxChars = 0
  const CASES = 4000
  for (let i = 0; i < CASES; i++) {
    const base = bases[i % bases.length]
    const {bytes, what} = rand() < 0.65 ? mutateBytes(base, rand) : mutateHeader(base, rand)
    const r = attempt(() => decodeSafetensors(bytes), SafetensorsError, `case ${i} (${what})`)
    if (!r.ok) errors++
    maxMs = Math.max(maxMs, r.ms)
    maxChars = Math.max(maxChars, r.chars)
  }

  // (decodeSafetensors quotes offending header values whole; checkpoint and CLI messages clip them, see below.)
  console.log(
    `# safetensors fuzz: ${CASES} cases, ${errors} rejected, ${CASES - errors} decoded, max ${maxMs.toFixed(1)} ms per case, longest message ${maxChars} chars`,
  )
  assert.ok(errors > CASES / 2, 'most corrupt inputs are rejected')
})

test('readCheckpoint: 2500 corrupt checkpoints (manifest, weight files, latest; checksums stale or fixed up) each give a CheckpointError (or a verified result) within the time bound', () => {
  const run = join(root, 'fuzz-run')
  const dir = join(run, 'ckpt-000003')
  const files = Object.keys(pristine)
  const manifest0 = JSON.parse(new TextDecoder().decode(pristine['manifest.json']))
  const reset = () => {
    rmSync(run, {recursive: true, force: true})
    mkdirSync(dir, {recursive: true})
    for (const f of files) writeFileSync(join(dir, f), pristine[f])
    writeFileSync(join(run, 'latest'), 'ckpt-000003\n')
  }

  /** Every leaf path of the manifest, e.g. ['model', 'dModel'], ['files', 'model.safetensors', 'sha256']. */
  const leaves: string[][] = []
  const walk = (v: any, path: string[]) => {
    if (v !== null && typeof v === 'object' && path.length < 4) for (const k of Object.keys(v)) walk(v[k], [...path, k])
    else leaves.push(path)
  }

  walk(manifest0, [])
  const junk = [
    null,
    -1,
    0,
    1,
    1.5,
    2 ** 31,
    2 ** 53,
    1e308,
    -1e308,
    'x',
    '',
    '../../etc',
    [],
    {},
    [1],
    true,
    'F32',
    'ckpt-000003',
    'f'.repeat(64),
  ]

  const rand = mulberry32(11)
  const int = (n: number) => Math.floor(rand() * n)
  let errors = 0
  let maxMs = 0
  const kinds: Record<string, number> = {}
  const CASES = 2500
  for (let i = 0; i < CASES; i++) {
    reset()
    let target = int(4) === 0 ? run : dir // through `latest` or directly
    let what: string
    const kind = ['manifest-json', 'manifest-bytes', 'weights-stale', 'weights-fixed', 'latest', 'structure'][int(6)]
    kinds[kind] = (kinds[kind] ?? 0) + 1
    switch (kind) {
      case 'manifest-json': {
        // wrong types, values and missing keys at any depth
        const m = structuredClone(manifest0)
        const k = 1 + int(3)
        const changed: string[] = []
        for (let j = 0; j < k; j++) {
          // A top-level key first, so the ~200 entries of the (informational) tensor index do not crowd out the rest.
          const top = Object.keys(manifest0)[int(Object.keys(manifest0).length)]
          const under = leaves.filter((l) => l[0] === top)
          const path = under[int(under.length)].slice(0, 1 + int(4))
          let o = m
          for (const p of path.slice(0, -1)) o = o?.[p]
          if (o === null || typeof o !== 'object') continue
          if (int(4) === 0) delete o[path.at(-1)!]
          else o[path.at(-1)!] = junk[int(junk.length)]
          changed.push(path.join('.'))
        }

        writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m))
        what = `manifest ${changed.join(', ')}`

        break
      }

      case 'manifest-bytes': {
        const {bytes, what: w} = mutateBytes(pristine['manifest.json'], rand)
        writeFileSync(join(dir, 'manifest.json'), bytes)
        what = `manifest.json ${w}`

        break
      }

      case 'weights-stale':
      case 'weights-fixed': {
        const file = int(2) ? 'model.safetensors' : 'optimizer.safetensors'
        const {bytes, what: w} = int(3) ? mutateBytes(pristine[file], rand) : mutateHeader(pristine[file], rand)
        writeFileSync(join(dir, file), bytes)
        if (kind === 'weights-fixed') {
          // the checksum matches, so decoding and the shape/finiteness checks are reached
          const m = structuredClone(manifest0)
          m.files[file] = {sha256: sha256(bytes), bytes: bytes.length}
          writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m))
        }

        what = `${file} ${w}${kind === 'weights-fixed' ? ' (checksum fixed up)' : ''}`

        break
      }

      case 'latest': {
        target = run
        const choices = ['ckpt-000004', 'ckpt-3', '../ckpt-000003', '', 'ckpt-000003/../../x', '\u0000', 'ckpt-00000３']
        const body = int(2) ? choices[int(choices.length)] : Buffer.from(Array.from({length: int(64)}, () => int(256)))
        writeFileSync(join(run, 'latest'), body)
        if (int(5) === 0) truncateSync(join(run, 'latest'), 50 << 20) // oversized (sparse)
        what = `latest ${JSON.stringify(String(body)).slice(0, 40)}`

        break
      }

      default: {
        // files that are directories, missing, empty, or huge (sparse, so the test stays fast)
        const file = files[int(files.length)]
        const p = join(dir, file)
        const op = int(4)
        switch (op) {
          case 0: {
            rmSync(p)
            mkdirSync(p)

            break
          }

          case 1: {
            rmSync(p)
            break
          }

          case 2: {
            writeFileSync(p, '')
            break
          }

          default: {
            truncateSync(p, (1 + int(200)) << 20)
          }
        }

        what = `${file}: ${['a directory', 'missing', 'empty', 'huge'][op]}`
      }
    }

    const r = attempt(() => readCheckpoint(target, {optimizer: int(3) > 0}), CheckpointError, `case ${i} (${what})`)
    if (!r.ok) errors++
    maxMs = Math.max(maxMs, r.ms)
    assert.ok(r.chars <= 600, `case ${i} (${what}): a short message, got ${r.chars} chars`)
  }

  console.log(
    `# checkpoint fuzz: ${CASES} cases ${JSON.stringify(kinds)}, ${errors} rejected, ${CASES - errors} loaded, max ${maxMs.toFixed(1)} ms per case`,
  )
  assert.ok(errors > CASES / 2, 'most corrupt checkpoints are rejected')
})
