// Benchmark (not a test): training throughput (tokens/s) of baseline, HC and mHC for a preset on this machine.
// Usage: node --import tsx bench/throughput.ts [--preset small] [--backend wasm] [--steps 30] [--warmup 5] [--out FILE] [--data FILE]
// Writes a JSON result (with the command, machine and per-step times) and prints a table.
import {mkdirSync, writeFileSync} from 'node:fs'
import {cpus, totalmem} from 'node:os'
import {dirname} from 'node:path'
import {parseArgs} from 'node:util'

import {table} from '../src/cli/render.js'
import {ARCHS, ModelConfig, PRESETS} from '../src/model/config.js'
import {BackendChoice} from '../src/model/engines/backends.js'
import {openEngines} from '../src/model/engines/index.js'
import {tf} from '../src/model/engines/tfjs/backend.js'
import {loadCorpus} from '../src/model/io/data.js'
import {parameterCount} from '../src/model/params.js'
import {restore, takeStep} from '../src/model/train/loop.js'

const {values: a} = parseArgs({
  options: {
    preset: {type: 'string', default: 'small'},
    backend: {type: 'string', default: 'wasm'},
    steps: {type: 'string', default: '30'},
    warmup: {type: 'string', default: '5'},
    out: {type: 'string', default: 'bench/results/throughput-cpu-wasm.json'},
    data: {type: 'string'}, // a text file instead of the bundled Moby Dick (the GPU bundle carries the text as a file)
  },
})
const engines = await openEngines({choice: a.backend as BackendChoice, source: 'flag'})
const preset = PRESETS[a.preset!]
const corpus = loadCorpus(a.data)
const steps = Number(a.steps)
const warm = Number(a.warmup)
const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]

const rows = []
for (const arch of ARCHS) {
  const model: ModelConfig = {arch, ...preset.model}
  const tc = {...preset.train, steps: warm + steps}
  const engine = await engines.create({model, batch: tc.batch})
  const pos = restore(engine, tc)
  const times: number[] = []
  for (let i = 0; i < warm + steps; i++) {
    const t0 = performance.now()
    await takeStep(engine, pos, tc, corpus.train)
    if (i >= warm) times.push((performance.now() - t0) / 1000)
  }

  engine.dispose()
  const tokens = tc.batch * model.seqLen
  const med = median(times)
  rows.push({
    arch,
    params: parameterCount(model),
    tokensPerStep: tokens,
    medianStepSeconds: med,
    tokensPerSec: tokens / med,
    meanTokensPerSec: (tokens * times.length) / times.reduce((s, t) => s + t, 0),
    stepSeconds: times,
  })
  console.error(`${arch}: ${(tokens / med).toFixed(0)} tok/s (median of ${steps} steps)`)
}

const base = rows[0].tokensPerSec
const result = {
  benchmark: 'training throughput',
  command: `node --import tsx bench/throughput.ts ${process.argv.slice(2).join(' ')}`.trim(),
  date: new Date().toISOString(),
  backend: engines.report.backend,
  tfjs: tf.version.tfjs,
  node: process.version,
  machine: {cpus: cpus().length, cpuModel: cpus()[0]?.model, memGiB: Number((totalmem() / 2 ** 30).toFixed(1))},
  preset: a.preset,
  model: preset.model,
  batch: preset.train.batch,
  warmupSteps: warm,
  timedSteps: steps,
  results: rows.map((r) => ({...r, slowdownVsBaseline: base / r.tokensPerSec})),
}
mkdirSync(dirname(a.out!), {recursive: true})
writeFileSync(a.out!, JSON.stringify(result, null, 2) + '\n')
console.log(
  table(
    ['arch', 'params', 'tokens/step', 'median step (s)', 'tokens/s', 'time vs baseline'],
    result.results.map((r) => [
      r.arch,
      r.params.toLocaleString('en-US'),
      r.tokensPerStep,
      r.medianStepSeconds.toFixed(3),
      r.tokensPerSec.toFixed(0),
      `${r.slowdownVsBaseline.toFixed(2)}×`,
    ]),
  ),
)
console.log(`written to ${a.out}`)
