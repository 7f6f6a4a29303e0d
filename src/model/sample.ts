// Text from a trained byte-level model: feed the context, draw the next byte from softmax(logits / temperature)
// (restricted to the top k when asked), append, repeat. Deterministic for a seed. No KV cache: each byte is one forward
// pass over the last seqLen bytes, which at these model sizes takes milliseconds.
import type {Engine} from './engines/engine.js'

import {Rng} from './rng.js'

export interface SampleOptions {
  tokens: number // bytes to generate
  temperature: number // 0: always the most likely byte
  topK?: number // 0 or absent: all 256
  seed: number
}

/** The index drawn from softmax(row / temperature) over the top k entries, by inverse CDF with one uniform draw. */
export function drawByte(row: Float32Array, o: {temperature: number; topK?: number}, rng: Rng): number {
  const order = Array.from(row.keys()).sort((a, b) => row[b] - row[a] || a - b)
  if (o.temperature === 0) return order[0]
  const pool = o.topK ? order.slice(0, o.topK) : order
  const max = row[pool[0]]
  const weights = pool.map((i) => Math.exp((row[i] - max) / o.temperature)) // shifted by the max: no overflow
  let u = rng.uniform() * weights.reduce((a, b) => a + b, 0)
  for (const [j, w] of weights.entries()) if ((u -= w) < 0) return pool[j]
  return pool.at(-1)! // rounding left u ≥ 0 after the last weight
}

/** Continues `prompt` by `o.tokens` bytes; `onByte` sees each one as it is drawn. */
export async function sample(
  engine: Engine,
  prompt: Uint8Array,
  o: SampleOptions,
  onByte?: (b: number) => void,
): Promise<Uint8Array> {
  if (!engine.logits) throw new Error(`the ${engine.name} engine does not return logits`)
  if (prompt.length === 0) throw new Error('sampling needs a prompt of at least one byte')
  const {seqLen: T, vocabSize: V} = engine.model
  const rng = new Rng(o.seed)
  const context = [...prompt]
  const out = new Uint8Array(o.tokens)
  for (let i = 0; i < o.tokens; i++) {
    // The last T bytes, padded on the right: causal attention never lets the padding reach position `last`.
    const window = context.slice(-T)
    const x = new Int32Array(T)
    x.set(window)
    const logits = await engine.logits({x, y: new Int32Array(T), size: 1, seqLen: T})
    const last = window.length - 1
    const next = drawByte(logits.subarray(last * V, (last + 1) * V), o, rng)
    out[i] = next
    context.push(next)
    onByte?.(next)
  }

  return out
}
