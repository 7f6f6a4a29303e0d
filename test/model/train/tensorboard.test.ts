// TensorBoard event files (src/model/train/tensorboard.ts): the CRC and the record framing against values worked out
// by hand, an Event's bytes against a hand-encoded protobuf, and a real run whose events equal its metrics.jsonl, also
// after a resume cut it back.
import assert from 'node:assert/strict'
import {mkdtempSync, readdirSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, test} from 'node:test'

import {
  decodeRecords,
  encodeRecord,
  EventFile,
  EventProto,
  EVENTS_PREFIX,
  maskedCrc32c,
} from '../../../src/model/train/tensorboard.js'
import {runCli, showRun} from '../../helpers.js'

let root = ''
before(() => {
  root = mkdtempSync(join(tmpdir(), 'mhc-tb-'))
})
after(() => rmSync(root, {recursive: true, force: true}))

// TensorFlow's mask, computed here with BigInt so that no 32-bit JavaScript trick is shared with the code under test.
const mask = (crc: bigint) => ((((crc >> 15n) | (crc << 17n)) & 0xff_ff_ff_ffn) + 0xa2_82_ea_d8n) & 0xff_ff_ff_ffn

test('masked CRC-32C: the standard check value and the empty string', () => {
  // CRC-32C("123456789") = 0xE3069283 (the check value of the Castagnoli polynomial); CRC-32C("") = 0.
  assert.equal(maskedCrc32c(new TextEncoder().encode('123456789')), Number(mask(0xe3_06_92_83n)))
  assert.equal(maskedCrc32c(new Uint8Array(0)), 0xa2_82_ea_d8)
})

test('a record: little-endian length, its masked CRC, the data, its masked CRC; corruption is caught', () => {
  const data = Uint8Array.of(1, 2, 3)
  const rec = encodeRecord(data)
  assert.equal(rec.length, 8 + 4 + 3 + 4)
  assert.deepEqual([...rec.subarray(0, 8)], [3, 0, 0, 0, 0, 0, 0, 0])
  const view = new DataView(rec.buffer)
  assert.equal(view.getUint32(8, true), maskedCrc32c(rec.subarray(0, 8)))
  assert.deepEqual([...rec.subarray(12, 15)], [1, 2, 3])
  assert.equal(view.getUint32(15, true), maskedCrc32c(data))
  assert.deepEqual(
    decodeRecords(rec).map((r) => [...r]),
    [[1, 2, 3]],
  )
  const bad = rec.slice()
  bad[13] ^= 1
  assert.throws(() => decodeRecords(bad), /bad data CRC/)
  assert.throws(() => decodeRecords(rec.subarray(0, 10)), /truncated/)
})

test("an Event's bytes are the protobuf TensorBoard expects (encoded here by hand)", () => {
  // Event {wall_time: 1.5 (field 1, double), step: 3 (field 2, varint), summary (field 5) {value (field 1) {tag: "a"
  // (field 1), simple_value: 2.0 (field 2, float)}}}
  const f64 = [...new Uint8Array(Float64Array.of(1.5).buffer)]
  const f32 = [...new Uint8Array(Float32Array.of(2).buffer)]
  const value = [0x0a, 0x01, 0x61, 0x15, ...f32]
  const summary = [0x0a, value.length, ...value]
  const expected = [0x09, ...f64, 0x10, 0x03, 0x2a, summary.length, ...summary]
  const got = EventProto.encode(
    EventProto.create({wallTime: 1.5, step: 3, summary: {value: [{tag: 'a', simpleValue: 2}]}}),
  ).finish()
  assert.deepEqual([...got], expected)
})

type Points = Record<string, [step: number, value: number, wallTime: number][]>

/** The scalars of a run's event files: tag → [[step, value, wall time]]; `header` is the version event's wall time. */
function scalars(run: string): Points & {header?: any} {
  const files = readdirSync(run).filter((f) => f.startsWith(EVENTS_PREFIX))
  assert.equal(files.length, 1, `one event file: ${files}`)
  const out: Points = {}
  const records = decodeRecords(readFileSync(join(run, files[0])))
  const first = EventProto.toObject(EventProto.decode(records[0])) as any
  assert.equal(first.fileVersion, 'brain.Event:2')
  for (const r of records.slice(1)) {
    const e = EventProto.toObject(EventProto.decode(r), {longs: Number}) as any
    for (const v of e.summary.value) (out[v.tag] ??= []).push([e.step, v.simpleValue, e.wallTime])
  }

  return Object.assign(out, {header: first.wallTime})
}

/** The same from metrics.jsonl: values rounded to float32 as simple_value stores them, wall times exact (double). */
function fromMetrics(run: string): Points & {header?: any} {
  const out: Points = {}
  const lines = readFileSync(join(run, 'metrics.jsonl'), 'utf8').trim().split('\n')
  for (const line of lines) {
    const r = JSON.parse(line)
    const add = (tag: string, v: number) => {
      out[tag] ??= []
      out[tag].push([r.step, Math.fround(v), r.time])
    }

    if (r.type === 'step') {
      add('train/loss', r.loss)
      add('train/grad_norm', r.gradNorm)
      add('train/lr', r.lr)
      add('train/tokens_per_sec', r.tokensPerSec)
    } else if (r.type === 'eval') add('val/loss', r.valLoss)
  }

  return Object.assign(out, {header: JSON.parse(lines[0]).time})
}

test('a run writes TensorBoard scalars equal to metrics.jsonl, and a resume that cuts it back rewrites them', async () => {
  const run = join(root, 'run')
  const args = ['train', '--preset', 'tiny', '--no-progress', '--backend', 'wasm', '--eval-every', '4', '--out', run]
  let r = await runCli([...args, '--steps', '8', '--save-every', '4'])
  assert.equal(r.status, 0, showRun(r))
  const first = scalars(run)
  assert.deepEqual(first, fromMetrics(run))
  assert.deepEqual(
    Object.keys(first)
      .filter((k) => k !== 'header')
      .sort(),
    ['train/grad_norm', 'train/loss', 'train/lr', 'train/tokens_per_sec', 'val/loss'],
  )
  assert.equal(first['train/loss'].length, 8)

  // Resume step 4 elsewhere; then the run itself to 12 (its metrics.jsonl is rewritten from step 8 on).
  r = await runCli([
    'train',
    '--resume',
    join(run, 'ckpt-000004'),
    '--steps',
    '10',
    '--out',
    join(root, 'resumed'),
    '--no-progress',
    '--backend',
    'wasm',
  ])
  assert.equal(r.status, 0, showRun(r))
  r = await runCli(['train', '--resume', run, '--steps', '12', '--no-progress', '--backend', 'wasm'])
  assert.equal(r.status, 0, showRun(r))
  const after = scalars(run)
  // Rewritten from metrics.jsonl, the kept steps keep the times they were first logged at (not the rewrite's time).
  assert.deepEqual(after, fromMetrics(run))
  assert.deepEqual(
    after['train/loss'].slice(0, 8).map((p) => p[2]),
    first['train/loss'].map((p) => p[2]),
  )
  assert.equal(after.header, first.header)
  assert.ok(after['train/loss'][8][2] > first['train/loss'][7][2], 'the resumed steps come later')
  assert.deepEqual(
    after['train/loss'].map(([s]) => s),
    Array.from({length: 12}, (_, i) => i + 1),
  )
  assert.deepEqual(scalars(join(root, 'resumed')), fromMetrics(join(root, 'resumed')))
})

test('records from before metrics carried a time take the first timed record time, the same on every rewrite', () => {
  const dir = mkdtempSync(join(root, 'old-'))
  const old = [1, 2].map((step) => ({type: 'step', step, loss: 5, gradNorm: 1, lr: 0.1, tokensPerSec: 9}))
  const timed = {type: 'step', step: 3, loss: 4, gradNorm: 1, lr: 0.1, tokensPerSec: 9, time: 1234.5}
  const times = () => scalars(dir)['train/loss'].map((p) => p[2])
  const events = new EventFile(dir)
  events.reset([...old, timed])
  assert.deepEqual(times(), [1234.5, 1234.5, 1234.5])
  events.reset([...old, timed])
  assert.deepEqual(times(), [1234.5, 1234.5, 1234.5])
  assert.equal(scalars(dir).header, 1234.5)
})
