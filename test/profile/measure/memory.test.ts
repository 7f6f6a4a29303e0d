// The measured side of the memory model on a small model: what the model assumes is kept per block, and its
// prediction against peaks measured through the tfjs engine.
import assert from 'node:assert/strict'
import {before, test} from 'node:test'

import {ModelConfig, modelConfig} from '../../../src/model/config.js'
import {type Engines, openEngines} from '../../../src/model/engines/index.js'
import {tf} from '../../../src/model/engines/tfjs/backend.js'
import {initParams, loss} from '../../../src/model/engines/tfjs/network.js'
import {Rng} from '../../../src/model/rng.js'
import {calibrate, measurePeaks, predictPeak, storedBlockBytes} from '../../../src/profile/measure/memory.js'

let engines: Engines
before(async () => {
  engines = await openEngines({choice: 'wasm', source: 'flag'})
})

const small = (o: Partial<ModelConfig> = {}): ModelConfig =>
  modelConfig('mhc', {seqLen: 8, layers: 6, dModel: 16, heads: 1, mlpRatio: 1, expansion: 8, ...o})

test('what the model assumes a recompute block keeps (2 × n·C float32 per token) is what tfjs keeps after the forward pass', () => {
  const cfg = small()
  const B = 16
  const p = initParams(cfg, 1)
  const rng = new Rng(3)
  const tok = () =>
    tf.tensor2d(
      Int32Array.from({length: B * cfg.seqLen}, () => rng.int(256)),
      [B, cfg.seqLen],
      'int32',
    )
  const [x, y] = [tok(), tok()]
  const keptAfterForward = (Lr: number) => {
    const before = tf.memory().numBytes
    let after = 0
    tf.tidy(() => {
      tf.variableGrads(() => {
        const l = loss(p, cfg, x, y, Lr)
        after = tf.memory().numBytes
        return l
      }, Object.values(p))
    })
    return after - before
  }

  // 12 layers: L_r = 1 keeps 12 blocks, L_r = 12 keeps one; the difference is 11 blocks' worth.
  const perBlock = (keptAfterForward(1) - keptAfterForward(12)) / 11
  assert.ok(
    Math.abs(perBlock - storedBlockBytes(cfg, B)) / storedBlockBytes(cfg, B) < 0.02,
    `${perBlock} vs ${storedBlockBytes(cfg, B)}`,
  )
  tf.dispose([x, y, ...Object.values(p)])
})

test('measured peaks: the model calibrated on one block predicts a 6-block model within 15% and finds its optimum', async () => {
  const cfg = small()
  const B = 16
  const m = await calibrate(engines, cfg, B)
  const Lrs = Array.from({length: 12}, (_, i) => i + 1)
  const measured = await measurePeaks(engines, cfg, B, Lrs)
  for (const p of measured) {
    const err = Math.abs(predictPeak(m, cfg, p.recomputeBlock) - p.peakBytes) / p.peakBytes
    assert.ok(
      err < 0.15,
      `L_r=${p.recomputeBlock}: predicted ${predictPeak(m, cfg, p.recomputeBlock)} measured ${p.peakBytes}`,
    )
  }

  const best = (xs: number[]) => xs.indexOf(Math.min(...xs)) + 1
  assert.equal(best(measured.map((p) => p.peakBytes)), best(Lrs.map((l) => predictPeak(m, cfg, l))))
  assert.ok(measured[0].peakBytes < measured[11].peakBytes, 'recompute lowers the peak here')
})

test('the pre-allocation estimate (fitted on other shapes) is at most 10% under and 25% over the peak of a real training step', async () => {
  const {restore, takeStep} = await import('../../../src/model/train/loop.js')
  const {loadCorpus} = await import('../../../src/model/io/data.js')
  const {parameterCount} = await import('../../../src/model/params.js')
  const {trainingMemoryEstimate} = await import('../../../src/profile/cost-models/memory.js')
  const corpus = loadCorpus()
  for (const [arch, dModel, heads, seqLen, mlpRatio, expansion, layers, batch] of [
    ['hc', 48, 3, 24, 2, 3, 2, 6],
    ['baseline', 80, 4, 40, 3, 4, 1, 3],
    ['mhc', 40, 2, 56, 4, 5, 2, 2],
  ] as const) {
    const cfg = small({arch, dModel, heads, seqLen, mlpRatio, expansion, layers})
    const engine = await engines.create({model: cfg})
    const tc = {
      steps: 1,
      batch,
      lr: 1e-3,
      minLrRatio: 0.1,
      warmup: 0,
      weightDecay: 0.1,
      beta1: 0.9,
      beta2: 0.95,
      adamEps: 1e-8,
      gradClip: 1,
      evalEvery: 0,
      evalWindows: 1,
      saveEvery: 0,
      seed: 1,
    }
    const pos = restore(engine, tc)
    const before = tf.memory().numBytes
    const prof = await tf.profile(async () => {
      await takeStep(engine, pos, tc, corpus.train)
    })
    engine.dispose()
    const measured = prof.peakBytes - before + 4 * parameterCount(cfg)
    const estimated = trainingMemoryEstimate({...cfg, params: parameterCount(cfg), batch, recomputeBlock: 0}).bytes
    const ratio = estimated / measured // under would let through a size that then fails; over only refuses early
    assert.ok(ratio > 0.9 && ratio < 1.25, `${arch}: estimated ${estimated} bytes, measured ${measured}`)
  }
})
