// Checkpoint save/load at library level: exact round trip, an independently parsed safetensors layout, every
// documented failure as a one-line CheckpointError, and re-saving a step atomically.
import assert from 'node:assert/strict'
import {createHash} from 'node:crypto'
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, test} from 'node:test'

import {type ModelConfig, PRESETS, type TrainConfig} from '../../../src/model/config.js'
import {selectBackend} from '../../../src/model/engines/tfjs/backend.js'
import {TfjsEngine} from '../../../src/model/engines/tfjs/engine.js'
import {
  CHECKPOINT_FORMAT,
  CHECKPOINT_VERSION,
  CheckpointError,
  type Manifest,
  type TrainingState,
} from '../../../src/model/io/checkpoint.js'
import {type Corpus, loadCorpus} from '../../../src/model/io/data.js'
import {paramSpecs} from '../../../src/model/params.js'
import {Rng} from '../../../src/model/rng.js'
import {restore, runTraining, takeStep} from '../../../src/model/train/loop.js'
import {
  checkpointName,
  LATEST,
  readCheckpoint as loadCheckpoint,
  resolveCheckpoint,
  saveCheckpoint,
} from '../../../src/model/train/run-dir.js'

// ---------------------------------------------------------------------------------------------------
// helpers

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')

/** The exact bytes behind a typed array (NaN payloads and -0 included). */
const rawBytes = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength)

let root: string
const fresh = (name: string) => {
  const d = join(root, name)
  mkdirSync(d)
  return d
}

const cfg: ModelConfig = {arch: 'mhc', ...PRESETS.tiny.model}
const tc: TrainConfig = {...PRESETS.tiny.train, steps: 4, saveEvery: 2, evalEvery: 0, evalWindows: 4}
let corpus: Corpus

/** A deterministic UTF-8 text corpus (a few tens of KB, so sampling and evaluation stay fast). */
function writeCorpus(path: string): void {
  const words = [
    'whale',
    'sea',
    'ship',
    'captain',
    'harpoon',
    'the',
    'a',
    'of',
    'and',
    'white',
    'deep',
    'Ahab',
    'sailed',
  ]
  const rng = new Rng(7)
  const out: string[] = []
  for (let i = 0; i < 6000; i++) out.push(words[rng.int(words.length)] + (rng.int(12) === 0 ? '.\n' : ' '))
  writeFileSync(path, out.join(''))
}

/** A training state with non-trivial weights and AdamW moments (real optimiser steps), read back to the host. */
async function makeState(steps = 2): Promise<TrainingState> {
  const engine = new TfjsEngine({model: cfg})
  try {
    const pos = restore(engine, tc)
    for (let i = 0; i < steps; i++) await takeStep(engine, pos, tc, corpus.train)
    return {step: pos.step, ...(await engine.readState()), dataRng: pos.dataRng.state}
  } finally {
    engine.dispose()
  }
}

const info = () => ({
  data: {source: corpus.source, sha256: corpus.sha256, bytes: corpus.bytes},
  metrics: {trainLoss: 1.5},
  backend: 'wasm',
})

/** Asserts `fn` throws a CheckpointError whose single-line message matches `pattern`. */
function assertCheckpointError(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof CheckpointError, `expected CheckpointError, got ${(err as Error)?.name}: ${String(err)}`)
    assert.match(err.message, pattern)
    assert.ok(!/[\r\n]/.test(err.message), `message must be one line: ${JSON.stringify(err.message)}`)
    assert.ok(err.message.length < 400, 'message should be short')
    return true
  })
}

interface ParsedTensor {
  dtype: string
  shape: number[]
  data_offsets: [number, number]
}
interface ParsedSafetensors {
  headerLen: number
  header: Record<string, unknown>
  dataStart: number
  bytes: Buffer
}

/**
 * Independent minimal safetensors reader (what a PyTorch user's `safetensors.torch.load_file` relies on): u64 LE
 * header length, UTF-8 JSON header, then a byte buffer that the tensors' data_offsets tile exactly.
 */
function parseSafetensors(bytes: Buffer): ParsedSafetensors {
  assert.ok(bytes.length >= 8, 'file shorter than the 8-byte length prefix')
  const n = bytes.readBigUInt64LE(0)
  assert.ok(n > 0n && n <= BigInt(bytes.length - 8), `header length ${n} out of range`)
  const headerLen = Number(n)
  const text = new TextDecoder('utf8', {fatal: true}).decode(bytes.subarray(8, 8 + headerLen))
  assert.equal(text[0], '{', 'header must start with {')
  assert.match(text, /^\{[\s\S]*\}\s*$/, 'header is a JSON object, only whitespace padding after it')
  const header = JSON.parse(text) as Record<string, unknown>
  return {headerLen, header, dataStart: 8 + headerLen, bytes}
}

function tensorEntries(p: ParsedSafetensors): [string, ParsedTensor][] {
  return Object.entries(p.header).filter(([k]) => k !== '__metadata__') as [string, ParsedTensor][]
}

/** Float32 values of one tensor, decoded with DataView (little-endian), not via typed-array views. */
function readF32(p: ParsedSafetensors, name: string): Float32Array {
  const t = p.header[name] as ParsedTensor
  const [b, e] = t.data_offsets
  const out = new Float32Array((e - b) / 4)
  const dv = new DataView(p.bytes.buffer, p.bytes.byteOffset + p.dataStart + b, e - b)
  for (let i = 0; i < out.length; i++) out[i] = dv.getFloat32(4 * i, true)
  return out
}

const readManifest = (dir: string): Manifest => JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'))
const writeManifest = (dir: string, m: unknown) => writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m, null, 2))

// A reference checkpoint (saved once) that the error tests copy and damage.
let refRun: string
let refCkpt: string
let refState: TrainingState
function copyRef(name: string): string {
  const d = join(root, name)
  cpSync(refCkpt, d, {recursive: true})
  return d
}

before(async () => {
  await selectBackend('wasm')
  root = mkdtempSync(join(tmpdir(), 'mhc-'))
  writeCorpus(join(root, 'corpus.txt'))
  corpus = loadCorpus(join(root, 'corpus.txt'), 0.1, cfg.seqLen + 1)
  refRun = fresh('ref-run')
  refState = await makeState(2)
  refCkpt = saveCheckpoint(refRun, refState, cfg, tc, info())
})

after(() => {
  if (root) rmSync(root, {recursive: true, force: true})
})

// ---------------------------------------------------------------------------------------------------
// round trip

test('save → load restores every parameter and both AdamW moments bit for bit, plus step and data RNG', () => {
  assert.equal(refCkpt, join(refRun, 'ckpt-000002'))
  const ck = loadCheckpoint(refCkpt, {optimizer: true})
  assert.equal(ck.dir, refCkpt)
  assert.ok(ck.m && ck.v, 'optimizer state requested')
  const names = paramSpecs(cfg).map((s) => s.name)
  assert.deepEqual(Object.keys(ck.params).sort(), [...names].sort())
  let nonZeroMoments = 0
  for (const name of names) {
    for (const [what, orig, loaded] of [
      ['param', refState.params[name], ck.params[name]],
      ['m', refState.m[name], ck.m[name]],
      ['v', refState.v[name], ck.v[name]],
    ] as const) {
      assert.ok(loaded instanceof Float32Array, `${what} ${name} is float32`)
      assert.ok(rawBytes(orig).equals(rawBytes(loaded)), `${what} ${name}: bytes differ after the round trip`)
      if (what !== 'param' && orig.some((x) => x !== 0)) nonZeroMoments++
    }
  }

  // The moments really were exercised (two optimiser steps), so the comparison above is not zeros vs zeros.
  assert.ok(nonZeroMoments >= names.length, `expected non-zero moments, got ${nonZeroMoments}`)
  // Loaded into an engine, parameters are trainable variables and moments are not.
  const engine = new TfjsEngine({model: cfg})
  try {
    engine.load({params: ck.params, m: ck.m, v: ck.v})
    assert.ok(Object.values(engine.variables.params).every((v) => (v as {trainable: boolean}).trainable))
    assert.ok(Object.values(engine.variables.m).every((v) => !(v as {trainable: boolean}).trainable))
  } finally {
    engine.dispose()
  }

  const m = ck.manifest
  assert.equal(m.step, 2)
  assert.equal(m.rng.data, refState.dataRng)
  assert.notEqual(m.rng.data, new Rng(tc.seed + 1).state, 'RNG advanced by the two batches')
})

test('manifest: format, version, arch, configs, tensor index, and checksums of the actual file bytes', () => {
  const m = readManifest(refCkpt)
  assert.equal(m.format, 'mhc-checkpoint')
  assert.equal(m.format, CHECKPOINT_FORMAT)
  assert.equal(m.version, 1)
  assert.equal(m.version, CHECKPOINT_VERSION)
  assert.equal(m.arch, 'mhc')
  assert.deepEqual(m.model, cfg)
  assert.deepEqual(m.train, tc)
  assert.equal(m.step, 2)
  assert.deepEqual(m.data, {source: corpus.source, sha256: corpus.sha256, bytes: corpus.bytes})
  assert.equal(m.backend, 'wasm')
  assert.equal(m.metrics.trainLoss, 1.5)
  assert.ok(!Number.isNaN(Date.parse(m.created)), 'created is a date')

  const specs = paramSpecs(cfg)
  const expected = [
    ...specs.map((s) => ({file: 'model.safetensors', name: s.name, shape: s.shape, dtype: 'F32'})),
    ...specs.map((s) => ({file: 'optimizer.safetensors', name: `m.${s.name}`, shape: s.shape, dtype: 'F32'})),
    ...specs.map((s) => ({file: 'optimizer.safetensors', name: `v.${s.name}`, shape: s.shape, dtype: 'F32'})),
  ]
  const key = (t: {file: string; name: string}) => `${t.file}:${t.name}`
  assert.deepEqual(
    [...m.tensors].sort((a, b) => key(a).localeCompare(key(b))),
    expected.sort((a, b) => key(a).localeCompare(key(b))),
  )

  assert.deepEqual(Object.keys(m.files).sort(), ['model.safetensors', 'optimizer.safetensors'])
  for (const [file, meta] of Object.entries(m.files)) {
    const bytes = readFileSync(join(refCkpt, file))
    assert.equal(meta.sha256, sha256(bytes), `${file} sha256`)
    assert.equal(meta.bytes, bytes.length, `${file} size`)
  }

  assert.deepEqual(readdirSync(refCkpt).sort(), ['manifest.json', 'model.safetensors', 'optimizer.safetensors'])
})

test('runTraining writes checkpoints; latest names the newest and loadCheckpoint(runDir) resolves it', async () => {
  const run = fresh('run-latest')
  // `await` whether runTraining is sync or async (it became async to yield between steps).
  const engine = new TfjsEngine({model: cfg})
  const summary = await runTraining({model: cfg, train: tc, corpus, outDir: run, engine}).finally(() =>
    engine.dispose(),
  )
  assert.equal(summary.steps, 4)
  assert.equal(summary.checkpoint, join(run, 'ckpt-000004'))
  assert.ok(existsSync(join(run, 'ckpt-000002', 'manifest.json')), 'intermediate checkpoint (saveEvery 2)')
  assert.ok(existsSync(join(run, 'ckpt-000004', 'manifest.json')))
  assert.equal(readFileSync(join(run, LATEST), 'utf8').trim(), 'ckpt-000004')
  assert.equal(checkpointName(4), 'ckpt-000004')
  assert.ok(!readdirSync(run).some((f) => f.includes('.tmp-')), 'no temp leftovers')

  const ck = loadCheckpoint(run, {optimizer: true})
  assert.equal(ck.dir, join(run, 'ckpt-000004'))
  assert.equal(ck.manifest.step, 4)
  assert.equal(ck.manifest.metrics.valLoss, summary.valLoss)
  assert.equal(ck.manifest.metrics.trainLoss, summary.trainLoss)
  // Loading the run dir and loading the checkpoint dir give the same weights.
  const direct = loadCheckpoint(join(run, 'ckpt-000004'))
  for (const k of Object.keys(ck.params)) assert.ok(rawBytes(ck.params[k]).equals(rawBytes(direct.params[k])), k)
  // The step-2 checkpoint differs from step 4 (training changed the weights).
  const early = loadCheckpoint(join(run, 'ckpt-000002'))
  assert.equal(early.manifest.step, 2)
  assert.ok(!rawBytes(early.params['tok_emb.weight']).equals(rawBytes(ck.params['tok_emb.weight'])))
})

// ---------------------------------------------------------------------------------------------------
// safetensors layout, read independently

test('model.safetensors is a valid safetensors file (independent parser) whose bytes decode to the saved floats', () => {
  for (const [file, prefixes] of [
    ['model.safetensors', ['']],
    ['optimizer.safetensors', ['m.', 'v.']],
  ] as const) {
    const bytes = readFileSync(join(refCkpt, file))
    const p = parseSafetensors(bytes)
    assert.equal(p.dataStart % 8, 0, `${file}: data buffer should start 8-byte aligned`)

    // Metadata, if any, must be a str→str map (safetensors requires it; PyTorch loaders reject anything else).
    const meta = p.header.__metadata__
    if (meta !== undefined) {
      assert.equal(typeof meta, 'object')
      for (const [k, v] of Object.entries(meta as object)) assert.equal(typeof v, 'string', `metadata ${k}`)
    }

    const entries = tensorEntries(p)
    const expectedNames = prefixes.flatMap((pre) => paramSpecs(cfg).map((s) => pre + s.name))
    assert.deepEqual(entries.map(([k]) => k).sort(), [...expectedNames].sort(), `${file}: tensor names`)
    const specByName = new Map(prefixes.flatMap((pre) => paramSpecs(cfg).map((s) => [pre + s.name, s] as const)))

    // Offsets tile [0, buffer length) exactly: no gaps, no overlaps, sizes match shape × 4 bytes.
    const sorted = [...entries].sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0])
    let cursor = 0
    for (const [name, t] of sorted) {
      assert.equal(t.dtype, 'F32', `${name} dtype`)
      assert.deepEqual(t.shape, specByName.get(name)!.shape, `${name} shape`)
      const [b, e] = t.data_offsets
      assert.ok(Number.isSafeInteger(b) && Number.isSafeInteger(e), `${name} offsets are integers`)
      assert.equal(b, cursor, `${name}: begins where the previous tensor ended`)
      const count = t.shape.reduce((x, y) => x * y, 1)
      assert.equal(e - b, 4 * count, `${name}: byte length = 4 × elements`)
      cursor = e
    }

    assert.equal(p.dataStart + cursor, bytes.length, `${file}: buffer ends at the end of the file`)
  }

  // Decode tensors by hand and compare with the in-memory state that was saved.
  const model = parseSafetensors(readFileSync(join(refCkpt, 'model.safetensors')))
  for (const name of ['tok_emb.weight', 'blocks.0.attn.qkv.weight', 'conn.0.alpha_pre']) {
    const fromFile = readF32(model, name)
    const orig = refState.params[name]
    assert.equal(fromFile.length, orig.length, name)
    assert.ok(rawBytes(fromFile).equals(rawBytes(orig)), `${name}: file bytes decode to the saved values`)
  }

  const optim = parseSafetensors(readFileSync(join(refCkpt, 'optimizer.safetensors')))
  const v = readF32(optim, 'v.blocks.0.mlp.fc.weight')
  assert.ok(rawBytes(v).equals(rawBytes(refState.v['blocks.0.mlp.fc.weight'])))
  assert.ok(
    v.some((x) => x > 0),
    'second moment is non-trivial',
  )
})

// ---------------------------------------------------------------------------------------------------
// errors

test('error: missing directory', () => {
  const p = join(root, 'no-such-dir')
  assertCheckpointError(() => loadCheckpoint(p), /no-such-dir: no such checkpoint or run directory/)
})

test('error: a path that is a file, not a directory', () => {
  const p = join(root, 'plain-file')
  writeFileSync(p, 'hello')
  assertCheckpointError(() => loadCheckpoint(p), /plain-file: not a directory/)
})

test('error: directory with neither manifest.json nor latest', () => {
  const d = fresh('empty-dir')
  assertCheckpointError(() => loadCheckpoint(d), /empty-dir: no manifest\.json .*no checkpoints/)
})

test('error: manifest.json is not JSON', () => {
  const d = copyRef('bad-json')
  writeFileSync(join(d, 'manifest.json'), '{"format": "mhc-checkpoint", oops')
  assertCheckpointError(() => loadCheckpoint(d), /bad-json: manifest\.json is not valid JSON/)
})

test('error: wrong format string', () => {
  const d = copyRef('bad-format')
  writeManifest(d, {...readManifest(d), format: 'something-else'})
  assertCheckpointError(() => loadCheckpoint(d), /bad-format: not an mhc checkpoint \(format "something-else"\)/)
})

test('error: unsupported version', () => {
  const d = copyRef('bad-version')
  writeManifest(d, {...readManifest(d), version: 2})
  assertCheckpointError(() => loadCheckpoint(d), /bad-version: checkpoint format version 2 is not supported/)
})

test('error: one flipped byte in a weight file is a checksum mismatch', () => {
  const d = copyRef('flipped')
  const p = join(d, 'model.safetensors')
  const b = readFileSync(p)
  b[b.length - 100] ^= 0x01 // inside the tensor data: the file still parses, only the checksum can tell
  writeFileSync(p, b)
  assertCheckpointError(() => loadCheckpoint(d), /flipped: model\.safetensors is corrupt \(checksum mismatch\)/)

  const d2 = copyRef('flipped-optim')
  const p2 = join(d2, 'optimizer.safetensors')
  const b2 = readFileSync(p2)
  b2[b2.length - 4] ^= 0x80
  writeFileSync(p2, b2)
  assertCheckpointError(
    () => loadCheckpoint(d2, {optimizer: true}),
    /flipped-optim: optimizer\.safetensors is corrupt \(checksum mismatch\)/,
  )
})

test('error: a weight file is missing', () => {
  const d = copyRef('missing-file')
  unlinkSync(join(d, 'model.safetensors'))
  assertCheckpointError(() => loadCheckpoint(d), /missing-file: model\.safetensors is missing/)
  const d2 = copyRef('missing-optim')
  unlinkSync(join(d2, 'optimizer.safetensors'))
  assertCheckpointError(() => loadCheckpoint(d2, {optimizer: true}), /missing-optim: optimizer\.safetensors is missing/)
})

test('error: a manifest whose model config implies other shapes (dModel changed) is a shape mismatch', () => {
  // The manifest is not itself checksummed, so the file checksums still match and the shape check is what fires.
  const d = copyRef('shape')
  const m = readManifest(d)
  writeManifest(d, {...m, model: {...m.model, dModel: 64}})
  assertCheckpointError(
    () => loadCheckpoint(d),
    /shape: model\.safetensors: tok_emb\.weight has shape \[256,32\], the config implies \[256,64\]/,
  )
})

test('error: an invalid model config (dModel not divisible by heads) is rejected before tensors', () => {
  const d = copyRef('bad-config')
  const m = readManifest(d)
  writeManifest(d, {...m, model: {...m.model, dModel: 33}})
  assertCheckpointError(
    () => loadCheckpoint(d),
    /bad-config: invalid model config: dModel 33 is not divisible by heads 2/,
  )
})

test('the retention record (keep) is read when valid and refused when not', () => {
  const d = copyRef('keep')
  const m = readManifest(d)
  writeManifest(d, {...m, keep: {last: 3, best: true}})
  assert.deepEqual(loadCheckpoint(d).manifest.keep, {last: 3, best: true})
  for (const keep of [null, 3, [], [1, 2], {lst: 3}, {last: -1}, {last: 1.5}, {best: 'yes'}]) {
    writeManifest(d, {...m, keep})
    assertCheckpointError(() => loadCheckpoint(d), /keep: invalid checkpoint retention record "keep"/)
  }
})

test('error: a valid file holding a NaN (with a matching checksum) is rejected as non-finite', () => {
  const d = copyRef('nan')
  const path = join(d, 'model.safetensors')
  const bytes = readFileSync(path)
  const p = parseSafetensors(bytes)
  const t = p.header['blocks.0.mlp.proj.weight'] as ParsedTensor
  bytes.writeFloatLE(Number.NaN, p.dataStart + t.data_offsets[0] + 8) // third element
  writeFileSync(path, bytes)
  const m = readManifest(d)
  m.files['model.safetensors'] = {sha256: sha256(bytes), bytes: bytes.length}
  writeManifest(d, m)
  // Sanity: still a structurally valid file, and the NaN is really there.
  assert.ok(Number.isNaN(readF32(parseSafetensors(readFileSync(path)), 'blocks.0.mlp.proj.weight')[2]))
  assertCheckpointError(
    () => loadCheckpoint(d),
    /nan: model\.safetensors: blocks\.0\.mlp\.proj\.weight contains non-finite values/,
  )

  // Infinity in an optimizer moment is caught too (only when the optimizer state is loaded).
  const d2 = copyRef('inf-optim')
  const op = join(d2, 'optimizer.safetensors')
  const ob = readFileSync(op)
  const q = parseSafetensors(ob)
  ob.writeFloatLE(
    Number.POSITIVE_INFINITY,
    q.dataStart + (q.header['m.tok_emb.weight'] as ParsedTensor).data_offsets[0],
  )
  writeFileSync(op, ob)
  const m2 = readManifest(d2)
  m2.files['optimizer.safetensors'] = {sha256: sha256(ob), bytes: ob.length}
  writeManifest(d2, m2)
  assertCheckpointError(
    () => loadCheckpoint(d2, {optimizer: true}),
    /inf-optim: optimizer\.safetensors: m\.tok_emb\.weight contains non-finite values/,
  )
})

test('latest names a checkpoint that does not exist: the newest complete one, or an error', () => {
  const run = fresh('dangling-latest')
  cpSync(refCkpt, join(run, 'ckpt-000002'), {recursive: true})
  writeFileSync(join(run, LATEST), 'ckpt-000099\n')
  // latest names a missing checkpoint (a kill during an overwrite): the newest complete one is used...
  assert.equal(loadCheckpoint(run).dir, join(run, 'ckpt-000002'))
  // ...and with none complete, a clear error.
  rmSync(join(run, 'ckpt-000002'), {recursive: true})
  assertCheckpointError(
    () => loadCheckpoint(run),
    /the checkpoint named by latest has no manifest\.json, and no other checkpoint is complete/,
  )
  cpSync(refCkpt, join(run, 'ckpt-000002'), {recursive: true})
  writeFileSync(join(run, LATEST), '../../etc\n')
  assertCheckpointError(() => loadCheckpoint(run), /latest: does not name a checkpoint/)
})

// ---------------------------------------------------------------------------------------------------
// re-saving

test('saving over an existing checkpoint of the same step leaves a complete, loadable checkpoint and no temp files', async () => {
  const run = fresh('resave')
  const state = await makeState(1)
  const first = saveCheckpoint(run, state, cfg, tc, info())
  const firstBytes = readFileSync(join(first, 'model.safetensors'))
  // Change the weights but not the step, then save the same step again.
  const w = state.params['tok_emb.weight']
  for (let i = 0; i < w.length; i++) w[i] += 1
  const second = saveCheckpoint(run, state, cfg, tc, info())
  assert.equal(second, first)
  assert.equal(second, join(run, 'ckpt-000001'))
  assert.equal(readFileSync(join(run, LATEST), 'utf8').trim(), 'ckpt-000001')

  const secondBytes = readFileSync(join(second, 'model.safetensors'))
  assert.ok(!secondBytes.equals(firstBytes), 'the new weights replaced the old ones')
  const ck = loadCheckpoint(run, {optimizer: true})
  assert.equal(ck.manifest.step, 1)
  assert.ok(rawBytes(ck.params['tok_emb.weight']).equals(rawBytes(w)))
  assert.equal(ck.manifest.files['model.safetensors'].sha256, sha256(secondBytes))

  const leftovers = (dir: string): string[] =>
    readdirSync(dir, {recursive: true})
      .map(String)
      .filter((f) => f.includes('.tmp-'))
  assert.deepEqual(leftovers(run), [])
  assert.deepEqual(readdirSync(run).sort(), ['ckpt-000001', 'latest'])
  assert.deepEqual(readdirSync(second).sort(), ['manifest.json', 'model.safetensors', 'optimizer.safetensors'])
})

test('a corpus must be a stable regular file: missing, a directory, /proc and bad UTF-8 are bad input', () => {
  assert.throws(() => loadCorpus(join(root, 'nope.txt')), /nope\.txt: no such file/)
  assert.throws(() => loadCorpus(root), /not a regular file/)
  assert.throws(() => loadCorpus('/proc/self/status'), /a kernel pseudo-file \(\/proc, \/sys\), not a corpus/)
  writeFileSync(join(root, 'latin1.txt'), Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x0a]))
  assert.throws(() => loadCorpus(join(root, 'latin1.txt')), /not valid UTF-8 text/)
})

test("a checkpoint is named by its directory, its run directory, or the run's latest file", () => {
  assert.equal(resolveCheckpoint(refCkpt), refCkpt)
  assert.equal(resolveCheckpoint(refRun), refCkpt)
  assert.equal(resolveCheckpoint(join(refRun, LATEST)), refCkpt)
  writeFileSync(join(root, 'not-latest'), 'ckpt-000002\n')
  assert.throws(() => resolveCheckpoint(join(root, 'not-latest')), /not a directory/)
})
