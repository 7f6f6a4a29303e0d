// Benchmark (not a test; run on the GPU machine by bench/gpu/run.sh): training throughput of baseline / HC / mHC with
// the WebGPU engine and with TensorFlow.js's own WebGPU backend, through the Engine seam, on random tokens. One process
// per engine (tfjs-webgpu and the WebGPU engine each hold a Dawn device). Prints one JSON row per preset and arch:
//   {"preset", "arch", "engine": "webgpu" | "tfjs-webgpu", "tokensPerSec", "stepMs", "medianStepMs", "dispatches", ...}
// Usage: node .bundle/bench.mjs --engine webgpu|tfjs-webgpu [--presets small,medium,gpu] [--archs baseline,hc,mhc]
//        [--steps 30] [--warmup 5] [--out FILE]
import {writeFileSync} from 'node:fs'
import {parseArgs} from 'node:util'

import {type Arch, ARCHS, type ModelConfig, PRESETS, type TrainConfig} from '../../src/model/config.js'
import {openEngines} from '../../src/model/engines/index.js'
import {initParamData} from '../../src/model/params.js'
import {Rng} from '../../src/model/rng.js'
import {lrAt} from '../../src/model/train/loop.js'

/** The presets of the project, and `gpu`: a larger model that a GPU should be used for (the PyTorch bench has it too). */
export const GPU_PRESET = {model: {...PRESETS.medium.model, layers: 12, dModel: 512, heads: 8, seqLen: 256}, batch: 32}

const {values: a} = parseArgs({
  options: {
    archs: {default: ARCHS.join(','), type: 'string'},
    engine: {default: 'webgpu', type: 'string'},
    out: {type: 'string'},
    presets: {default: 'small,medium,gpu', type: 'string'},
    steps: {default: '30', type: 'string'},
    warmup: {default: '5', type: 'string'},
  },
})

const engines = await openEngines({choice: a.engine as 'tfjs-webgpu' | 'webgpu', source: 'flag'})
const rows = []
for (const preset of a.presets!.split(',')) {
  for (const arch of a.archs!.split(',') as Arch[]) {
    const base = preset === 'gpu' ? GPU_PRESET : {batch: PRESETS[preset].train.batch, model: PRESETS[preset].model}
    const model: ModelConfig = {arch, ...base.model}
    const tc: TrainConfig = {...PRESETS.medium.train, batch: base.batch}
    const steps = Number(a.steps)
    const warmup = Number(a.warmup)
    // tfjs-webgpu at the larger presets takes seconds a step: fewer of them.
    const timed = a.engine === 'tfjs-webgpu' && preset !== 'small' ? Math.min(steps, 6) : steps
    const engine = await engines.create({batch: tc.batch, model})
    engine.load({params: initParamData(model, 1)})
    const rng = new Rng(2)
    const N = tc.batch * model.seqLen
    const tokens = () => Int32Array.from({length: N}, () => rng.int(model.vocabSize))
    const batches = Array.from({length: 4}, () => ({seqLen: model.seqLen, size: tc.batch, x: tokens(), y: tokens()}))
    const hp = (t: number) => ({
      adamEps: tc.adamEps,
      beta1: tc.beta1,
      beta2: tc.beta2,
      gradClip: 1,
      lr: lrAt(t - 1, tc),
      t,
      weightDecay: tc.weightDecay,
    })
    const t0 = performance.now()
    await engine.trainStep(batches[0], hp(1))
    const firstMs = performance.now() - t0
    for (let i = 1; i < Math.min(warmup, timed); i++) await engine.trainStep(batches[i % 4], hp(i + 1))
    const times: number[] = []
    let loss = Number.NaN
    for (let i = 0; i < timed; i++) {
      const s = performance.now()
      loss = (await engine.trainStep(batches[i % 4], hp(warmup + i + 1))).loss
      times.push(performance.now() - s)
    }

    const mean = times.reduce((x, y) => x + y, 0) / times.length
    const median = [...times].sort((x, y) => x - y)[Math.floor(times.length / 2)]
    const row = {
      preset,
      arch,
      engine: a.engine,
      tokensPerSec: Math.round(N / (mean / 1000)),
      stepMs: Number(mean.toFixed(3)),
      medianStepMs: Number(median.toFixed(3)),
      firstStepMs: Number(firstMs.toFixed(1)),
      timedSteps: timed,
      batch: tc.batch,
      seqLen: model.seqLen,
      dModel: model.dModel,
      layers: model.layers,
      dispatches: (engine as {dispatches?: number}).dispatches ?? null,
      loss,
    }
    engine.dispose()
    rows.push(row)
    console.log(JSON.stringify(row))
  }
}

if (a.out) writeFileSync(a.out, JSON.stringify({backend: engines.report, rows}, null, 2) + '\n')
