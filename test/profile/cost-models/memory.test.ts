// The memory model (Eq. 20 and its context) against brute force and hand computation.
import assert from 'node:assert/strict'
import {test} from 'node:test'

import {
  hcPath,
  MemoryConfig,
  memoryReport,
  mhcPath,
  recomputeCurve,
  TFJS_MEMORY,
  trainingMemoryEstimate,
  transformerActivationBytes,
} from '../../../src/profile/cost-models/memory.js'
import {optimalRecomputeBlock} from '../../../src/profile/cost-models/presets.js'

test('Eq. 20: the argmin equals a brute-force search for every L ≤ 80 and n ≤ 8, ties included', () => {
  for (let n = 1; n <= 8; n++) {
    for (let L = 1; L <= 80; L++) {
      const C = 7
      const cost = (Lr: number) => n * C * Math.ceil(L / Lr) + C * L + (n + 2) * C * Lr // written out again, independently
      const all = Array.from({length: L}, (_, i) => i + 1)
      const min = Math.min(...all.map(cost))
      const curve = recomputeCurve(L, n, C)
      assert.deepEqual(
        curve.argmin,
        all.filter((Lr) => cost(Lr) === min),
        `L=${L} n=${n}`,
      )
      assert.deepEqual(optimalRecomputeBlock(L, n).best, curve.argmin, 'the time model uses the same L_r*')
      assert.ok(Math.abs(curve.closedForm - Math.sqrt((n * L) / (n + 2))) < 1e-12)
      // the closed form is close to the integer optimum
      assert.ok(
        Math.min(...curve.argmin.map((a) => Math.abs(a - curve.closedForm))) <= Math.max(1.5, 0.35 * curve.closedForm),
      )
    }
  }

  assert.deepEqual(recomputeCurve(36, 4, 1).argmin, [4, 6], 'a tie: 4·9 + 6·4 = 4·6 + 6·6 = 60')
})

test('hand-computed counts: paper-27b at L = 30 blocks, n = 4, C = 2560', () => {
  // L_r = 5: stored 4·2560·6 + 2560·30 = 138240; transient 6·2560·5 = 76800
  assert.deepEqual(mhcPath(30, 4, 2560, 5), {stored: 138_240, transient: 76_800, total: 215_040})
  assert.deepEqual(recomputeCurve(30, 4, 2560).argmin, [5])
  assert.deepEqual(recomputeCurve(60, 4, 2560).argmin, [6], 'counting sublayers changes the answer')
  // HC writes (3n+1)C + n² + 2n per layer (Table 2)
  assert.equal(hcPath(1, 4, 2560).stored, 13 * 2560 + 16 + 8)
  // Korthikanti et al.: s=4096, b=1, h=2560, a=32: sbh(34 + 5as/h) = 4096·2560·(34 + 256)
  assert.equal(transformerActivationBytes(4096, 1, 2560, 32, 1, 'none'), 4096 * 2560 * 290)
  assert.equal(transformerActivationBytes(4096, 1, 2560, 32, 2, 'selective'), (4096 * 2560 * 34) / 2)
  assert.equal(transformerActivationBytes(4096, 1, 2560, 32, 1, 'full'), 2 * 4096 * 2560)
})

test('per-GPU report: rows add up; stored memory scales with micro-batches in flight, the transient does not', () => {
  const c: MemoryConfig = {
    name: 'x',
    layers: 30,
    dModel: 2560,
    heads: 32,
    seqLen: 4096,
    microBatchSize: 1,
    expansion: 4,
    totalParams: 27e9,
    pipelineStages: 6,
    microBatches: 20,
    tensorParallel: 1,
    layerUnit: 'blocks',
    activationBytes: 2,
    weightBytes: 2,
    gradBytes: 4,
    optimizerBytes: 12,
    optimizerShards: 1,
    transformerRecompute: 'selective',
  }
  const r = memoryReport(c)
  const total = r.rows.pop()!
  assert.equal(total.item, 'total')
  assert.ok(Math.abs(total.bytes - r.rows.reduce((s, x) => s + x.bytes, 0)) < 1)
  assert.equal(r.rows[0].bytes, (27e9 / 6) * 2)
  // stage = 5 blocks, L_r* = 5: stored 4C + 5C, transient 6C·5, 6 micro-batches in flight, 4096 tokens, 2 bytes
  const C = 2560
  assert.equal(r.paths[0].perGpuBytes, ((4 * C + 5 * C) * 6 + 6 * C * 5) * 4096 * 2)
  const fewer = memoryReport({...c, microBatches: 2})
  assert.ok(fewer.paths[0].perGpuBytes < r.paths[0].perGpuBytes)
})

test('the pre-allocation estimate: per-parameter state plus activations linear in the tokens, less with recompute', () => {
  const shape = {
    arch: 'mhc' as const,
    layers: 4,
    dModel: 128,
    heads: 4,
    seqLen: 64,
    mlpRatio: 4,
    expansion: 4,
    vocabSize: 256,
    params: 1e6,
    batch: 16,
    recomputeBlock: 0,
  }
  const e = trainingMemoryEstimate(shape)
  assert.equal(e.state, TFJS_MEMORY.perParam * 1e6)
  assert.equal(e.bytes, e.state + e.activations)
  assert.ok(Math.abs(e.activations - 16 * e.perSequence) < 1e-6 * e.activations, 'activations = batch × per sequence')
  const doubled = trainingMemoryEstimate({...shape, batch: 32})
  assert.ok(
    Math.abs(doubled.activations - 2 * e.activations) < 1e-6 * e.activations,
    'activations are linear in the tokens',
  )
  assert.ok(trainingMemoryEstimate({...shape, recomputeBlock: 2}).activations < e.activations, 'recompute keeps less')
  assert.ok(
    trainingMemoryEstimate({...shape, arch: 'baseline'}).activations < e.activations,
    'one stream keeps less than n',
  )
})
