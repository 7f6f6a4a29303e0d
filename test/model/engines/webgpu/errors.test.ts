// Failures on the device must end a step with a reason, never return numbers that were not computed: a command
// buffer the device rejects (here: a destroyed parameter buffer) and a lost device. A file of its own, because both
// leave errors on the process's device record that the other suites check is empty.
import assert from 'node:assert/strict'
import {test} from 'node:test'

import {modelConfig} from '../../../../src/model/config.js'
import {requestDevice} from '../../../../src/model/engines/webgpu/gpu.js'
import {WebGpuTrainer} from '../../../../src/model/engines/webgpu/trainer.js'
import {initParamData} from '../../../../src/model/params.js'
import {Rng} from '../../../../src/model/rng.js'
import {device} from './helpers.js'

const {skip} = await device()

const cfg = modelConfig('mhc', {
  seqLen: 8,
  layers: 1,
  dModel: 16,
  heads: 2,
  mlpRatio: 2,
  expansion: 2,
  sinkhornIters: 4,
})
const batch = 2
const hp = {lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0, gradClip: 1, t: 1}

async function trainer(): Promise<{t: WebGpuTrainer; x: Int32Array; y: Int32Array}> {
  const dev = await requestDevice({backend: 'software'})
  const t = await WebGpuTrainer.create(dev, cfg, batch, initParamData(cfg, 7))
  const rng = new Rng(3)
  const x = Int32Array.from({length: batch * cfg.seqLen}, () => rng.int(256))
  const y = Int32Array.from({length: batch * cfg.seqLen}, () => rng.int(256))
  return {t, x, y}
}

test(
  'a step the device rejects throws with the device error instead of returning the previous numbers',
  {skip},
  async () => {
    const {t, x, y} = await trainer()
    const first = await t.trainStep(x, y, hp)
    assert.ok(Number.isFinite(first.loss))
    ;(t as unknown as {bufs: Record<string, GPUBuffer>}).bufs.P.destroy()
    await assert.rejects(t.trainStep(x, y, {...hp, t: 2}), /WebGPU error in this step: .*destroyed/i)
  },
)

test('a lost device ends the step saying so', {skip}, async () => {
  const {t, x, y} = await trainer()
  await t.trainStep(x, y, hp)
  t.device.destroy()
  await assert.rejects(
    t.trainStep(x, y, {...hp, t: 2}),
    /the GPU device was lost \(destroyed.*resume from the last checkpoint/,
  )
})
