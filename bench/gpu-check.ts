// Correctness of a GPU backend against wasm (not a test: needs the GPU machine). Same weights and batch on both
// backends: loss, gradient norm and a few steps of training must agree to float32 tolerance.
// Usage (bundled, see scripts/bundle.mjs): node gpu-check.mjs [--backend webgpu] [--data FILE]
import {parseArgs} from 'node:util'

import {ARCHS, ModelConfig, PRESETS} from '../src/model/config.js'
import {BackendChoice} from '../src/model/engines/backends.js'
import {openEngines} from '../src/model/engines/index.js'
import {tf} from '../src/model/engines/tfjs/backend.js'
import {loadCorpus} from '../src/model/io/data.js'
import {restore, takeStep} from '../src/model/train/loop.js'

const {values: a} = parseArgs({
  options: {
    backend: {type: 'string', default: 'webgpu'},
    data: {type: 'string'},
    steps: {type: 'string', default: '5'},
  },
})
const corpus = loadCorpus(a.data)
const run = async (backend: string, arch: (typeof ARCHS)[number]) => {
  const engines = await openEngines({choice: backend as BackendChoice, source: 'flag'})
  const model: ModelConfig = {arch, ...PRESETS.tiny.model}
  const tc = {...PRESETS.tiny.train, steps: Number(a.steps), seed: 3}
  const engine = await engines.create({model, batch: tc.batch})
  const pos = restore(engine, tc)
  const out = []
  for (let i = 0; i < tc.steps; i++) out.push(await takeStep(engine, pos, tc, corpus.train))
  engine.dispose()
  return out.map((r) => [r.loss, r.gradNorm])
}

let worst = 0
for (const arch of ARCHS) {
  const gpu = await run(a.backend!, arch)
  const cpu = await run('wasm', arch)
  const err = Math.max(
    ...gpu.flatMap((g, i) => g.map((v, j) => Math.abs(v - cpu[i][j]) / Math.max(1, Math.abs(cpu[i][j])))),
  )
  worst = Math.max(worst, err)
  console.log(
    `${arch}: ${a.backend} vs wasm, ${gpu.length} steps: largest relative difference of loss/grad norm ${err.toExponential(2)}; last loss ${gpu.at(-1)![0].toFixed(5)} vs ${cpu.at(-1)![0].toFixed(5)}`,
  )
}

console.log(JSON.stringify({backend: a.backend, tfjs: tf.version.tfjs, worstRelativeDifference: worst}))
