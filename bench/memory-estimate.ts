// Benchmark (not a test): the tfjs engine's peak memory during one training step (tf.profile peakBytes above the
// weights) at 27 small shapes on wasm, the least-squares fit behind TFJS_MEMORY (src/profile/cost-models/memory.ts),
// and how the estimate compares with the measurements and with larger presets.
// Usage: node --import tsx bench/memory-estimate.ts [--out bench/results/memory-estimate-tfjs.json]
import {Matrix, solve} from 'ml-matrix'
import {writeFileSync} from 'node:fs'
import {parseArgs} from 'node:util'

import {ModelConfig, PRESETS} from '../src/model/config.js'
import {openEngines} from '../src/model/engines/index.js'
import {tf} from '../src/model/engines/tfjs/backend.js'
import {loadCorpus} from '../src/model/io/data.js'
import {parameterCount} from '../src/model/params.js'
import {restore, takeStep} from '../src/model/train/loop.js'
import {trainingMemoryEstimate} from '../src/profile/cost-models/memory.js'

const {values: a} = parseArgs({options: {out: {type: 'string', default: 'bench/results/memory-estimate-tfjs.json'}}})
const engines = await openEngines({choice: 'wasm', source: 'flag'})
const corpus = loadCorpus()

/** tf.profile's peak above what was alive before the step (the weights and moments). */
async function measure(model: ModelConfig, batch: number): Promise<number> {
  const engine = await engines.create({model, batch})
  try {
    const tc = {...PRESETS.small.train, batch}
    const pos = restore(engine, tc)
    const before = tf.memory().numBytes
    const prof = await tf.profile(async () => {
      await takeStep(engine, pos, tc, corpus.train)
    })
    return prof.peakBytes - before + 4 * parameterCount(model) // the weights count towards the budget too
  } finally {
    engine.dispose()
  }
}

const shapes: [number, number, number, number, number, number][] = [
  [64, 2, 32, 4, 4, 2],
  [128, 4, 32, 4, 4, 2],
  [64, 4, 64, 4, 4, 2],
  [64, 2, 32, 1, 4, 2],
  [64, 2, 32, 4, 2, 2],
  [64, 2, 32, 4, 8, 2],
  [64, 2, 32, 4, 4, 4],
  [32, 2, 128, 2, 4, 1],
  [96, 8, 48, 3, 3, 3],
]
const rows: {model: ModelConfig; batch: number; params: number; measured: number}[] = []
for (const arch of ['baseline', 'hc', 'mhc'] as const) {
  for (const [dModel, heads, seqLen, mlpRatio, expansion, layers] of shapes) {
    const model: ModelConfig = {...PRESETS.small.model, arch, dModel, heads, seqLen, mlpRatio, expansion, layers}
    rows.push({model, batch: 4, params: parameterCount(model), measured: await measure(model, 4)})
    console.error(
      `${arch} C=${dModel} H=${heads} T=${seqLen} m=${mlpRatio} n=${expansion} L=${layers}: ${(rows.at(-1)!.measured / 2 ** 20).toFixed(1)} MiB`,
    )
  }
}

// The fit: bytes = perParam·P + tokens·(Σ_sublayers [C, mlpRatio·C/2, H·T/2, n·C, n²]·w + V·w_V + C·w_C).
const features = (r: (typeof rows)[number]) => {
  const {model: m, batch} = r
  const N = batch * m.seqLen
  const L = 2 * m.layers
  const hyper = m.arch === 'baseline' ? 0 : 1
  return [
    r.params,
    N * L * m.dModel,
    (N * L * m.mlpRatio * m.dModel) / 2,
    (N * L * m.heads * m.seqLen) / 2,
    hyper * N * L * m.expansion * m.dModel,
    hyper * N * L * m.expansion ** 2,
    N * m.vocabSize,
    N * m.dModel,
  ]
}

const X = new Matrix(rows.map(features))
const y = Matrix.columnVector(rows.map((r) => r.measured))
const w = solve(X.transpose().mmul(X), X.transpose().mmul(y)).to1DArray()
const names = [
  'perParam',
  'perTokenSublayer.dModel',
  'perTokenSublayer.mlpHalf',
  'perTokenSublayer.scoresHalf',
  'perTokenSublayer.streams',
  'perTokenSublayer.maps',
  'perToken.vocab',
  'perToken.dModel',
]

// The estimate as the code has it, against the measurements and against larger presets.
const check = async (preset: string, arch: ModelConfig['arch'], batch: number) => {
  const model: ModelConfig = {...PRESETS[preset].model, arch}
  const estimated = trainingMemoryEstimate({...model, params: parameterCount(model), batch, recomputeBlock: 0}).bytes
  const measured = await measure(model, batch)
  return {
    preset,
    arch,
    batch,
    measuredMiB: measured / 2 ** 20,
    estimatedMiB: estimated / 2 ** 20,
    ratio: estimated / measured,
  }
}

const presets = [
  await check('small', 'baseline', 16),
  await check('small', 'mhc', 16),
  await check('deep', 'hc', 16),
  await check('medium', 'mhc', 4),
]
const result = {
  benchmark: 'tfjs engine peak memory of one training step (wasm)',
  command: 'node --import tsx bench/memory-estimate.ts',
  date: new Date().toISOString(),
  fit: Object.fromEntries(names.map((k, i) => [k, Number(w[i].toFixed(2))])),
  fitRows: rows.map((r, i) => ({
    ...r.model,
    batch: r.batch,
    measuredMiB: r.measured / 2 ** 20,
    fittedMiB: features(r).reduce((s, f, j) => s + f * w[j], 0) / 2 ** 20,
    codeEstimateMiB:
      trainingMemoryEstimate({...r.model, params: r.params, batch: r.batch, recomputeBlock: 0}).bytes / 2 ** 20,
    i,
  })),
  presets,
}
writeFileSync(a.out!, JSON.stringify(result, null, 2) + '\n')
console.log(JSON.stringify({fit: result.fit, presets}, null, 2))
