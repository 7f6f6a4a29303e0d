// Reliability: kill -9 at random moments (mid-save included), SIGINT/SIGTERM, non-finite steps (stop, skip,
// rollback), stale temp files, and input checks before work. The CLI is spawned as in cli.test.ts.
import {describe, it, before, after} from 'node:test'
import assert from 'node:assert/strict'
import {ChildProcess, spawn} from 'node:child_process'
import {cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, watch, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {selectBackend, tf} from '../src/model/backend.js'
import {LoadedCheckpoint, loadCheckpoint, saveCheckpoint} from '../src/model/checkpoint.js'
import {Corpus, loadCorpus, sampleBatch} from '../src/model/data.js'
import {ModelConfig, initParams} from '../src/model/model.js'
import {PRESETS} from '../src/model/presets.js'
import {Rng} from '../src/model/rng.js'
import {NonFiniteError, TrainConfig, gradients, initOptimizer, locateNonFinite, lrAt, runTraining} from '../src/model/train.js'
import {layerOfParam} from '../src/model/model.js'

const repo = fileURLToPath(new URL('..', import.meta.url))

// ---------------------------------------------------------------------------------------------------
// helpers

interface Exit { status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }
interface Run { child: ChildProcess; exit: Promise<Exit>; stderr: () => string }

/** Spawns `bin/dev.js ...args` (the node process itself, so a signal reaches the CLI, not a wrapper). */
function start(args: string[]): Run {
  const env: NodeJS.ProcessEnv = {...process.env, MHC_NO_TFJS_NODE: '1'}
  delete env.DEBUG
  const child = spawn(process.execPath, ['--import', 'tsx', 'bin/dev.js', ...args], {cwd: repo, env})
  let stdout = ''
  let stderr = ''
  child.stdout!.setEncoding('utf8').on('data', (d) => { stdout += d })
  child.stderr!.setEncoding('utf8').on('data', (d) => { stderr += d })
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000)
  const exit = new Promise<Exit>((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (status, signal) => {
      clearTimeout(timer)
      resolve({status, signal, stdout, stderr})
    })
  })
  return {child, exit, stderr: () => stderr}
}

const show = (r: Exit) => `exit ${r.status} signal ${r.signal}\n--- stdout:\n${r.stdout.slice(-1500)}\n--- stderr:\n${r.stderr.slice(-1500)}`

/** Deterministic uniform draws from the project's seeded PRNG: the kill schedule is the same on every run of the suite.. */
const mulberry32 = (seed: number) => {
  const r = new Rng(seed)
  return () => r.uniform()
}

interface StepRec { step: number; loss: number | null; lr: number; nonFinite?: boolean }
function records(dir: string): any[] {
  const p = join(dir, 'metrics.jsonl')
  if (!existsSync(p)) return []
  return readFileSync(p, 'utf8').split('\n').filter((l) => l.trim()).flatMap((l) => {
    try {
      return [JSON.parse(l)]
    } catch {
      return [] // a torn last line of a killed run
    }
  })
}
const steps = (dir: string): StepRec[] => records(dir).filter((r) => r.type === 'step')

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
async function until(cond: () => boolean, what: string, ms = 60_000): Promise<void> {
  const t0 = Date.now()
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}

function dispose(ck: LoadedCheckpoint): void {
  for (const v of Object.values(ck.params)) v.dispose()
  if (ck.optim) for (const g of [ck.optim.m, ck.optim.v]) for (const v of Object.values(g)) v.dispose()
}

/** Every step 1..n logged exactly once, with the reference run's loss. */
function assertSameCurve(got: StepRec[], ref: StepRec[], n: number, what: string): void {
  assert.deepEqual(got.map((s) => s.step), Array.from({length: n}, (_, i) => i + 1), `${what}: one record per step`)
  for (const s of got) {
    const r = ref[s.step - 1]
    assert.ok(Math.abs(s.loss! - r.loss!) <= 1e-5, `${what}: step ${s.step} loss ${s.loss} vs uninterrupted ${r.loss}`)
  }
}

const N = 60 // steps of the CLI runs
const FLAGS = ['--preset', 'tiny', '--steps', String(N), '--eval-every', '0', '--eval-windows', '4', '--no-progress']

let root: string
let reference: Promise<StepRec[]> | undefined
/** The uninterrupted CLI run every interrupted one is compared with (saving never changes the curve). */
function referenceCurve(): Promise<StepRec[]> {
  reference ??= (async () => {
    const dir = join(root, 'reference')
    const r = await start(['train', ...FLAGS, '--save-every', '0', '--out', dir]).exit
    assert.equal(r.status, 0, show(r))
    const s = steps(dir)
    assert.equal(s.length, N)
    return s
  })()
  return reference
}

before(async () => {
  root = mkdtempSync(join(tmpdir(), 'mhc-rel-'))
  await selectBackend('wasm')
})
after(() => {
  if (root) rmSync(root, {recursive: true, force: true})
})

// ---------------------------------------------------------------------------------------------------
// kill -9, SIGINT, SIGTERM (CLI)

describe('interrupting mhc train', {concurrency: 2}, () => {
  it('SIGKILL at random moments, mid-save included: the latest checkpoint always loads and resuming gives the same curve', async () => {
    const ref = await referenceCurve()
    const rand = mulberry32(20260507)
    const dir = join(root, 'killed')
    const KILLS = 20
    const tally = {runs: 0, kills: 0, midSave: 0, midCheckpoint: 0, beforePointer: 0, midPointer: 0, noCheckpointYet: 0, finished: 0}
    for (let i = 0; tally.kills < KILLS && i < 40; i++) {
      tally.runs++
      const hasCheckpoint = existsSync(dir) && readdirSync(dir).some((f) => /^ckpt-\d+$/.test(f))
      if (!hasCheckpoint) rmSync(dir, {recursive: true, force: true}) // killed before its first checkpoint: start again
      const run = start(hasCheckpoint ? ['train', '--resume', dir, '--no-progress'] : ['train', ...FLAGS, '--save-every', '1', '--out', dir])
      const kill = () => run.child.kill('SIGKILL')
      // Half the kills land after a random delay (start-up, a step, a save: wherever), half the moment the k-th temp
      // file of a save appears, which aims them into the middle of writing a checkpoint or the `latest` pointer.
      let watcher: ReturnType<typeof watch> | undefined
      if (i % 2 === 1 && hasCheckpoint) {
        let k = 1 + Math.floor(rand() * 6)
        watcher = watch(dir, (_event, name) => {
          // Only while the temp name still exists: its creation, not its rename into place.
          if (name && /\.tmp-/.test(String(name)) && existsSync(join(dir, String(name))) && --k === 0) kill()
        })
      }
      // The random delay counts from the run's first new step, not from spawn: start-up time varies with the
      // machine's load, and a schedule counted from spawn can land every kill before training begins.
      const metrics = join(dir, 'metrics.jsonl')
      const sizeAtStart = existsSync(metrics) ? statSync(metrics).size : 0
      let exited = false
      const delay = i % 2 === 1 && hasCheckpoint ? 4000 : rand() * 1500
      let timer: NodeJS.Timeout | undefined
      const poll = setInterval(() => {
        if (exited || timer) return
        if (existsSync(metrics) && statSync(metrics).size > sizeAtStart) timer = setTimeout(kill, delay)
      }, 10)
      const r = await run.exit
      exited = true
      clearInterval(poll)
      clearTimeout(timer)
      watcher?.close()
      if (r.status === 0) { // it finished before the kill came: the whole curve must be the reference one
        tally.finished++
        assertSameCurve(steps(dir), ref, N, `run ${i} (finished)`)
        rmSync(dir, {recursive: true, force: true})
        continue
      }
      assert.equal(r.signal, 'SIGKILL', show(r))
      tally.kills++

      const names = existsSync(dir) ? readdirSync(dir) : []
      const committed = names.filter((f) => /^ckpt-\d+$/.test(f)).sort()
      const latest = names.includes('latest') ? readFileSync(join(dir, 'latest'), 'utf8').trim() : undefined
      if (names.some((f) => /^ckpt-\d+\.tmp-/.test(f))) tally.midCheckpoint++
      if (names.some((f) => /^latest\.tmp-/.test(f))) tally.midPointer++
      if (latest && committed.at(-1)! > latest) tally.beforePointer++
      if (names.some((f) => /\.tmp-/.test(f)) || (latest && committed.at(-1)! > latest)) tally.midSave++
      if (committed.length === 0) {
        tally.noCheckpointYet++
        assert.equal(latest, undefined, 'no latest without a checkpoint')
        continue
      }
      if (latest) assert.ok(committed.includes(latest), `latest names ${latest}, which is not a complete checkpoint (${names})`)
      // The checkpoint the next run resumes from loads (checksums, shapes, finiteness) and lies on the reference curve.
      const ck = loadCheckpoint(dir, {optimizer: true})
      try {
        assert.equal(ck.dir, join(dir, latest ?? committed.at(-1)!))
        const step = ck.manifest.step
        assert.ok(Math.abs(ck.manifest.metrics.trainLoss! - ref[step - 1].loss!) <= 1e-5, `checkpoint at step ${step}: loss ${ck.manifest.metrics.trainLoss} vs ${ref[step - 1].loss}`)
      } finally {
        dispose(ck)
      }
    }
    // Finish the run and compare the whole curve.
    if (existsSync(dir) && readdirSync(dir).some((f) => /^ckpt-\d+$/.test(f))) {
      const r = await start(['train', '--resume', dir, '--no-progress']).exit
      assert.equal(r.status, 0, show(r))
      assertSameCurve(steps(dir), ref, N, 'after the kills')
      assert.ok(!readdirSync(dir).some((f) => /\.tmp-/.test(f)), 'the resumed run removed the stale temp files of killed saves')
      assert.equal(readFileSync(join(dir, 'latest'), 'utf8').trim(), `ckpt-${String(N).padStart(6, '0')}`)
    }
    console.log(`# kill -9: ${JSON.stringify(tally)}`)
    assert.ok(tally.kills >= 12, `most runs were killed: ${JSON.stringify(tally)}`)
    assert.ok(tally.midSave >= 3, `several kills landed mid-save: ${JSON.stringify(tally)}`)
  })

  for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    it(`${sig}: finishes the step, saves, exits ${code} saying how to resume; the resumed run gives the uninterrupted curve`, async () => {
      const ref = await referenceCurve()
      const dir = join(root, sig)
      const run = start(['train', ...FLAGS, '--save-every', '0', '--out', dir])
      await until(() => steps(dir).length >= 5, 'five steps')
      run.child.kill(sig)
      const r = await run.exit
      assert.equal(r.status, code, show(r))
      const lines = r.stderr.trim().split('\n')
      const m = /^interrupted at step (\d+); checkpoint (\S+); resume with: mhc train --resume (\S+)$/.exec(lines.at(-1)!)
      assert.ok(m, `last stderr line says how to resume\n${show(r)}`)
      assert.ok(lines.some((l) => l.startsWith(`${sig}: finishing the current step`)), show(r))
      const step = Number(m[1])
      assert.ok(step >= 5 && step < N, `stopped early, at step ${step}`)
      assert.equal(m[2], join(dir, `ckpt-${String(step).padStart(6, '0')}`))
      assert.equal(m[3], dir)
      assert.equal(readFileSync(join(dir, 'latest'), 'utf8').trim(), `ckpt-${String(step).padStart(6, '0')}`)
      assert.equal(steps(dir).length, step, 'the step in progress was finished and logged, nothing after it')

      const resumed = await start(['train', '--resume', m[3], '--no-progress', '--json']).exit
      assert.equal(resumed.status, 0, show(resumed))
      assert.equal(JSON.parse(resumed.stdout).startStep, step)
      assertSameCurve(steps(dir), ref, N, `resumed after ${sig}`)
    })
  }

  it('a second SIGINT ends the process at once, even inside a long evaluation; the last complete checkpoint still loads', async () => {
    const dir = join(root, 'twice')
    // Evaluating 4000 windows after every step keeps the process busy (synchronously) for about a second.
    const run = start(['train', '--preset', 'tiny', '--steps', '50', '--eval-every', '1', '--eval-windows', '4000', '--save-every', '1', '--no-progress', '--out', dir])
    await until(() => steps(dir).length >= 2, 'two steps')
    run.child.kill('SIGINT')
    await until(() => /finishing the current step/.test(run.stderr()), 'the first SIGINT to be acknowledged')
    const t0 = Date.now()
    run.child.kill('SIGINT')
    const r = await run.exit
    const ms = Date.now() - t0
    // Either the second signal killed it (the default action, back in place), or the save had just finished.
    if (r.signal === 'SIGINT') assert.ok(ms < 400, `ended ${ms} ms after the second SIGINT`)
    else assert.equal(r.status, 130, show(r))
    const ck = loadCheckpoint(dir, {optimizer: true})
    try {
      assert.ok(ck.manifest.step >= 1)
    } finally {
      dispose(ck)
    }
  })
})

// ---------------------------------------------------------------------------------------------------
// leftovers of killed saves (library level, exact states)

describe('leftovers of a killed save', () => {
  const cfg: ModelConfig = {arch: 'mhc', ...PRESETS.tiny.model}
  const tc: TrainConfig = {...PRESETS.tiny.train, steps: 4, saveEvery: 2, evalEvery: 0, evalWindows: 4}
  let corpus: Corpus
  before(() => {
    corpus = loadCorpus(undefined, 0.1, cfg.seqLen + 1)
  })

  it('stale temp directories and files are removed on the next run; a checkpoint newer than latest does not block resuming', async () => {
    const dir = join(root, 'leftovers')
    await runTraining({model: cfg, train: tc, corpus, outDir: dir, backend: 'wasm'})
    // What kill -9 can leave: a half-written checkpoint dir, a half-written pointer, a torn metrics line, and a whole
    // checkpoint renamed into place before `latest` moved (here: ckpt-000006 while latest says ckpt-000004).
    const dead = 999_999_999 // no such pid
    mkdirSync(join(dir, `ckpt-000006.tmp-${dead}-0123456789ab`))
    writeFileSync(join(dir, `ckpt-000006.tmp-${dead}-0123456789ab`, 'model.safetensors'), 'partial')
    writeFileSync(join(dir, `latest.tmp-${dead}-ba9876543210`), 'ckpt-0000')
    writeFileSync(join(dir, 'someone-elses.tmp-1-0123456789ab'), 'not ours: kept')
    cpSync(join(dir, 'ckpt-000004'), join(dir, 'ckpt-000005'), {recursive: true})
    writeFileSync(join(dir, 'metrics.jsonl'), readFileSync(join(dir, 'metrics.jsonl'), 'utf8') + '{"type":"step","step":5,"lo')

    const ck = loadCheckpoint(dir, {optimizer: true})
    assert.equal(ck.manifest.step, 4, 'latest decides')
    const s = await runTraining({model: cfg, train: {...tc, steps: 6}, corpus, outDir: dir, backend: 'wasm', resume: ck})
    assert.equal(s.steps, 6)
    const names = readdirSync(dir).sort()
    assert.deepEqual(names, ['ckpt-000002', 'ckpt-000004', 'ckpt-000005', 'ckpt-000006', 'latest', 'metrics.jsonl', 'someone-elses.tmp-1-0123456789ab'])
    assert.deepEqual(steps(dir).map((r) => r.step), [1, 2, 3, 4, 5, 6], 'the torn line is gone, steps 5 and 6 logged once')
  })

  it('mhc train --resume RUN_DIR accepts a checkpoint newer than latest (its save was cut off before the pointer moved)', async () => {
    const dir = join(root, 'newer-than-latest')
    await runTraining({model: cfg, train: tc, corpus, outDir: dir, backend: 'wasm'})
    cpSync(join(dir, 'ckpt-000004'), join(dir, 'ckpt-000006'), {recursive: true}) // stands in for a whole, unpointed save
    const r = await start(['train', '--resume', dir, '--steps', '6', '--no-progress']).exit
    assert.equal(r.status, 0, show(r))
    assert.match(r.stderr, /note: ckpt-000006 is newer than .*latest \(a save was interrupted\)/)
    assert.equal(readFileSync(join(dir, 'latest'), 'utf8').trim(), 'ckpt-000006')
    const ck = loadCheckpoint(dir)
    assert.equal(ck.manifest.step, 6)
    dispose(ck)
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

  /** Sets every entry of a parameter (or one row of it) to `v`. */
  function poison(ck: {params: Record<string, tf.Variable>}, name: string, v: number, row?: number): void {
    const p = ck.params[name]
    const data = p.dataSync().slice() as Float32Array
    if (row === undefined) data.fill(v)
    else data.fill(v, row * p.shape[1]!, (row + 1) * p.shape[1]!)
    tf.tidy(() => p.assign(tf.tensor(data, p.shape)))
  }

  /** The initial state of a run, saved as a step-0 checkpoint and loaded back (to be poisoned in memory). */
  let nInitial = 0
  function initialState(cfg: ModelConfig): LoadedCheckpoint {
    const params = initParams(cfg, tc.seed)
    const state = {step: 0, params, opt: initOptimizer(params), dataRng: new Rng(tc.seed + 1)}
    const dir = saveCheckpoint(join(root, `initial-${++nInitial}`), state, cfg, tc, {data: {source: corpus.source, sha256: corpus.sha256, bytes: corpus.bytes}, metrics: {}, backend: 'wasm'})
    for (const g of [state.params, state.opt.m, state.opt.v]) for (const v of Object.values(g)) v.dispose()
    return loadCheckpoint(dir, {optimizer: true})
  }

  for (const arch of ['baseline', 'hc', 'mhc'] as const) {
    it(`${arch}: stop (default) names the step and the layer where it started (forward), saves nothing, logs the event`, async () => {
      const cfg = cfgOf(arch)
      const ck = initialState(cfg)
      poison(ck, 'blocks.0.mlp.proj.weight', 3e38) // the MLP of block 0 (layer 1) overflows
      const dir = join(root, `stop-${arch}`)
      await assert.rejects(runTraining({model: cfg, train: tc, corpus, outDir: dir, backend: 'wasm', resume: ck}), (e: unknown) => {
        assert.ok(e instanceof NonFiniteError, String(e))
        assert.match(e.message, /^non-finite loss at step 1 \(loss NaN, grad norm NaN\), starting in the forward pass at the output of layer 1 \(block 0 MLP\); last checkpoint: \S+ckpt-000000$/)
        assert.equal(e.event?.origin.layer, 1)
        return true
      })
      assert.deepEqual(readdirSync(dir), ['metrics.jsonl'], 'no checkpoint written')
      const ev = records(dir).filter((r) => r.type === 'nonfinite')
      assert.deepEqual(ev.map(({step, layer, pass, action}) => ({step, layer, pass, action})), [{step: 1, layer: 1, pass: 'forward', action: 'stop'}])
      assert.deepEqual(steps(dir).map((s) => [s.step, s.loss, s.nonFinite]), [[1, null, true]])
    })
  }

  it('the backward pass: the deepest layer with non-finite gradients, or the largest gradient when only the norm overflowed', async () => {
    const cfg: ModelConfig = {...cfgOf('mhc'), layers: 2}
    const params = initParams(cfg, 1)
    const {x, y} = sampleBatch(corpus.train, 2, cfg.seqLen, new Rng(3))
    const {grads} = gradients(params, cfg, x, y)
    const bad = {...grads, 'blocks.0.attn.qkv.weight': tf.fill(grads['blocks.0.attn.qkv.weight'].shape, NaN), 'conn.2.phi': tf.fill(grads['conn.2.phi'].shape, Infinity)}
    const huge = {...grads, 'blocks.1.mlp.fc.weight': tf.fill(grads['blocks.1.mlp.fc.weight'].shape, 1e30)}
    const origin = [await locateNonFinite(params, cfg, x, y, bad), await locateNonFinite(params, cfg, x, y, huge)]
    tf.dispose([...Object.values(grads), bad['blocks.0.attn.qkv.weight'], bad['conn.2.phi'], huge['blocks.1.mlp.fc.weight']])
    assert.deepEqual(origin[0], {pass: 'backward', layer: 2, where: 'the gradient of conn.2.phi, layer 2 (block 1 attention)'})
    assert.equal(origin[1].layer, 3)
    assert.match(origin[1].where, /blocks\.1\.mlp\.fc\.weight, layer 3 \(block 1 MLP\) \(all finite, the largest; their global norm overflowed\)/)
    assert.deepEqual(['tok_emb.weight', 'blocks.3.attn.qkv.weight', 'blocks.3.mlp.fc.weight', 'conn.5.phi', 'norm.weight'].map(layerOfParam), [-1, 6, 7, 5, Infinity])
    for (const v of [...Object.values(params), x, y]) v.dispose()
  })

  it('skip: exactly the steps whose batch holds the poisoned byte are skipped (no update, data order kept); the run goes on', async () => {
    const cfg = cfgOf('mhc')
    // A 3e38 embedding row stays finite through every layer, but summing the n streams before the head overflows:
    // only batches containing that byte give a NaN loss. Pick a byte in roughly 10–40% of the batches.
    const counts = new Array(256).fill(0)
    for (const b of corpus.train) counts[b]++
    const batchHits = (b: number) => 1 - (1 - counts[b] / corpus.train.length) ** (tc.batch * cfg.seqLen)
    const byte = counts.map((_, b) => b).find((b) => batchHits(b) > 0.1 && batchHits(b) < 0.4)!
    const K = 16
    // Which of the next K steps see the byte: replay the data order.
    const rng = new Rng(tc.seed + 1)
    const expected: number[] = []
    for (let s = 1; s <= K; s++) {
      const {x, y} = sampleBatch(corpus.train, tc.batch, cfg.seqLen, rng)
      if ((x.dataSync() as Int32Array).includes(byte)) expected.push(s)
      x.dispose()
      y.dispose()
    }
    assert.ok(expected.length >= 1 && expected.length < K, `byte ${byte} is in some but not all batches: ${expected}`)

    const ck = initialState(cfg)
    poison(ck, 'tok_emb.weight', 3e38, byte)
    const dir = join(root, 'skip')
    const s = await runTraining({model: cfg, train: {...tc, steps: K, saveEvery: 0, onNonFinite: 'skip'}, corpus, outDir: dir, backend: 'wasm', resume: ck})
    assert.equal(s.steps, K)
    assert.equal(s.skipped, expected.length)
    const ev = records(dir).filter((r) => r.type === 'nonfinite')
    assert.deepEqual(ev.map((e) => e.step), expected)
    assert.ok(ev.every((e) => e.action === 'skip' && e.pass === 'forward' && /output head/.test(e.where)), JSON.stringify(ev[0]))
    for (const r of steps(dir)) assert.equal(r.nonFinite === true, expected.includes(r.step), `step ${r.step}`)
    assert.ok(steps(dir).filter((r) => !r.nonFinite).every((r) => Number.isFinite(r.loss)))
    // The final checkpoint is finite and loadable (the poisoned row is large but finite).
    const fin = loadCheckpoint(s.checkpoint!, {optimizer: true})
    dispose(fin)
  })

  it('skip stops (exit 3 in the CLI) after --max-nonfinite consecutive skipped steps', async () => {
    const cfg = cfgOf('hc')
    const ck = initialState(cfg)
    poison(ck, 'blocks.0.mlp.proj.weight', 3e38)
    const dir = join(root, 'skip-limit')
    await assert.rejects(runTraining({model: cfg, train: {...tc, steps: 20, onNonFinite: 'skip', maxNonFinite: 3}, corpus, outDir: dir, backend: 'wasm', resume: ck}),
      /^NonFiniteError: non-finite loss at step 4 .*layer 1 \(block 0 MLP\), after 3 consecutive skipped steps \(--max-nonfinite\)/)
    assert.deepEqual(records(dir).filter((r) => r.type === 'nonfinite').map((e) => e.action), ['skip', 'skip', 'skip', 'stop'])
  })

  it('rollback: restores the last good checkpoint (≥ 2 steps back), lowers the lr, drops the abandoned checkpoints, and continues', async () => {
    const cfg = cfgOf('mhc')
    const dir = join(root, 'rollback')
    await runTraining({model: cfg, train: tc, corpus, outDir: dir, backend: 'wasm'}) // ckpt-000002, ckpt-000004
    const ck = loadCheckpoint(dir, {optimizer: true})
    poison(ck, 'blocks.0.mlp.proj.weight', 3e38) // resume in place from a state that fails at step 5
    const train: TrainConfig = {...tc, steps: 8, onNonFinite: 'rollback'}
    const s = await runTraining({model: cfg, train, corpus, outDir: dir, backend: 'wasm', resume: ck})
    assert.equal(s.steps, 8)
    assert.equal(s.rollbacks, 1)
    assert.equal(s.train.lrScale, 0.5)
    const ev = records(dir).filter((r) => r.type === 'nonfinite')
    assert.deepEqual(ev.map(({step, layer, action, restoredStep, lrScale}) => ({step, layer, action, restoredStep, lrScale})),
      [{step: 5, layer: 1, action: 'rollback', restoredStep: 2, lrScale: 0.5}])
    const got = steps(dir)
    assert.deepEqual(got.map((r) => r.step), [1, 2, 3, 4, 5, 6, 7, 8], 'the undone steps 3–5 were replaced')
    assert.equal(got[2].lr, lrAt(2, tc) * 0.5)
    const last = loadCheckpoint(dir)
    assert.equal(last.manifest.step, 8)
    assert.equal(last.manifest.train.lrScale, 0.5, 'checkpoints carry the lowered lr, so a resume keeps it')
    dispose(last)

    // Same as resuming the restored checkpoint with the lr halved.
    const from2 = loadCheckpoint(join(dir, 'ckpt-000002'), {optimizer: true})
    const refDir = join(root, 'rollback-ref')
    await runTraining({model: cfg, train: {...train, lrScale: 0.5}, corpus, outDir: refDir, backend: 'wasm', resume: from2})
    const ref = steps(refDir)
    for (const r of got.slice(2)) assert.equal(r.loss, ref.find((x) => x.step === r.step)!.loss, `step ${r.step}`)
  })

  it('rollback with no checkpoint far enough back restarts from the initial state, and stops after --max-nonfinite rollbacks', async () => {
    const cfg = cfgOf('baseline')
    const ck = initialState(cfg)
    poison(ck, 'blocks.0.mlp.proj.weight', 3e38) // poisoned from step 0: the initial state itself is fine
    const dir = join(root, 'rollback-initial')
    const s = await runTraining({model: cfg, train: {...tc, steps: 3, saveEvery: 0, onNonFinite: 'rollback', rollbackLrFactor: 0.25}, corpus, outDir: dir, backend: 'wasm', resume: ck})
    assert.equal(s.rollbacks, 1)
    assert.equal(s.train.lrScale, 0.25)
    assert.deepEqual(steps(dir).map((r) => r.step), [1, 2, 3])

    const ck2 = initialState(cfg)
    poison(ck2, 'blocks.0.mlp.proj.weight', 3e38)
    // A nonsense lr that diverges at once and again after each restart.
    await assert.rejects(runTraining({model: cfg, train: {...tc, lr: 1e30, warmup: 0, gradClip: 0, steps: 10, onNonFinite: 'rollback', maxNonFinite: 2}, corpus, outDir: join(root, 'rollback-limit'), backend: 'wasm', resume: ck2}),
      /after 2 rollbacks \(--max-nonfinite\)/)
  })
})

// ---------------------------------------------------------------------------------------------------
// input checks before work (CLI)

describe('new flags and output paths are checked before any work', {concurrency: 2}, () => {
  const cases: [string, string[], RegExp][] = [
    ['--on-nonfinite bogus', ['train', '--preset', 'tiny', '--on-nonfinite', 'bogus'], /^Error: Expected --on-nonfinite=bogus to be one of: stop, skip, rollback$/],
    ['--rollback-lr-factor without rollback', ['train', '--preset', 'tiny', '--rollback-lr-factor', '0.3'], /^Error: --rollback-lr-factor only applies with --on-nonfinite rollback$/],
    ['--rollback-lr-factor 1', ['train', '--preset', 'tiny', '--on-nonfinite', 'rollback', '--rollback-lr-factor', '1'], /^Error: Parsing --rollback-lr-factor: Expected a number in \(0, 1\), got 1$/],
    ['--max-nonfinite with stop', ['train', '--preset', 'tiny', '--max-nonfinite', '3'], /^Error: --max-nonfinite only applies with --on-nonfinite skip or rollback$/],
    ['--out under a regular file', ['train', '--preset', 'tiny', '--out', 'package.json/run'], /^Error: --out package\.json\/run: .*package\.json is not a directory$/],
    ['analyze-gain --csv into a missing directory', ['analyze-gain', 'fixtures/mhc', '--csv', 'no/such/dir/gains.csv'], /^Error: --csv no\/such\/dir\/gains\.csv: directory no\/such\/dir does not exist$/],
    ['analyze-gain --chart that is a directory', ['analyze-gain', 'fixtures/mhc', '--chart', 'test'], /^Error: --chart test is a directory$/],
    ['analyze-gain --heatmap-layers with an empty entry', ['analyze-gain', 'fixtures/mhc', '--heatmap-layers', '0,,1'], /^Error: --heatmap-layers expects comma-separated layer indices/],
  ]
  for (const [name, args, pattern] of cases) {
    it(name, async () => {
      const r = await start(args).exit
      assert.equal(r.status, 2, show(r))
      const lines = r.stderr.trim().split('\n')
      assert.equal(lines.length, 1, `one line only, no backend line: the check came first\n${show(r)}`)
      assert.match(lines[0], pattern)
    })
  }
})
