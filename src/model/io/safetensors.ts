// Minimal, dependency-free reader/writer for the Hugging Face safetensors format.
//
// File layout:
//   [8 bytes]  N, little-endian u64: length of the JSON header in bytes
//   [N bytes]  UTF-8 JSON object:
//                {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//                 "__metadata__": {"<key>": "<string value>"}}   (metadata optional)
//   [rest]     raw little-endian tensor bytes; data_offsets are relative to the start of this part
//
// Decoding notes:
//   - Every returned typed array is a fresh copy with its own ArrayBuffer (never a view into the input),
//     because the input may be a pooled Node Buffer whose byteOffset is not a multiple of the element size.
//   - F16 and BF16 are WIDENED to Float32Array on decode (exactly; NaN payloads are kept). So decoding an
//     F16/BF16 tensor gives {dtype: 'F16' | 'BF16', data: Float32Array}.
//   - BOOL and U8 decode to Uint8Array; BOOL bytes must be 0 or 1.
// Encoding notes:
//   - F16/BF16 can only be encoded from a Uint8Array holding the raw little-endian 2-byte values
//     (length = 2 * element count); we do not do float rounding on the write path.
//     Consequently a decoded F16/BF16 tensor (Float32Array) cannot be fed straight back into encode.
//   - Tensors are laid out contiguously in Object.keys() order; the header is padded with spaces so the
//     byte buffer starts at a multiple of 8. "__metadata__" is written only when it has at least one key.

import {readFileSync, statSync} from 'node:fs'

import {InputError} from '../errors.js'
import {writeFileAtomic} from './atomic.js'

export type Dtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL'

export interface NamedTensor {
  dtype: Dtype
  shape: number[]
  data: Float32Array | Float64Array | Int32Array | Uint8Array | Int8Array | Int16Array | BigInt64Array
}

export interface SafetensorsContents {
  tensors: Record<string, NamedTensor>
  metadata: Record<string, string>
}

/** Thrown for every malformed file or invalid input. The message is always a single line. */
export class SafetensorsError extends InputError {}

/** Same cap as the reference implementation: a header bigger than this is almost surely garbage. */
export const DEFAULT_MAX_HEADER_BYTES = 100_000_000

type TypedArrayCtor =
  | Float32ArrayConstructor
  | Float64ArrayConstructor
  | Int32ArrayConstructor
  | Uint8ArrayConstructor
  | Int8ArrayConstructor
  | Int16ArrayConstructor
  | BigInt64ArrayConstructor

interface DtypeInfo {
  /** bytes per element in the file */
  size: number
  /** array type accepted by encode (for F16/BF16: raw bytes) */
  encodeAs: TypedArrayCtor
  /** array type produced by decode; null means "needs conversion to Float32Array" */
  decodeAs: TypedArrayCtor | null
}

// A Map (not an object literal) so that names like "toString" or "__proto__" are never mistaken for dtypes.
const DTYPES = new Map<string, DtypeInfo>([
  ['F64', {size: 8, encodeAs: Float64Array, decodeAs: Float64Array}],
  ['F32', {size: 4, encodeAs: Float32Array, decodeAs: Float32Array}],
  ['F16', {size: 2, encodeAs: Uint8Array, decodeAs: null}],
  ['BF16', {size: 2, encodeAs: Uint8Array, decodeAs: null}],
  ['I64', {size: 8, encodeAs: BigInt64Array, decodeAs: BigInt64Array}],
  ['I32', {size: 4, encodeAs: Int32Array, decodeAs: Int32Array}],
  ['I16', {size: 2, encodeAs: Int16Array, decodeAs: Int16Array}],
  ['I8', {size: 1, encodeAs: Int8Array, decodeAs: Int8Array}],
  ['U8', {size: 1, encodeAs: Uint8Array, decodeAs: Uint8Array}],
  ['BOOL', {size: 1, encodeAs: Uint8Array, decodeAs: Uint8Array}],
])

const METADATA_KEY = '__metadata__'

// Typed arrays use host byte order; the file is little-endian. Every mainstream host is little-endian,
// but swapping on the rare big-endian one keeps the format correct rather than silently wrong.
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1

function swapBytesInPlace(bytes: Uint8Array, size: number): void {
  if (HOST_IS_LITTLE_ENDIAN || size === 1) return
  for (let i = 0; i < bytes.length; i += size) bytes.subarray(i, i + size).reverse()
}

/** Quote a user-controlled string for an error message (escapes newlines, shows empty names). */
const q = (s: string): string => JSON.stringify(s)

/** Assign an own property even when the key is "__proto__" (plain assignment would set the prototype). */
function setOwn<T>(obj: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(obj, key, {value, enumerable: true, writable: true, configurable: true})
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Validate a shape and return its element count; `what` prefixes the error message. */
function elementCount(shape: unknown, what: string): number {
  if (!Array.isArray(shape)) throw new SafetensorsError(`${what}: shape must be an array`)
  let n = 1
  for (const d of shape) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      throw new SafetensorsError(`${what}: shape entries must be non-negative integers, got ${JSON.stringify(d)}`)
    }

    n *= d
  }

  // Checked after the loop so a zero dimension anywhere still yields 0 rather than an overflow error.
  if (!Number.isSafeInteger(n))
    throw new SafetensorsError(`${what}: shape ${JSON.stringify(shape)} has too many elements`)
  return n
}

// ---------------------------------------------------------------------------------------------------
// Half-precision conversion (decode only)

/** Convert little-endian IEEE binary16 values to float32, exactly (every f16 value is representable). */
function f16ToF32(src: Uint8Array, count: number): Float32Array {
  const out = new Float32Array(count)
  const bits = new Uint32Array(out.buffer)
  for (let i = 0; i < count; i++) {
    const h = src[2 * i] | (src[2 * i + 1] << 8)
    const sign = (h >>> 15) & 1
    const exp = (h >>> 10) & 0x1f
    const mant = h & 0x3_ff
    if (exp === 0) {
      // Zero or subnormal: mant * 2^-24, exact in float32 (keeps -0 via the sign multiply).
      out[i] = (sign ? -1 : 1) * mant * 2 ** -24
    } else if (exp === 0x1f) {
      // Inf / NaN: widen the mantissa so NaN payloads survive.
      bits[i] = ((sign << 31) | 0x7f_80_00_00 | (mant << 13)) >>> 0
    } else {
      // Normal: rebias exponent 15 -> 127.
      bits[i] = ((sign << 31) | ((exp + 112) << 23) | (mant << 13)) >>> 0
    }
  }

  return out
}

/** bfloat16 is the top half of a float32, so widening is a 16-bit shift. */
function bf16ToF32(src: Uint8Array, count: number): Float32Array {
  const out = new Float32Array(count)
  const bits = new Uint32Array(out.buffer)
  for (let i = 0; i < count; i++) {
    const h = src[2 * i] | (src[2 * i + 1] << 8)
    bits[i] = (h << 16) >>> 0
  }

  return out
}

// ---------------------------------------------------------------------------------------------------
// Encode

function validateMetadata(metadata: unknown, what: string): Record<string, string> {
  if (!isPlainObject(metadata)) throw new SafetensorsError(`${what} must be an object of strings`)
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') throw new SafetensorsError(`${what} value for ${q(k)} must be a string, got ${typeof v}`)
  }

  return metadata as Record<string, string>
}

/**
 * Serialise tensors (laid out in Object.keys order) plus optional string metadata.
 * Throws SafetensorsError on any invalid input; see the file comment for the F16/BF16 rule.
 */
export function encodeSafetensors(tensors: Record<string, NamedTensor>, metadata?: Record<string, string>): Uint8Array {
  if (!isPlainObject(tensors)) throw new SafetensorsError('tensors must be an object of name -> tensor')
  const meta = metadata === undefined ? {} : validateMetadata(metadata, 'metadata')

  // Validate everything and compute offsets before allocating the output.
  const headerParts: string[] = []
  if (Object.keys(meta).length > 0) headerParts.push(`${q(METADATA_KEY)}:${JSON.stringify(meta)}`)
  const chunks: {bytes: Uint8Array; size: number}[] = []
  let offset = 0
  // Record keys are unique by construction, so only emptiness and the reserved name need checking.
  for (const name of Object.keys(tensors)) {
    const what = `tensor ${q(name)}`
    if (name.length === 0) throw new SafetensorsError('tensor names must be non-empty')
    if (name === METADATA_KEY) throw new SafetensorsError(`tensor name ${q(METADATA_KEY)} is reserved`)
    const t = tensors[name]
    if (!isPlainObject(t)) throw new SafetensorsError(`${what}: expected {dtype, shape, data}`)
    const info = typeof t.dtype === 'string' ? DTYPES.get(t.dtype) : undefined
    if (info === undefined) throw new SafetensorsError(`${what}: unknown dtype ${JSON.stringify(t.dtype)}`)
    const n = elementCount(t.shape, what)
    if (!(t.data instanceof info.encodeAs)) {
      const got = (t.data as object | null | undefined)?.constructor?.name ?? String(t.data)
      throw new SafetensorsError(`${what}: dtype ${t.dtype} needs a ${info.encodeAs.name}, got ${got}`)
    }

    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)
    const expectedBytes = n * info.size
    if (bytes.length !== expectedBytes) {
      const unit = info.decodeAs === null ? 'bytes (2 per element)' : 'elements'
      const have = info.decodeAs === null ? bytes.length : t.data.length
      const want = info.decodeAs === null ? expectedBytes : n
      throw new SafetensorsError(`${what}: shape ${JSON.stringify(t.shape)} needs ${want} ${unit}, data has ${have}`)
    }

    if (t.dtype === 'BOOL' && bytes.some((b) => b > 1))
      throw new SafetensorsError(`${what}: BOOL values must be 0 or 1`)
    headerParts.push(
      `${q(name)}:${JSON.stringify({dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + expectedBytes]})}`,
    )
    chunks.push({bytes, size: info.size})
    offset += expectedBytes
  }

  // Header text is built by hand (not JSON.stringify of an object) so "__proto__" and integer-like
  // names keep their place and are never swallowed by object semantics.
  const json = new TextEncoder().encode(`{${headerParts.join(',')}}`)
  // Pad with spaces so the data section starts 8-aligned (8 + N is a multiple of 8).
  const headerLen = Math.ceil(json.length / 8) * 8
  const out = new Uint8Array(8 + headerLen + offset)
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLen), true)
  out.set(json, 8)
  out.fill(0x20, 8 + json.length, 8 + headerLen)
  let pos = 8 + headerLen
  for (const c of chunks) {
    out.set(c.bytes, pos)
    swapBytesInPlace(out.subarray(pos, pos + c.bytes.length), c.size)
    pos += c.bytes.length
  }

  return out
}

// ---------------------------------------------------------------------------------------------------
// Decode

interface Entry {
  name: string
  dtype: Dtype
  info: DtypeInfo
  shape: number[]
  begin: number
  end: number
}

function parseEntry(name: string, raw: unknown, dataLength: number): Entry {
  const what = `tensor ${q(name)}`
  if (name.length === 0) throw new SafetensorsError('header has a tensor with an empty name')
  if (!isPlainObject(raw)) throw new SafetensorsError(`${what}: header entry must be an object`)
  for (const key of Object.keys(raw)) {
    if (key !== 'dtype' && key !== 'shape' && key !== 'data_offsets')
      throw new SafetensorsError(`${what}: unexpected field ${q(key)}`)
  }

  const info = typeof raw.dtype === 'string' ? DTYPES.get(raw.dtype) : undefined
  if (info === undefined)
    throw new SafetensorsError(`${what}: unknown dtype ${JSON.stringify(raw.dtype) ?? 'undefined'}`)
  const n = elementCount(raw.shape, what)
  const offs = raw.data_offsets
  if (
    !Array.isArray(offs) ||
    offs.length !== 2 ||
    !offs.every((o) => typeof o === 'number' && Number.isSafeInteger(o))
  ) {
    throw new SafetensorsError(
      `${what}: data_offsets must be [begin, end] integers, got ${JSON.stringify(offs) ?? 'undefined'}`,
    )
  }

  const [begin, end] = offs as [number, number]
  if (!(begin >= 0 && begin <= end && end <= dataLength)) {
    throw new SafetensorsError(`${what}: data_offsets [${begin}, ${end}] outside data section of ${dataLength} bytes`)
  }

  if (end - begin !== n * info.size) {
    throw new SafetensorsError(
      `${what}: ${raw.dtype} shape ${JSON.stringify(raw.shape)} needs ${n * info.size} bytes, data_offsets give ${end - begin}`,
    )
  }

  return {name, dtype: raw.dtype as Dtype, info, shape: [...(raw.shape as number[])], begin, end}
}

/** Build the typed array for one tensor; always a fresh, aligned copy. */
function materialise(e: Entry, src: Uint8Array): NamedTensor['data'] {
  const count = (e.end - e.begin) / e.info.size
  if (e.info.decodeAs === null) return e.dtype === 'F16' ? f16ToF32(src, count) : bf16ToF32(src, count)
  if (e.dtype === 'BOOL' && src.some((b) => b > 1))
    throw new SafetensorsError(`tensor ${q(e.name)}: BOOL values must be 0 or 1`)
  const copy = new Uint8Array(src) // new ArrayBuffer at offset 0, so any element size is aligned
  swapBytesInPlace(copy, e.info.size)
  const {decodeAs: Decoded} = e.info
  return new Decoded(copy.buffer)
}

/**
 * Parse a safetensors byte image. Validates the whole file before returning; any problem throws
 * SafetensorsError. F16/BF16 tensors come back widened to Float32Array.
 */
export function decodeSafetensors(bytes: Uint8Array, opts?: {maxHeaderBytes?: number}): SafetensorsContents {
  const maxHeader = opts?.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES
  if (!Number.isSafeInteger(maxHeader) || maxHeader < 0)
    throw new SafetensorsError(`maxHeaderBytes must be a non-negative integer, got ${maxHeader}`)
  if (bytes.length < 8)
    throw new SafetensorsError(`file too short: ${bytes.length} bytes, need at least 8 for the header length`)

  // Read N as a bigint: a garbage u64 must be rejected, not rounded into a plausible Number.
  const n64 = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(0, true)
  if (n64 > BigInt(maxHeader))
    throw new SafetensorsError(`header length ${n64} exceeds the limit of ${maxHeader} bytes`)
  const headerLen = Number(n64)
  if (8 + headerLen > bytes.length) {
    throw new SafetensorsError(`header length ${headerLen} runs past the end of the file (${bytes.length} bytes)`)
  }

  let header: unknown
  try {
    // fatal: invalid UTF-8 must be an error, not silently replaced with U+FFFD.
    const text = new TextDecoder('utf8', {fatal: true, ignoreBOM: true}).decode(bytes.subarray(8, 8 + headerLen))
    header = JSON.parse(text)
  } catch (error) {
    throw new SafetensorsError(`header is not valid UTF-8 JSON: ${(error as Error).message}`)
  }

  if (!isPlainObject(header)) throw new SafetensorsError('header must be a JSON object')

  const data = bytes.subarray(8 + headerLen)
  const metadata: Record<string, string> = {}
  const entries: Entry[] = []
  for (const [name, raw] of Object.entries(header)) {
    if (name === METADATA_KEY) {
      for (const [k, v] of Object.entries(validateMetadata(raw, METADATA_KEY))) setOwn(metadata, k, v)
    } else {
      entries.push(parseEntry(name, raw, data.length))
    }
  }

  // Tensors must tile the data section exactly: sorted by offset, each starts where the previous ended,
  // the first at 0 and the last ends at the data length. This rejects gaps, overlaps and trailing bytes.
  // Ties on begin sort by end so zero-size tensors sharing an offset come first and stay legal.
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end)
  let expected = 0
  for (const e of sorted) {
    if (e.begin < expected)
      throw new SafetensorsError(
        `tensor ${q(e.name)}: data_offsets [${e.begin}, ${e.end}] overlap the previous tensor (ends at ${expected})`,
      )
    if (e.begin > expected)
      throw new SafetensorsError(
        `tensor ${q(e.name)}: gap before data_offsets [${e.begin}, ${e.end}] (previous tensor ends at ${expected})`,
      )
    expected = e.end
  }

  if (expected !== data.length) {
    throw new SafetensorsError(`data section has ${data.length - expected} trailing bytes not covered by any tensor`)
  }

  const tensors: Record<string, NamedTensor> = {}
  for (const e of entries) {
    const t: NamedTensor = {dtype: e.dtype, shape: e.shape, data: materialise(e, data.subarray(e.begin, e.end))}
    setOwn(tensors, e.name, t)
  }

  return {tensors, metadata}
}

// ---------------------------------------------------------------------------------------------------
// Files

/** The largest file read whole (Node's Buffer limit is near here anyway). */
export const MAX_FILE_BYTES = 2 ** 32

/**
 * Read and decode a file. Anything wrong (missing, not a regular file: a device or a FIFO would never end, too large,
 * unreadable, malformed) is one SafetensorsError naming the path.
 */
export function readSafetensorsFile(path: string): SafetensorsContents {
  let bytes: Buffer
  try {
    const st = statSync(path)
    if (!st.isFile()) throw new SafetensorsError(`${path}: not a regular file`)
    if (st.size > MAX_FILE_BYTES) throw new SafetensorsError(`${path}: ${st.size} bytes, more than this reads (4 GiB)`)
    bytes = readFileSync(path)
  } catch (error) {
    if (error instanceof SafetensorsError) throw error
    const {code, message} = error as NodeJS.ErrnoException
    throw new SafetensorsError(`${path}: ${code === 'ENOENT' ? 'no such file' : `cannot be read (${message})`}`)
  }

  try {
    return decodeSafetensors(bytes)
  } catch (error) {
    if (error instanceof SafetensorsError) throw new SafetensorsError(`${path}: ${error.message}`)
    throw error
  }
}

/**
 * Encode and write atomically: the bytes go to a unique temp file beside the target, are fsynced, then
 * renamed over `path`. Readers see the old file or the complete new one, never a torn write. Encoding
 * happens first, so invalid input leaves any existing file untouched.
 */
export function writeSafetensorsFile(
  path: string,
  tensors: Record<string, NamedTensor>,
  metadata?: Record<string, string>,
): void {
  let bytes: Uint8Array
  try {
    bytes = encodeSafetensors(tensors, metadata)
  } catch (error) {
    if (error instanceof SafetensorsError) throw new SafetensorsError(`${path}: ${error.message}`)
    throw error
  }

  writeFileAtomic(path, bytes)
}
