// The training loop: schedule, determinism, and resume = uninterrupted run.
import assert from 'node:assert/strict'
import {mkdtempSync, readdirSync, readFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {before, test} from 'node:test'

import {ModelConfig, PRESETS, TrainConfig} from '../../../src/model/config.js'
import {Corpus, evalWindows, loadCorpus, sampleBatch} from '../../../src/model/io/data.js'
import {Rng} from '../../../src/model/rng.js'
import {lrAt} from '../../../src/model/train/loop.js'
import {readCheckpoint as loadCheckpoint} from '../../../src/model/train/run-dir.js'
import {train as runTraining, useWasm} from '../helpers.js'

let corpus: Corpus
before(async () => {
  await useWasm()
  corpus = loadCorpus()
})

const model = (arch: ModelConfig['arch']): ModelConfig => ({arch, ...PRESETS.tiny.model})
const train = (o: Partial<TrainConfig> = {}): TrainConfig => ({
  ...PRESETS.tiny.train,
  steps: 8,
  evalEvery: 4,
  evalWindows: 8,
  saveEvery: 4,
  ...o,
})

test('lr schedule: linear warm-up to the peak, cosine down to lr·minLrRatio at the last step', () => {
  const tc = train({steps: 100, warmup: 10, lr: 1e-3, minLrRatio: 0.1})
  assert.ok(Math.abs(lrAt(0, tc) - 1e-4) < 1e-12)
  assert.ok(Math.abs(lrAt(9, tc) - 1e-3) < 1e-12)
  assert.ok(Math.abs(lrAt(10, tc) - 1e-3) < 1e-12)
  assert.ok(
    Math.abs(lrAt(55, tc) - (1e-4 + 0.5 * 9e-4)) < 1e-12,
    'half way through the decay: the mean of peak and floor',
  )
  assert.ok(Math.abs(lrAt(100, tc) - 1e-4) < 1e-12)
  for (let s = 11; s < 100; s++) assert.ok(lrAt(s, tc) <= lrAt(s - 1, tc), 'monotone after warm-up')
})

test('Moby Dick corpus: whole book, 90/10 split, batches are next-byte pairs drawn deterministically', () => {
  assert.equal(corpus.source, 'moby-dick')
  assert.ok(corpus.bytes > 1_000_000, `the full text (${corpus.bytes} bytes)`)
  const text = new TextDecoder().decode(corpus.train.subarray(0, 40_000))
  assert.match(text, /Call me Ishmael/)
  assert.equal(corpus.train.length + corpus.val.length, corpus.bytes)
  const a = sampleBatch(corpus.train, 4, 16, new Rng(5))
  const b = sampleBatch(corpus.train, 4, 16, new Rng(5))
  assert.deepEqual(a.x, b.x)
  assert.deepEqual([a.size, a.seqLen], [4, 16])
  for (let r = 0; r < 4; r++)
    for (let t = 0; t < 15; t++)
      assert.equal(a.y[r * 16 + t], a.x[r * 16 + t + 1], 'targets are the inputs shifted by one')
  const w = evalWindows(corpus.val, 10, 64)
  assert.equal(w.length, 10)
  assert.equal(w[0], 0)
  assert.equal(w[9], corpus.val.length - 65)
})

for (const arch of ['baseline', 'hc', 'mhc'] as const) {
  test(`${arch}: resuming from a checkpoint reproduces the uninterrupted loss curve`, async () => {
    const dirA = mkdtempSync(join(tmpdir(), 'mhc-a-'))
    const dirB = mkdtempSync(join(tmpdir(), 'mhc-b-'))
    const full = await runTraining({model: model(arch), train: train(), corpus, outDir: dirA})
    assert.equal(full.steps, 8)
    // Resume from the step-4 checkpoint of run A, into another directory.
    const ck = loadCheckpoint(join(dirA, 'ckpt-000004'), {optimizer: true})
    const resumed = await runTraining({
      model: ck.manifest.model,
      train: ck.manifest.train,
      corpus,
      outDir: dirB,
      resume: ck,
    })
    assert.equal(resumed.startStep, 4)
    assert.deepEqual(
      resumed.history.map((h) => h.step),
      [5, 6, 7, 8],
    )
    for (const h of resumed.history) {
      const ref = full.history.find((r) => r.step === h.step)!
      assert.ok(Math.abs(h.loss - ref.loss) <= 1e-5, `step ${h.step}: ${h.loss} vs ${ref.loss}`)
      assert.ok(Math.abs(h.gradNorm - ref.gradNorm) <= 1e-5 * Math.max(1, ref.gradNorm))
    }

    assert.ok(Math.abs(resumed.valLoss! - full.valLoss!) <= 1e-5)
    // The final weights are the same too.
    const wa = readFileSync(join(dirA, 'ckpt-000008', 'model.safetensors'))
    const wb = readFileSync(join(dirB, 'ckpt-000008', 'model.safetensors'))
    assert.ok(wa.equals(wb), 'final weights are bit-identical')
  })
}

test('the loss goes down, and a different seed gives a different run', async () => {
  const a = await runTraining({
    model: model('mhc'),
    train: train({steps: 20, saveEvery: 0, evalEvery: 0}),
    corpus,
    outDir: mkdtempSync(join(tmpdir(), 'mhc-')),
  })
  const b = await runTraining({
    model: model('mhc'),
    train: train({steps: 20, saveEvery: 0, evalEvery: 0, seed: 99}),
    corpus,
    outDir: mkdtempSync(join(tmpdir(), 'mhc-')),
  })
  const first = a.history[0].loss
  assert.ok(Math.abs(first - Math.log(256)) < 0.2, `untrained loss ≈ ln 256 = 5.545, got ${first}`)
  assert.ok(a.trainLoss! < first - 1, `trained: ${first} → ${a.trainLoss}`)
  assert.notEqual(a.history[0].loss, b.history[0].loss)
  const metrics = readFileSync(join(a.checkpoint!, '..', 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l))
  assert.equal(metrics.filter((m) => m.type === 'step').length, 20)
  for (const m of metrics.filter((r) => r.type === 'step'))
    for (const k of ['loss', 'gradNorm', 'lr', 'tokensPerSec']) assert.ok(Number.isFinite(m[k]), `${k} logged`)
})

test('a run that fails before its first step leaves none of the folders it created', async () => {
  const {runTraining} = await import('../../../src/model/train/loop.js')
  const root = mkdtempSync(join(tmpdir(), 'mhc-fail-'))
  const out = join(root, 'a', 'b', 'run')
  const failing = {
    name: 'failing',
    backend: 'none',
    model: model('mhc'),
    load() {},
    async trainStep(): Promise<never> {
      throw new Error('out of memory (simulated)')
    },
    loss: async () => 0,
    maps: async () => ({hPre: [], hPost: [], hRes: [], tokens: 0}),
    readState: async () => ({params: {}, m: {}, v: {}}),
    dispose() {},
  }
  await assert.rejects(
    runTraining({model: model('mhc'), train: train(), corpus, outDir: out, engine: failing}),
    /out of memory \(simulated\)/,
  )
  assert.deepEqual(readdirSync(root), [], 'a/b/run and its parents are gone')
})
