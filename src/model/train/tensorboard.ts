import CRC32C from 'crc-32/crc32c.js'
// TensorBoard scalar event files in the run directory, so that `tensorboard --logdir runs` shows every metric of
// every run. The file is TensorFlow's record format, one serialised `Event` protocol buffer per record:
//
//   uint64 length | uint32 masked_crc32c(length) | bytes data | uint32 masked_crc32c(data)      (little-endian)
//   masked_crc32c(x) = ((crc >>> 15) | (crc << 17)) + 0xa282ead8
//
// The first event names the format (file_version "brain.Event:2"); then one event per scalar: {wall_time, step,
// summary: {value: [{tag, simple_value}]}}. Protobuf encoding comes from protobufjs, CRC-32C from crc-32.
//
// The events mirror metrics.jsonl exactly: when a resume or a rollback cuts metrics.jsonl back, the event file is
// written again from it (TensorBoard would otherwise keep showing the abandoned steps).
import {appendFileSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync} from 'node:fs'
import {hostname} from 'node:os'
import {join} from 'node:path'
import protobuf from 'protobufjs'

// The parts of tensorflow/core/util/event.proto and framework/summary.proto that scalars need (same field numbers).
const root = protobuf.Root.fromJSON({
  nested: {
    Event: {
      fields: {
        wallTime: {type: 'double', id: 1},
        step: {type: 'int64', id: 2},
        fileVersion: {type: 'string', id: 3},
        summary: {type: 'Summary', id: 5},
      },
    },
    Summary: {fields: {value: {rule: 'repeated', type: 'Value', id: 1}}},
    Value: {fields: {tag: {type: 'string', id: 1}, simpleValue: {type: 'float', id: 2}}},
  },
})
export const EventProto = root.lookupType('Event')

export const EVENTS_PREFIX = 'events.out.tfevents.'

/** TensorFlow's masked CRC-32C (the mask keeps CRCs of data that holds CRCs well distributed). */
export function maskedCrc32c(bytes: Uint8Array): number {
  const crc = CRC32C.buf(bytes, 0) >>> 0
  return ((((crc >>> 15) | (crc << 17)) >>> 0) + 0xa2_82_ea_d8) >>> 0
}

/** One record of the file: the length, its CRC, the data, its CRC. */
export function encodeRecord(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(8 + 4 + data.length + 4)
  const view = new DataView(out.buffer)
  view.setBigUint64(0, BigInt(data.length), true)
  view.setUint32(8, maskedCrc32c(out.subarray(0, 8)), true)
  out.set(data, 12)
  view.setUint32(12 + data.length, maskedCrc32c(data), true)
  return out
}

/** The records of an event file, each CRC checked (tests, and anyone reading our files back without TensorFlow). */
export function decodeRecords(bytes: Uint8Array): Uint8Array[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const out: Uint8Array[] = []
  for (let at = 0; at < bytes.length;) {
    if (at + 12 > bytes.length) throw new Error(`truncated record header at byte ${at}`)
    const length = Number(view.getBigUint64(at, true))
    if (view.getUint32(at + 8, true) !== maskedCrc32c(bytes.subarray(at, at + 8)))
      throw new Error(`bad length CRC at byte ${at}`)
    if (at + 12 + length + 4 > bytes.length) throw new Error(`truncated record at byte ${at}`)
    const data = bytes.subarray(at + 12, at + 12 + length)
    if (view.getUint32(at + 12 + length, true) !== maskedCrc32c(data)) throw new Error(`bad data CRC at byte ${at}`)
    out.push(data)
    at += 12 + length + 4
  }

  return out
}

const event = (o: {wallTime: number; step?: number; fileVersion?: string; tag?: string; value?: number}) =>
  EventProto.encode(
    EventProto.create({
      wallTime: o.wallTime,
      step: o.step ?? 0,
      ...(o.fileVersion ? {fileVersion: o.fileVersion} : {}),
      ...(o.tag ? {summary: {value: [{tag: o.tag, simpleValue: o.value}]}} : {}),
    }),
  ).finish()

// metrics.jsonl record → TensorBoard scalars (tag, field). Grouped as train/… and val/… so TensorBoard's sections
// line up with ours.
const SCALARS: Record<string, [string, string][]> = {
  step: [
    ['train/loss', 'loss'],
    ['train/grad_norm', 'gradNorm'],
    ['train/lr', 'lr'],
    ['train/tokens_per_sec', 'tokensPerSec'],
  ],
  eval: [['val/loss', 'valLoss']],
}

const timeOf = (rec: Record<string, unknown>, fallback: number) =>
  typeof rec.time === 'number' && Number.isFinite(rec.time) ? rec.time : fallback

/**
 * The scalar events of one metrics record (NaN and Inf are kept: TensorBoard shows them as such), at the record's own
 * `time` (metrics written before records carried one: `fallback`).
 */
export function recordEvents(rec: Record<string, unknown>, fallback: number): Uint8Array[] {
  const fields = SCALARS[String(rec.type)] ?? []
  const wallTime = timeOf(rec, fallback)
  return fields
    .filter(([, f]) => typeof rec[f] === 'number' || rec[f] === null)
    .map(([tag, f]) =>
      encodeRecord(event({wallTime, step: Number(rec.step), tag, value: (rec[f] as null | number) ?? Number.NaN})),
    )
}

const concat = (parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }

  return out
}

/**
 * The event file of a run. `reset` makes it hold exactly metrics.jsonl's records (replacing any earlier event file);
 * `append` adds one. Nothing is written before the first record, so a run that fails before its first step leaves
 * its directory as it found it.
 */
export class EventFile {
  private path: string | undefined

  constructor(readonly runDir: string) {}

  reset(records: Record<string, unknown>[]): void {
    // Ours only (they end in .mhc): another writer's event files in the same directory are left alone.
    for (const f of readdirSync(this.runDir))
      if (f.startsWith(EVENTS_PREFIX) && f.endsWith('.mhc')) rmSync(join(this.runDir, f), {force: true})
    this.path = undefined
    // Records from before metrics carried a time take the first timed one's (else now): the same on every rewrite.
    const now = records.map((r) => timeOf(r, Number.NaN)).find(Number.isFinite) ?? Date.now() / 1000
    const events = records.flatMap((r) => recordEvents(r, now))
    // The header takes the first record's time: the run started then, not at the rewrite.
    if (events.length > 0) this.write(events, timeOf(records[0], now))
  }

  append(rec: Record<string, unknown>): void {
    const now = Date.now() / 1000
    const events = recordEvents(rec, now)
    if (events.length === 0) return
    if (this.path) appendFileSync(this.path, concat(events))
    else this.write(events, timeOf(rec, now))
  }

  /** A new file: the version record, then `events` (under a temp name, then renamed: never a file without its header). */
  private write(events: Uint8Array[], wallTime: number): void {
    const path = join(this.runDir, `${EVENTS_PREFIX}${Math.floor(Date.now() / 1000)}.${hostname()}.mhc`)
    writeFileSync(`${path}.tmp`, concat([encodeRecord(event({wallTime, fileVersion: 'brain.Event:2'})), ...events]))
    renameSync(`${path}.tmp`, path)
    this.path = path
  }
}

/** metrics.jsonl's whole records, in order (a torn last line, from a kill mid-append, is not a record yet). */
export function metricsRecords(path: string): Record<string, unknown>[] {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch {
    return []
  }

  return text
    .split('\n')
    .slice(0, -1) // whatever follows the last newline is incomplete
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l))
}
