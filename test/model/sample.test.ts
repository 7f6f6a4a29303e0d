// Sampling (src/model/sample.ts): the draw against hand-computed softmax probabilities, and the assumptions the loop
// makes about a real model (right padding is invisible to causal attention; only the last seqLen bytes matter).
import assert from 'node:assert/strict'
import {join} from 'node:path'
import {before, test} from 'node:test'

import type {Engine} from '../../src/model/engines/engine.js'

import {readCheckpointDir} from '../../src/model/io/checkpoint.js'
import {Rng} from '../../src/model/rng.js'
import {drawByte, sample} from '../../src/model/sample.js'
import {repo} from '../helpers.js'
import {tfjsEngine, useWasm} from './helpers.js'

let engine: Engine
before(async () => {
  await useWasm()
  const ck = readCheckpointDir(join(repo, 'fixtures', 'mhc', 'ckpt-000150'))
  engine = tfjsEngine(ck.manifest.model)
  engine.load({params: ck.params})
})

test('drawByte: frequencies match softmax(row / T) worked out by hand; T = 0 and top-k 1 take the argmax', () => {
  // logits ln 1, ln 2, ln 3, ln 4 (plus a -inf-like entry): at T = 1 the probabilities are 1/10, 2/10, 3/10, 4/10;
  // at T = 2 they are proportional to the square roots 1, √2, √3, 2.
  const row = Float32Array.from([Math.log(1), Math.log(2), Math.log(3), Math.log(4), -1e30])
  const cases: [number, number | undefined, number[]][] = [
    [1, undefined, [0.1, 0.2, 0.3, 0.4, 0]],
    [2, undefined, [1, Math.SQRT2, Math.sqrt(3), 2, 0].map((w) => w / (3 + Math.SQRT2 + Math.sqrt(3)))],
    [1, 2, [0, 0, 3 / 7, 4 / 7, 0]], // top-2: bytes 2 and 3 only, renormalised
  ]
  const draws = 40_000
  for (const [temperature, topK, p] of cases) {
    const rng = new Rng(11)
    const counts = new Array(row.length).fill(0)
    for (let i = 0; i < draws; i++) counts[drawByte(row, {temperature, topK}, rng)]++
    for (const [i, pi] of p.entries()) {
      const sd = Math.sqrt((pi * (1 - pi)) / draws)
      assert.ok(
        Math.abs(counts[i] / draws - pi) <= 5 * sd + 1e-9,
        `T=${temperature} k=${topK} byte ${i}: ${counts[i] / draws} vs ${pi}`,
      )
    }
  }

  const rng = new Rng(1)
  assert.equal(drawByte(row, {temperature: 0}, rng), 3)
  for (let i = 0; i < 50; i++) assert.equal(drawByte(row, {temperature: 5, topK: 1}, rng), 3)
})

test('right padding never changes the logits of earlier positions (what lets sample() pad a short context)', async () => {
  const T = engine.model.seqLen
  const prompt = new TextEncoder().encode('Call me Ishmael')
  const padded = (fill: number) => {
    const x = new Int32Array(T).fill(fill)
    x.set(prompt)
    return engine.logits!({x, y: new Int32Array(T), size: 1, seqLen: T})
  }

  const [a, b] = await Promise.all([padded(0), padded(122)])
  const V = engine.model.vocabSize
  const upTo = prompt.length * V
  assert.deepEqual(a.subarray(0, upTo), b.subarray(0, upTo))
  assert.notDeepEqual(a.subarray(upTo), b.subarray(upTo)) // the padding itself did go through the model
})

test('sample: deterministic for a seed, different for another; greedy is the argmax; only the last seqLen bytes count', async () => {
  const prompt = new TextEncoder().encode('It was the best of times')
  const o = {tokens: 24, temperature: 0.9, seed: 5}
  const a = await sample(engine, prompt, o)
  assert.deepEqual(await sample(engine, prompt, o), a)
  assert.notDeepEqual(await sample(engine, prompt, {...o, seed: 6}), a)

  // Greedy: each byte is the argmax of the logits at the last position of the context so far.
  const greedy = await sample(engine, prompt, {tokens: 5, temperature: 0, seed: 0})
  const context = [...prompt]
  const T = engine.model.seqLen
  const V = engine.model.vocabSize
  for (const byte of greedy) {
    const window = context.slice(-T)
    const x = new Int32Array(T)
    x.set(window)
    const logits = await engine.logits!({x, y: new Int32Array(T), size: 1, seqLen: T})
    const row = [...logits.subarray((window.length - 1) * V, window.length * V)]
    assert.equal(byte, row.indexOf(Math.max(...row)))
    context.push(byte)
  }

  // A prompt longer than the context: only its last T bytes matter.
  const long = new TextEncoder().encode('x'.repeat(50) + 'Whenever it is a damp, drizzly November in my soul')
  assert.ok(long.length > T)
  assert.deepEqual(await sample(engine, long, o), await sample(engine, long.slice(-T), o))
})
