// Non-finite steps (stop, skip, rollback) and the leftovers of killed saves, at library level: poisoned weights make
// NaN/Inf appear exactly where we want. (The CLI side: test/commands/reliability.test.ts.)
import assert from 'node:assert/strict'
import {cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'

import {ModelConfig, PRESETS, TrainConfig} from '../../../src/model/config.js'
import {tf} from '../../../src/model/engines/tfjs/backend.js'
import {gradients} from '../../../src/model/engines/tfjs/network.js'
import {NonFiniteError} from '../../../src/model/errors.js'
import {CheckpointData} from '../../../src/model/io/checkpoint.js'
import {Corpus, loadCorpus, sampleBatch} from '../../../src/model/io/data.js'
import {initParamData, layerOfParam, paramSpecs, zerosLike} from '../../../src/model/params.js'
import {Rng} from '../../../src/model/rng.js'
import {lrAt} from '../../../src/model/train/loop.js'
import {readCheckpoint as loadCheckpoint, saveCheckpoint} from '../../../src/model/train/run-dir.js'
import {train as runTraining, tfjsEngine, useWasm} from '../helpers.js'

let root: string
before(async () => {
  root = mkdtempSync(join(tmpdir(), 'mhc-nonfinite-'))
  await useWasm()
})
after(() => {
  if (root) rmSync(root, {recursive: true, force: true})
})

function records(dir: string): any[] {
  const p = join(dir, 'metrics.jsonl')
  if (!existsSync(p)) return []
  return readFileSync(p, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l))
}

const steps = (dir: string): {step: number; loss: number | null; lr: number; nonFinite?: boolean}[] =>
  records(dir).filter((r) => r.type === 'step')

describe('leftovers of a killed save', () => {
  const cfg: ModelConfig = {arch: 'mhc', ...PRESETS.tiny.model}
  const tc: TrainConfig = {...PRESETS.tiny.train, steps: 4, saveEvery: 2, evalEvery: 0, evalWindows: 4}
  let corpus: Corpus
  before(() => {
    corpus = loadCorpus(undefined, 0.1, cfg.seqLen + 1)
  })

  it('stale temp directories and files are removed on the next run; a checkpoint newer than latest does not block resuming', async () => {
    const dir = join(root, 'leftovers')
    await runTraining({model: cfg, train: tc, corpus, outDir: dir})
    // What kill -9 can leave: a half-written checkpoint dir, a half-written pointer, a torn metrics line, and a whole
    // checkpoint renamed into place before `latest` moved (here: ckpt-000006 while latest says ckpt-000004).
    const dead = 999_999_999 // no such pid
    mkdirSync(join(dir, `ckpt-000006.tmp-${dead}-0123456789ab`))
    writeFileSync(join(dir, `ckpt-000006.tmp-${dead}-0123456789ab`, 'model.safetensors'), 'partial')
    writeFileSync(join(dir, `latest.tmp-${dead}-ba9876543210`), 'ckpt-0000')
    writeFileSync(join(dir, 'someone-elses.tmp-1-0123456789ab'), 'not ours: kept')
    cpSync(join(dir, 'ckpt-000004'), join(dir, 'ckpt-000005'), {recursive: true})
    writeFileSync(
      join(dir, 'metrics.jsonl'),
      readFileSync(join(dir, 'metrics.jsonl'), 'utf8') + '{"type":"step","step":5,"lo',
    )

    const ck = loadCheckpoint(dir, {optimizer: true})
    assert.equal(ck.manifest.step, 4, 'latest decides')
    const s = await runTraining({model: cfg, train: {...tc, steps: 6}, corpus, outDir: dir, resume: ck})
    assert.equal(s.steps, 6)
    // One TensorBoard mirror of metrics.jsonl, whatever its timestamped name; then exactly these.
    assert.equal(readdirSync(dir).filter((f) => f.startsWith('events.out.tfevents.')).length, 1)
    const names = readdirSync(dir)
      .filter((f) => !f.startsWith('events.out.tfevents.'))
      .sort()
    assert.deepEqual(names, [
      'ckpt-000002',
      'ckpt-000004',
      'ckpt-000005',
      'ckpt-000006',
      'latest',
      'metrics.jsonl',
      'someone-elses.tmp-1-0123456789ab',
    ])
    assert.deepEqual(
      steps(dir).map((r) => r.step),
      [1, 2, 3, 4, 5, 6],
      'the torn line is gone, steps 5 and 6 logged once',
    )
  })
})

// ---------------------------------------------------------------------------------------------------
// non-finite steps (library level: poisoned weights make NaN/Inf appear exactly where we want)

describe('non-finite loss or gradient', () => {
  const cfgOf = (arch: ModelConfig['arch']): ModelConfig => ({arch, ...PRESETS.tiny.model})
  const tc: TrainConfig = {...PRESETS.tiny.train, steps: 4, saveEvery: 2, evalEvery: 0, evalWindows: 4}
  let corpus: Corpus
  before(() => {
    corpus = loadCorpus(undefined, 0.1, PRESETS.tiny.model.seqLen + 1)
  })

  /** Sets every entry of a parameter (or one row of it) to `v`, in the host copy a resume will load. */
  function poison(ck: CheckpointData, name: string, v: number, row?: number): void {
    const p = ck.params[name]
    const cols = paramSpecs(ck.manifest.model).find((s) => s.name === name)!.shape[1]
    if (row === undefined) p.fill(v)
    else p.fill(v, row * cols, (row + 1) * cols)
  }

  /** The initial state of a run, saved as a step-0 checkpoint and read back (to be poisoned in memory). */
  let nInitial = 0
  function initialState(cfg: ModelConfig): CheckpointData {
    const state = {
      step: 0,
      params: initParamData(cfg, tc.seed),
      m: zerosLike(cfg),
      v: zerosLike(cfg),
      dataRng: new Rng(tc.seed + 1).state,
    }
    const dir = saveCheckpoint(join(root, `initial-${++nInitial}`), state, cfg, tc, {
      data: {source: corpus.source, sha256: corpus.sha256, bytes: corpus.bytes},
      metrics: {},
      backend: 'wasm',
    })
    return loadCheckpoint(dir, {optimizer: true})
  }

  for (const arch of ['baseline', 'hc', 'mhc'] as const) {
    it(`${arch}: stop (default) names the step and the layer where it started (forward), saves nothing, logs the event`, async () => {
      const cfg = cfgOf(arch)
      const ck = initialState(cfg)
      poison(ck, 'blocks.0.mlp.proj.weight', 3e38) // the MLP of block 0 (layer 1) overflows
      const dir = join(root, `stop-${arch}`)
      await assert.rejects(runTraining({model: cfg, train: tc, corpus, outDir: dir, resume: ck}), (e: unknown) => {
        assert.ok(e instanceof NonFiniteError, String(e))
        assert.match(
          e.message,
          /^non-finite loss at step 1 \(loss NaN, grad norm NaN\), starting in the forward pass at the output of layer 1 \(block 0 MLP\); last checkpoint: \S+ckpt-000000$/,
        )
        assert.equal(e.event?.origin.layer, 1)
        return true
      })
      // metrics.jsonl and its TensorBoard mirror, no checkpoint
      assert.deepEqual(
        readdirSync(dir)
          .map((f) => (f.startsWith('events.out.tfevents.') ? 'events' : f))
          .sort(),
        ['events', 'metrics.jsonl'],
        'no checkpoint written',
      )
      const ev = records(dir).filter((r) => r.type === 'nonfinite')
      assert.deepEqual(
        ev.map(({step, layer, pass, action}) => ({step, layer, pass, action})),
        [{step: 1, layer: 1, pass: 'forward', action: 'stop'}],
      )
      assert.deepEqual(
        steps(dir).map((s) => [s.step, s.loss, s.nonFinite]),
        [[1, null, true]],
      )
    })
  }

  it('the backward pass: the deepest layer with non-finite gradients, or the largest gradient when only the norm overflowed', async () => {
    const cfg: ModelConfig = {...cfgOf('mhc'), layers: 2}
    const engine = tfjsEngine(cfg)
    engine.load({params: initParamData(cfg, 1)})
    const b = sampleBatch(corpus.train, 2, cfg.seqLen, new Rng(3))
    const [x, y] = [tf.tensor2d(b.x, [2, cfg.seqLen], 'int32'), tf.tensor2d(b.y, [2, cfg.seqLen], 'int32')]
    const {grads, loss} = gradients(engine.variables.params as Record<string, tf.Variable>, cfg, x, y)
    const bad = {
      ...grads,
      'blocks.0.attn.qkv.weight': tf.fill(grads['blocks.0.attn.qkv.weight'].shape, Number.NaN),
      'conn.2.phi': tf.fill(grads['conn.2.phi'].shape, Infinity),
    }
    const huge = {...grads, 'blocks.1.mlp.fc.weight': tf.fill(grads['blocks.1.mlp.fc.weight'].shape, 1e30)}
    const origin = [await engine.locateNonFinite(x, y, bad), await engine.locateNonFinite(x, y, huge)]
    tf.dispose([
      loss,
      x,
      y,
      ...Object.values(grads),
      bad['blocks.0.attn.qkv.weight'],
      bad['conn.2.phi'],
      huge['blocks.1.mlp.fc.weight'],
    ])
    engine.dispose()
    assert.deepEqual(origin[0], {
      pass: 'backward',
      layer: 2,
      where: 'the gradient of conn.2.phi, layer 2 (block 1 attention)',
    })
    assert.equal(origin[1].layer, 3)
    assert.match(
      origin[1].where,
      /blocks\.1\.mlp\.fc\.weight, layer 3 \(block 1 MLP\) \(all finite, the largest; their global norm overflowed\)/,
    )
    assert.deepEqual(
      ['tok_emb.weight', 'blocks.3.attn.qkv.weight', 'blocks.3.mlp.fc.weight', 'conn.5.phi', 'norm.weight'].map(
        layerOfParam,
      ),
      [-1, 6, 7, 5, Infinity],
    )
  })

  it('skip: exactly the steps whose batch holds the poisoned byte are skipped (no update, data order kept); the run goes on', async () => {
    const cfg = cfgOf('mhc')
    // A 3e38 embedding row stays finite through every layer, but summing the n streams before the head overflows:
    // only batches containing that byte give a NaN loss. Pick a byte in roughly 10–40% of the batches.
    const counts = Array.from({length: 256}, () => 0)
    for (const b of corpus.train) counts[b]++
    const batchHits = (b: number) => 1 - (1 - counts[b] / corpus.train.length) ** (tc.batch * cfg.seqLen)
    const byte = counts.map((_, b) => b).find((b) => batchHits(b) > 0.1 && batchHits(b) < 0.4)!
    const K = 16
    // Which of the next K steps see the byte: replay the data order.
    const rng = new Rng(tc.seed + 1)
    const expected: number[] = []
    for (let s = 1; s <= K; s++) {
      if (sampleBatch(corpus.train, tc.batch, cfg.seqLen, rng).x.includes(byte)) expected.push(s)
    }

    assert.ok(expected.length > 0 && expected.length < K, `byte ${byte} is in some but not all batches: ${expected}`)

    const ck = initialState(cfg)
    poison(ck, 'tok_emb.weight', 3e38, byte)
    const dir = join(root, 'skip')
    const s = await runTraining({
      model: cfg,
      train: {...tc, steps: K, saveEvery: 0, onNonFinite: 'skip'},
      corpus,
      outDir: dir,
      resume: ck,
    })
    assert.equal(s.steps, K)
    assert.equal(s.skipped, expected.length)
    const ev = records(dir).filter((r) => r.type === 'nonfinite')
    assert.deepEqual(
      ev.map((e) => e.step),
      expected,
    )
    assert.ok(
      ev.every((e) => e.action === 'skip' && e.pass === 'forward' && /output head/.test(e.where)),
      JSON.stringify(ev[0]),
    )
    for (const r of steps(dir)) assert.equal(r.nonFinite === true, expected.includes(r.step), `step ${r.step}`)
    assert.ok(
      steps(dir)
        .filter((r) => !r.nonFinite)
        .every((r) => Number.isFinite(r.loss)),
    )
    // The final checkpoint is finite and loadable (the poisoned row is large but finite).
    loadCheckpoint(s.checkpoint!, {optimizer: true})
  })

  it('skip stops (exit 3 in the CLI) after --max-nonfinite consecutive skipped steps', async () => {
    const cfg = cfgOf('hc')
    const ck = initialState(cfg)
    poison(ck, 'blocks.0.mlp.proj.weight', 3e38)
    const dir = join(root, 'skip-limit')
    await assert.rejects(
      runTraining({
        model: cfg,
        train: {...tc, steps: 20, onNonFinite: 'skip', maxNonFinite: 3},
        corpus,
        outDir: dir,
        resume: ck,
      }),
      /^NonFiniteError: non-finite loss at step 4 .*layer 1 \(block 0 MLP\), after 3 consecutive skipped steps \(--max-nonfinite\)/,
    )
    assert.deepEqual(
      records(dir)
        .filter((r) => r.type === 'nonfinite')
        .map((e) => e.action),
      ['skip', 'skip', 'skip', 'stop'],
    )
  })

  it('rollback: restores the last good checkpoint (≥ 2 steps back), lowers the lr, drops the abandoned checkpoints, and continues', async () => {
    const cfg = cfgOf('mhc')
    const dir = join(root, 'rollback')
    await runTraining({model: cfg, train: tc, corpus, outDir: dir}) // ckpt-000002, ckpt-000004
    const ck = loadCheckpoint(dir, {optimizer: true})
    poison(ck, 'blocks.0.mlp.proj.weight', 3e38) // resume in place from a state that fails at step 5
    const train: TrainConfig = {...tc, steps: 8, onNonFinite: 'rollback'}
    const s = await runTraining({model: cfg, train, corpus, outDir: dir, resume: ck})
    assert.equal(s.steps, 8)
    assert.equal(s.rollbacks, 1)
    assert.equal(s.train.lrScale, 0.5)
    const ev = records(dir).filter((r) => r.type === 'nonfinite')
    assert.deepEqual(
      ev.map(({step, layer, action, restoredStep, lrScale}) => ({step, layer, action, restoredStep, lrScale})),
      [{step: 5, layer: 1, action: 'rollback', restoredStep: 2, lrScale: 0.5}],
    )
    const got = steps(dir)
    assert.deepEqual(
      got.map((r) => r.step),
      [1, 2, 3, 4, 5, 6, 7, 8],
      'the undone steps 3–5 were replaced',
    )
    assert.equal(got[2].lr, lrAt(2, tc) * 0.5)
    const last = loadCheckpoint(dir)
    assert.equal(last.manifest.step, 8)
    assert.equal(last.manifest.train.lrScale, 0.5, 'checkpoints carry the lowered lr, so a resume keeps it')

    // Same as resuming the restored checkpoint with the lr halved.
    const from2 = loadCheckpoint(join(dir, 'ckpt-000002'), {optimizer: true})
    const refDir = join(root, 'rollback-ref')
    await runTraining({model: cfg, train: {...train, lrScale: 0.5}, corpus, outDir: refDir, resume: from2})
    const ref = steps(refDir)
    for (const r of got.slice(2)) assert.equal(r.loss, ref.find((x) => x.step === r.step)!.loss, `step ${r.step}`)
  })

  it('rollback with no checkpoint far enough back restarts from the initial state, and stops after --max-nonfinite rollbacks', async () => {
    const cfg = cfgOf('baseline')
    const ck = initialState(cfg)
    poison(ck, 'blocks.0.mlp.proj.weight', 3e38) // poisoned from step 0: the initial state itself is fine
    const dir = join(root, 'rollback-initial')
    const s = await runTraining({
      model: cfg,
      train: {...tc, steps: 3, saveEvery: 0, onNonFinite: 'rollback', rollbackLrFactor: 0.25},
      corpus,
      outDir: dir,
      resume: ck,
    })
    assert.equal(s.rollbacks, 1)
    assert.equal(s.train.lrScale, 0.25)
    assert.deepEqual(
      steps(dir).map((r) => r.step),
      [1, 2, 3],
    )

    const ck2 = initialState(cfg)
    poison(ck2, 'blocks.0.mlp.proj.weight', 3e38)
    // A nonsense lr that diverges at once and again after each restart.
    await assert.rejects(
      runTraining({
        model: cfg,
        train: {...tc, lr: 1e30, warmup: 0, gradClip: 0, steps: 10, onNonFinite: 'rollback', maxNonFinite: 2},
        corpus,
        outDir: join(root, 'rollback-limit'),
        resume: ck2,
      }),
      /after 2 rollbacks \(--max-nonfinite\)/,
    )
  })
})
