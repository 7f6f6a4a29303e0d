// Reliability of the CLI: kill -9 at random moments (mid-save included), SIGINT/SIGTERM, resuming past an unpointed
// checkpoint, and input checks before work. (Non-finite steps and stale temps at library level:
// test/model/train/nonfinite.test.ts.)
import assert from 'node:assert/strict'
import {cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, watch} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'

import {ModelConfig, PRESETS, TrainConfig} from '../../src/model/config.js'
import {loadCorpus} from '../../src/model/io/data.js'
import {Rng} from '../../src/model/rng.js'
import {readCheckpoint as loadCheckpoint} from '../../src/model/train/run-dir.js'
import {CliResult, startCli} from '../helpers.js'
import {train as runTraining, useWasm} from '../model/helpers.js'

// ---------------------------------------------------------------------------------------------------
// helpers

type Exit = CliResult

/** Spawns `bin/dev.js ...args` (the node process itself, so a signal reaches the CLI, not a wrapper). */
function start(args: string[]) {
  const r = startCli(args)
  return {child: r.child, exit: r.done, stderr: r.stderr}
}

const show = (r: Exit) =>
  `exit ${r.status} signal ${r.signal}\n--- stdout:\n${r.stdout.slice(-1500)}\n--- stderr:\n${r.stderr.slice(-1500)}`

/** Deterministic uniform draws from the project's seeded PRNG: the kill schedule is the same on every run of the suite.. */
const mulberry32 = (seed: number) => {
  const r = new Rng(seed)
  return () => r.uniform()
}

interface StepRec {
  step: number
  loss: number | null
  lr: number
  nonFinite?: boolean
}
function records(dir: string): any[] {
  const p = join(dir, 'metrics.jsonl')
  if (!existsSync(p)) return []
  return readFileSync(p, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .flatMap((l) => {
      try {
        return [JSON.parse(l)]
      } catch {
        return [] // a torn last line of a killed run
      }
    })
}

const steps = (dir: string): StepRec[] => records(dir).filter((r) => r.type === 'step')

const sleep = (ms: number) =>
  new Promise((r) => {
    setTimeout(r, ms)
  })
async function until(cond: () => boolean, what: string, ms = 60_000): Promise<void> {
  const t0 = Date.now()
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}

/** Every step 1..n logged exactly once, with the reference run's loss. */
function assertSameCurve(got: StepRec[], ref: StepRec[], n: number, what: string): void {
  assert.deepEqual(
    got.map((s) => s.step),
    Array.from({length: n}, (_, i) => i + 1),
    `${what}: one record per step`,
  )
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
  await useWasm()
})
after(() => {
  if (root) rmSync(root, {recursive: true, force: true})
})

// ---------------------------------------------------------------------------------------------------
// kill -9, SIGINT, SIGTERM (CLI)

describe('interrupting mhc train', {concurrency: 2}, () => {
  it('SIGKILL at random moments, mid-save included: the latest checkpoint always loads and resuming gives the same curve', async () => {
    const ref = await referenceCurve()
    const rand = mulberry32(20_260_507)
    const dir = join(root, 'killed')
    const KILLS = 20
    const tally = {
      runs: 0,
      kills: 0,
      midSave: 0,
      midCheckpoint: 0,
      beforePointer: 0,
      midPointer: 0,
      noCheckpointYet: 0,
      finished: 0,
    }
    for (let i = 0; tally.kills < KILLS && i < 40; i++) {
      tally.runs++
      const hasCheckpoint = existsSync(dir) && readdirSync(dir).some((f) => /^ckpt-\d+$/.test(f))
      if (!hasCheckpoint) rmSync(dir, {recursive: true, force: true}) // killed before its first checkpoint: start again
      const run = start(
        hasCheckpoint
          ? ['train', '--resume', dir, '--no-progress']
          : ['train', ...FLAGS, '--save-every', '1', '--out', dir],
      )
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
      if (r.status === 0) {
        // it finished before the kill came: the whole curve must be the reference one
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

      if (latest)
        assert.ok(committed.includes(latest), `latest names ${latest}, which is not a complete checkpoint (${names})`)
      // The checkpoint the next run resumes from loads (checksums, shapes, finiteness) and lies on the reference curve.
      const ck = loadCheckpoint(dir, {optimizer: true})
      assert.equal(ck.dir, join(dir, latest ?? committed.at(-1)!))
      const {step} = ck.manifest
      assert.ok(
        Math.abs(ck.manifest.metrics.trainLoss! - ref[step - 1].loss!) <= 1e-5,
        `checkpoint at step ${step}: loss ${ck.manifest.metrics.trainLoss} vs ${ref[step - 1].loss}`,
      )
    }

    // Finish the run and compare the whole curve.
    if (existsSync(dir) && readdirSync(dir).some((f) => /^ckpt-\d+$/.test(f))) {
      const r = await start(['train', '--resume', dir, '--no-progress']).exit
      assert.equal(r.status, 0, show(r))
      assertSameCurve(steps(dir), ref, N, 'after the kills')
      assert.ok(
        !readdirSync(dir).some((f) => /\.tmp-/.test(f)),
        'the resumed run removed the stale temp files of killed saves',
      )
      assert.equal(readFileSync(join(dir, 'latest'), 'utf8').trim(), `ckpt-${String(N).padStart(6, '0')}`)
    }

    console.log(`# kill -9: ${JSON.stringify(tally)}`)
    assert.ok(tally.kills >= 12, `most runs were killed: ${JSON.stringify(tally)}`)
    assert.ok(tally.midSave >= 3, `several kills landed mid-save: ${JSON.stringify(tally)}`)
  })

  for (const [sig, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const) {
    it(`${sig}: finishes the step, saves, exits ${code} saying how to resume; the resumed run gives the uninterrupted curve`, async () => {
      const ref = await referenceCurve()
      const dir = join(root, sig)
      const run = start(['train', ...FLAGS, '--save-every', '0', '--out', dir])
      await until(() => steps(dir).length >= 5, 'five steps')
      run.child.kill(sig)
      const r = await run.exit
      assert.equal(r.status, code, show(r))
      const lines = r.stderr.trim().split('\n')
      const m = /^interrupted at step (\d+); checkpoint (\S+); resume with: mhc train --resume (\S+)$/.exec(
        lines.at(-1)!,
      )
      assert.ok(m, `last stderr line says how to resume\n${show(r)}`)
      assert.ok(
        lines.some((l) => l.startsWith(`${sig}: finishing the current step`)),
        show(r),
      )
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
    const run = start([
      'train',
      '--preset',
      'tiny',
      '--steps',
      '50',
      '--eval-every',
      '1',
      '--eval-windows',
      '4000',
      '--save-every',
      '1',
      '--no-progress',
      '--out',
      dir,
    ])
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
    assert.ok(loadCheckpoint(dir, {optimizer: true}).manifest.step >= 1)
  })
})

describe('resuming past a checkpoint that latest does not name', () => {
  const cfg: ModelConfig = {arch: 'mhc', ...PRESETS.tiny.model}
  const tc: TrainConfig = {...PRESETS.tiny.train, steps: 4, saveEvery: 2, evalEvery: 0, evalWindows: 4}
  it('mhc train --resume RUN_DIR accepts a checkpoint newer than latest (its save was cut off before the pointer moved)', async () => {
    const dir = join(root, 'newer-than-latest')
    await runTraining({model: cfg, train: tc, corpus: loadCorpus(undefined, 0.1, cfg.seqLen + 1), outDir: dir})
    cpSync(join(dir, 'ckpt-000004'), join(dir, 'ckpt-000006'), {recursive: true}) // stands in for a whole, unpointed save
    const r = await start(['train', '--resume', dir, '--steps', '6', '--no-progress']).exit
    assert.equal(r.status, 0, show(r))
    assert.match(r.stderr, /note: ckpt-000006 is newer than .*latest \(a save was interrupted\)/)
    assert.equal(readFileSync(join(dir, 'latest'), 'utf8').trim(), 'ckpt-000006')
    assert.equal(loadCheckpoint(dir).manifest.step, 6)
  })
})

// ---------------------------------------------------------------------------------------------------
// input checks before work (CLI)

describe('new flags and output paths are checked before any work', {concurrency: 2}, () => {
  const cases: [string, string[], RegExp][] = [
    [
      '--on-nonfinite bogus',
      ['train', '--preset', 'tiny', '--on-nonfinite', 'bogus'],
      /^Error: Expected --on-nonfinite=bogus to be one of: stop, skip, rollback$/,
    ],
    [
      '--rollback-lr-factor without rollback',
      ['train', '--preset', 'tiny', '--rollback-lr-factor', '0.3'],
      /^Error: --rollback-lr-factor only applies with --on-nonfinite rollback$/,
    ],
    [
      '--rollback-lr-factor 1',
      ['train', '--preset', 'tiny', '--on-nonfinite', 'rollback', '--rollback-lr-factor', '1'],
      /^Error: Parsing --rollback-lr-factor: Expected a number in \(0, 1\), got 1$/,
    ],
    [
      '--max-nonfinite with stop',
      ['train', '--preset', 'tiny', '--max-nonfinite', '3'],
      /^Error: --max-nonfinite only applies with --on-nonfinite skip or rollback$/,
    ],
    [
      '--out under a regular file',
      ['train', '--preset', 'tiny', '--out', 'package.json/run'],
      /^Error: --out package\.json\/run: .*package\.json is not a directory$/,
    ],
    [
      'analyze-gain --csv into a missing directory',
      ['analyze-gain', 'fixtures/mhc', '--csv', 'no/such/dir/gains.csv'],
      /^Error: --csv no\/such\/dir\/gains\.csv: directory no\/such\/dir does not exist$/,
    ],
    [
      'analyze-gain --chart that is a directory',
      ['analyze-gain', 'fixtures/mhc', '--chart', 'test'],
      /^Error: --chart test is a directory$/,
    ],
    [
      'profile-time --chart naming a directory path',
      ['profile-time', '--chart', 'nowhere.svg/'],
      /^Error: --chart nowhere\.svg\/ is a directory$/,
    ],
    [
      'analyze-gain --csv naming a directory path',
      ['analyze-gain', 'fixtures/mhc', '--csv', 'nodir/'],
      /^Error: --csv nodir\/ is a directory$/,
    ],
    [
      'analyze-gain --heatmap-layers with an empty entry',
      ['analyze-gain', 'fixtures/mhc', '--heatmap-layers', '0,,1'],
      /^Error: --heatmap-layers expects comma-separated layer indices/,
    ],
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
