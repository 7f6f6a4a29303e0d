// End-to-end tests of `mhc train` and `mhc eval`. The CLI is spawned (test/helpers.ts runCli) rather than run
// in-process: @oclif/test's output capture breaks node:test's child-process protocol, and only a real process shows
// the real exit code (see ../shared/reference/ecosystem.md §1.6).
import assert from 'node:assert/strict'
import {createHash} from 'node:crypto'
import {cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'

import {CliResult, repo, runCli} from '../helpers.js'

/** Runs `bin/dev.js ...args` in the repo root. Async, so independent CLI runs can overlap. */
const cli = (args: string[], env: Record<string, string | undefined> = {}) => runCli(args, {env})

const show = (r: CliResult) =>
  `exit ${r.status}\n--- stdout:\n${r.stdout.slice(0, 2000)}\n--- stderr:\n${r.stderr.slice(0, 2000)}`

const TINY = ['--preset', 'tiny', '--no-progress']

let root: string
let counter = 0
/** A fresh path under this file's temp root (not created). */
const tmpPath = (name: string) => join(root, `${name}-${++counter}`)

const sha256File = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex')

/** sha256 of every file under `dir`, keyed by relative path. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const e of readdirSync(dir, {recursive: true, withFileTypes: true})) {
    if (!e.isFile()) continue
    const full = join(e.parentPath ?? (e as any).path, e.name)
    out[full.slice(dir.length + 1)] = sha256File(full)
  }

  return out
}

interface StepRecord {
  type: 'step'
  step: number
  loss: number
  gradNorm: number
  lr: number
  tokensPerSec: number
  clipped: boolean
}
interface EvalRecord {
  type: 'eval'
  step: number
  valLoss: number
}
function readMetrics(dir: string): {steps: StepRecord[]; evals: EvalRecord[]} {
  const recs = readFileSync(join(dir, 'metrics.jsonl'), 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l))
  return {steps: recs.filter((r) => r.type === 'step'), evals: recs.filter((r) => r.type === 'eval')}
}

/**
 * Bad input: exit 2 and one `Error: …` line on stderr, no stack trace. The only other stderr line allowed is the
 * informational `backend: …` line that train/eval print as soon as the backend is chosen (before some checks run).
 */
function assertUsageError(r: CliResult, pattern: RegExp): void {
  assert.equal(r.status, 2, show(r))
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '')
  const errors = lines.filter((l) => l.startsWith('Error:'))
  assert.equal(errors.length, 1, `exactly one Error: line\n${show(r)}`)
  assert.match(errors[0], pattern)
  assert.equal(lines.at(-1), errors[0], 'the error is the last thing printed')
  const others = lines.filter((l) => !l.startsWith('Error:'))
  assert.ok(
    others.every((l) => l.startsWith('backend: ')),
    `unexpected stderr lines:\n${others.join('\n')}`,
  )
  assert.ok(!/^\s+at\s/m.test(r.stderr), `no stack trace\n${show(r)}`)
  assert.equal(r.stdout.trim(), '', 'nothing on stdout')
}

// Run A: the reference tiny mhc run (6 steps, a checkpoint every 3). Several tests read it; none writes it.
interface TrainJson {
  arch: string
  steps: number
  startStep: number
  valLoss: number
  trainLoss: number
  checkpoint: string
  outDir: string
  params: number
  evals: {step: number; valLoss: number}[]
}
let runA: Promise<{dir: string; r: CliResult; json: TrainJson}> | undefined
function trainA() {
  runA ??= (async () => {
    const dir = tmpPath('A')
    // Without --no-progress: under --json the progress bar stays off by itself.
    const r = await cli([
      'train',
      '--preset',
      'tiny',
      '--steps',
      '6',
      '--save-every',
      '3',
      '--eval-windows',
      '8',
      '--out',
      dir,
      '--json',
    ])
    assert.equal(r.status, 0, show(r))
    return {dir, r, json: JSON.parse(r.stdout) as TrainJson}
  })()
  return runA
}

before(() => {
  root = mkdtempSync(join(tmpdir(), 'mhc-'))
})
after(() => {
  if (root) rmSync(root, {recursive: true, force: true})
})

describe('mhc train / eval', {concurrency: 2}, () => {
  it('train --json: exit 0, JSON summary, checkpoint on disk, metrics.jsonl with one record per step', async () => {
    const {dir, r, json} = await trainA()
    assert.equal(json.arch, 'mhc')
    assert.equal(json.steps, 6)
    assert.equal(json.startStep, 0)
    assert.ok(Number.isFinite(json.valLoss) && json.valLoss > 0 && json.valLoss < 10, `valLoss ${json.valLoss}`)
    assert.ok(Number.isFinite(json.trainLoss))
    assert.equal(json.checkpoint, join(dir, 'ckpt-000006'))
    assert.ok(existsSync(join(json.checkpoint, 'manifest.json')), 'checkpoint exists')
    assert.ok(existsSync(join(dir, 'ckpt-000003', 'manifest.json')), '--save-every 3 wrote step 3')
    assert.equal(readFileSync(join(dir, 'latest'), 'utf8').trim(), 'ckpt-000006')
    assert.equal(r.stderr.trim(), '', '--json: nothing on stderr, no progress bar')

    const {steps, evals} = readMetrics(dir)
    assert.deepEqual(
      steps.map((s) => s.step),
      [1, 2, 3, 4, 5, 6],
    )
    for (const s of steps) {
      assert.ok(Number.isFinite(s.loss) && s.loss > 0, `loss at step ${s.step}`)
      assert.ok(Number.isFinite(s.gradNorm) && s.gradNorm > 0, `gradNorm at step ${s.step}`)
      assert.ok(Number.isFinite(s.lr) && s.lr > 0, `lr at step ${s.step}`)
      assert.ok(Number.isFinite(s.tokensPerSec) && s.tokensPerSec > 0, `tokensPerSec at step ${s.step}`)
    }

    assert.equal(steps.at(-1)!.loss, json.trainLoss)
    assert.ok(evals.length > 0)
    assert.equal(evals.at(-1)!.step, 6)
    assert.equal(evals.at(-1)!.valLoss, json.valLoss)
    assert.deepEqual(
      json.evals,
      evals.map(({step, valLoss}) => ({step, valLoss})),
    )
  })

  it('each arch (baseline, hc, mhc) trains a few tiny steps and exits 0', async () => {
    const params: number[] = []
    for (const arch of ['baseline', 'hc', 'mhc']) {
      const dir = tmpPath(arch)
      const r = await cli([
        'train',
        ...TINY,
        '--arch',
        arch,
        '--steps',
        '3',
        '--eval-windows',
        '4',
        '--out',
        dir,
        '--json',
      ])
      assert.equal(r.status, 0, `${arch}: ${show(r)}`)
      const json = JSON.parse(r.stdout) as TrainJson
      assert.equal(json.arch, arch)
      assert.equal(json.steps, 3)
      assert.ok(Number.isFinite(json.trainLoss) && Number.isFinite(json.valLoss), `${arch} losses finite`)
      const manifest = JSON.parse(readFileSync(join(dir, 'ckpt-000003', 'manifest.json'), 'utf8'))
      assert.equal(manifest.arch, arch)
      assert.equal(readMetrics(dir).steps.length, 3)
      params.push(json.params)
    }

    assert.equal(new Set(params).size, 3, `the three archs have different parameter counts: ${params}`)
    assert.ok(params[0] < params[1] && params[0] < params[2], 'baseline has no connection parameters')
  })

  it('resume from step 3 into another dir reproduces steps 4..6 of the uninterrupted run exactly', async () => {
    const {dir: a, json: jsonA} = await trainA()
    const before = snapshot(a)
    const c = tmpPath('C')
    const r = await cli(['train', '--no-progress', '--resume', join(a, 'ckpt-000003'), '--out', c, '--json'])
    assert.equal(r.status, 0, show(r))
    const json = JSON.parse(r.stdout) as TrainJson
    assert.equal(json.startStep, 3)
    assert.equal(json.steps, 6)
    assert.equal(json.outDir, c)

    const stepsA = readMetrics(a).steps.filter((s) => s.step > 3)
    const stepsC = readMetrics(c).steps
    assert.deepEqual(
      stepsC.map((s) => s.step),
      [4, 5, 6],
      'the resumed run logs only its own steps',
    )
    for (let i = 0; i < 3; i++) {
      assert.ok(
        Math.abs(stepsC[i].loss - stepsA[i].loss) <= 1e-5,
        `step ${stepsC[i].step}: loss ${stepsC[i].loss} vs ${stepsA[i].loss}`,
      )
      assert.ok(Math.abs(stepsC[i].gradNorm - stepsA[i].gradNorm) <= 1e-5, `step ${stepsC[i].step}: gradNorm`)
      assert.equal(stepsC[i].lr, stepsA[i].lr, `step ${stepsC[i].step}: lr (schedule uses the same total steps)`)
    }

    assert.ok(Math.abs(json.valLoss - jsonA.valLoss) <= 1e-5)
    // Same data order, same optimiser state: the final weights are bit-identical.
    for (const f of ['model.safetensors', 'optimizer.safetensors']) {
      assert.equal(sha256File(join(c, 'ckpt-000006', f)), sha256File(join(a, 'ckpt-000006', f)), f)
    }

    assert.deepEqual(snapshot(a), before, 'resuming with --out elsewhere leaves the source run untouched')
  })

  it('eval DIR --json prints the validation loss the training run reported', async () => {
    const {dir, json: trained} = await trainA()
    const r = await cli(['eval', dir, '--json'])
    assert.equal(r.status, 0, show(r))
    const json = JSON.parse(r.stdout)
    assert.equal(json.checkpoint, join(dir, 'ckpt-000006'))
    assert.equal(json.step, 6)
    assert.equal(json.arch, 'mhc')
    assert.equal(json.windows, 8)
    assert.ok(Math.abs(json.valLoss - trained.valLoss) <= 1e-6, `eval ${json.valLoss} vs train ${trained.valLoss}`)
    assert.ok(Math.abs(json.bitsPerByte - json.valLoss / Math.LN2) <= 1e-9)
  })

  it('a diverging run (huge lr, no clipping) stops with exit 3 naming the step', async () => {
    const out = tmpPath('diverge')
    const r = await cli([
      'train',
      ...TINY,
      '--arch',
      'hc',
      '--layers',
      '8',
      '--lr',
      '9.9',
      '--warmup',
      '0',
      '--grad-clip',
      '0',
      '--steps',
      '30',
      '--out',
      out,
    ])
    assert.equal(r.status, 3, show(r))
    assert.match(r.stderr.trim().split('\n').pop()!, /^Error: non-finite (loss|gradient norm) at step \d+/)
  })

  it('--backend auto without tfjs-node falls back to wasm and says why', async () => {
    const r = await cli([
      'train',
      ...TINY,
      '--steps',
      '1',
      '--eval-windows',
      '2',
      '--backend',
      'auto',
      '--out',
      tmpPath('auto'),
    ])
    assert.equal(r.status, 0, show(r))
    assert.match(r.stderr, /^backend: wasm \(auto\)/m)
    assert.match(r.stderr, /tensorflow unavailable: disabled by MHC_NO_TFJS_NODE=1/)
  })

  it('--backend tensorflow when it cannot load: non-zero exit, one-line error, nothing trained', async () => {
    const out = tmpPath('tf')
    const r = await cli(['train', ...TINY, '--steps', '1', '--backend', 'tensorflow', '--out', out])
    assert.notEqual(r.status, 0, show(r))
    assert.ok(r.status !== null)
    const lines = r.stderr.split('\n').filter((l) => l.trim())
    assert.equal(lines.length, 1, show(r))
    assert.match(
      lines[0],
      /^Error: no usable backend for --backend tensorflow \(tensorflow: disabled by MHC_NO_TFJS_NODE=1\); without a flag \(auto\) the best backend this machine has is used$/,
    )
    assert.ok(!existsSync(out))
  })

  const tfjsNodeInstalled = existsSync(join(repo, 'node_modules', '@tensorflow', 'tfjs-node-gpu'))
  it(
    '--backend tensorflow with the package really absent: non-zero exit, one-line error',
    {skip: tfjsNodeInstalled && 'tfjs-node-gpu is installed here'},
    async () => {
      const r = await cli(['train', ...TINY, '--steps', '1', '--backend', 'tensorflow', '--out', tmpPath('tf2')], {
        MHC_NO_TFJS_NODE: undefined,
      })
      assert.notEqual(r.status, 0, show(r))
      const lines = r.stderr.split('\n').filter((l) => l.trim())
      assert.equal(lines.length, 1, show(r))
      assert.match(lines[0], /^Error: no usable backend for --backend tensorflow \(tensorflow: .*tfjs-node-gpu/)
    },
  )
})

describe('bad input: exit 2, one Error: line, no stack trace', {concurrency: 2}, () => {
  const flagCases: [string, string[], RegExp][] = [
    ['--arch foo', ['--arch', 'foo'], /^Error: Expected --arch=foo to be one of: baseline, hc, mhc$/],
    ['--lr=-1', ['--lr=-1'], /^Error: Parsing --lr: Expected a number in \(0, 10\), got -1$/],
    ['--steps abc', ['--steps', 'abc'], /^Error: Parsing --steps: Expected an integer but received: abc$/],
    ['unknown flag', ['--bogus-flag'], /^Error: Nonexistent flag: --bogus-flag$/],
  ]
  for (const [name, args, pattern] of flagCases) {
    it(`train ${name}`, async () => {
      const out = tmpPath('flag')
      // --steps only once (oclif rejects a repeated flag before it parses the value).
      const steps = args.some((a) => a.startsWith('--steps')) ? [] : ['--steps', '2']
      const r = await cli(['train', ...TINY, ...steps, '--out', out, ...args])
      assertUsageError(r, pattern)
      assert.ok(!existsSync(out), 'nothing written')
    })
  }

  it('train --heads 3 with the default d-model 128', async () => {
    const out = tmpPath('heads')
    const r = await cli(['train', '--no-progress', '--heads', '3', '--steps', '1', '--out', out])
    assertUsageError(r, /^Error: --d-model 128 must be divisible by --heads 3$/)
    assert.ok(!existsSync(out))
  })

  it('train --resume of a path that does not exist', async () => {
    const missing = tmpPath('nonexistent')
    const r = await cli(['train', '--no-progress', '--resume', missing])
    assertUsageError(r, new RegExp(`^Error: ${missing}: no such checkpoint or run directory$`))
  })

  it('eval of a checkpoint whose model.safetensors has one flipped byte', async () => {
    const {dir} = await trainA()
    const bad = tmpPath('corrupt')
    cpSync(join(dir, 'ckpt-000006'), bad, {recursive: true})
    const p = join(bad, 'model.safetensors')
    const b = readFileSync(p)
    b[b.length - 7] ^= 0x10
    writeFileSync(p, b)
    assertUsageError(await cli(['eval', bad]), /^Error: .*model\.safetensors is corrupt \(checksum mismatch\)$/)
  })

  it('eval of a file that is not a directory', async () => {
    const f = tmpPath('file.txt')
    writeFileSync(f, 'not a checkpoint\n')
    assertUsageError(await cli(['eval', f]), /^Error: .*file\.txt-\d+: not a directory/)
  })

  it('train --data pointing at a missing file', async () => {
    const out = tmpPath('data-missing-out')
    const r = await cli(['train', ...TINY, '--steps', '1', '--data', tmpPath('missing.txt'), '--out', out])
    assertUsageError(r, /^Error: .*missing\.txt-\d+: no such file$/)
    assert.ok(!existsSync(out))
  })

  it('train --data pointing at a binary (invalid UTF-8) file', async () => {
    const bin = tmpPath('binary.dat')
    writeFileSync(bin, Buffer.concat([Buffer.from([0xff, 0xfe, 0x00, 0xc3, 0x28]), Buffer.alloc(4096, 0x80)]))
    const out = tmpPath('data-binary-out')
    const r = await cli(['train', ...TINY, '--steps', '1', '--data', bin, '--out', out])
    assertUsageError(r, /^Error: .*binary\.dat-\d+: not valid UTF-8 text$/)
    assert.ok(!existsSync(out))
  })

  it('train into an --out that already holds a run', async () => {
    const {dir} = await trainA()
    const r = await cli(['train', ...TINY, '--steps', '2', '--out', dir])
    assertUsageError(r, new RegExp(`^Error: ${dir} already holds a run; continue it with --resume`))
  })

  it('train --out pointing at a regular file', async () => {
    const f = tmpPath('out-file')
    writeFileSync(f, 'keep me\n')
    const r = await cli(['train', ...TINY, '--steps', '1', '--out', f])
    assert.equal(readFileSync(f, 'utf8'), 'keep me\n')
    assertUsageError(r, /^Error: .*out-file-\d+/)
  })

  it('train --resume CKPT --out DIR, where DIR holds a different run, refuses and leaves DIR intact', async () => {
    const {dir: a} = await trainA()
    const other = tmpPath('other-run')
    const t = await cli([
      'train',
      ...TINY,
      '--arch',
      'hc',
      '--steps',
      '6',
      '--save-every',
      '3',
      '--eval-windows',
      '4',
      '--out',
      other,
    ])
    assert.equal(t.status, 0, show(t))
    const before = snapshot(other)
    const r = await cli(['train', '--no-progress', '--resume', join(a, 'ckpt-000003'), '--out', other])
    assert.deepEqual(snapshot(other), before, 'the other run was modified')
    assertUsageError(r, /already holds another run/)
  })

  it('train --resume from an older checkpoint inside its own run refuses and changes nothing', async () => {
    const {dir: a} = await trainA()
    const before = snapshot(a)
    const r = await cli(['train', '--no-progress', '--resume', join(a, 'ckpt-000003')])
    assertUsageError(r, /already has later checkpoints \(ckpt-000006\).*pass an empty --out/)
    assert.deepEqual(snapshot(a), before)
  })

  it('train --resume with --steps behind the checkpoint refuses; --steps equal to it only evaluates and writes nothing', async () => {
    const {dir: a, json} = await trainA()
    assertUsageError(
      await cli(['train', '--no-progress', '--resume', a, '--steps', '4']),
      /--steps 4 is behind the checkpoint \(step 6\)/,
    )
    const before = snapshot(a)
    const r = await cli(['train', '--no-progress', '--resume', a, '--steps', '6', '--json'])
    assert.equal(r.status, 0, show(r))
    const out = JSON.parse(r.stdout)
    assert.equal(out.evaluateOnly, true)
    assert.ok(Math.abs(out.valLoss - json.valLoss) < 1e-9)
    assert.deepEqual(snapshot(a), before, 'evaluating wrote nothing')
  })

  it('--json: a flag error is exit 2 with {error: {message, exit: 2}} on stdout', async () => {
    const r = await cli(['train', ...TINY, '--arch', 'foo', '--json'])
    assert.equal(r.status, 2, show(r))
    const json = JSON.parse(r.stdout)
    assert.equal(json.error.exit, 2)
    assert.match(json.error.message, /Expected --arch=foo to be one of: baseline, hc, mhc/)
    assert.ok(!/\n/.test(json.error.message))
    assert.ok(!/^Error:/m.test(r.stderr), `no human-readable error under --json\n${show(r)}`)
  })

  it('--json: a corrupt checkpoint in eval is exit 2 with {error: {message, exit: 2}} on stdout', async () => {
    const {dir} = await trainA()
    const bad = tmpPath('corrupt-json')
    cpSync(join(dir, 'ckpt-000006'), bad, {recursive: true})
    const p = join(bad, 'model.safetensors')
    const b = readFileSync(p)
    b[b.length - 1] ^= 0x01
    writeFileSync(p, b)
    const r = await cli(['eval', bad, '--json'])
    assert.equal(r.status, 2, show(r))
    const json = JSON.parse(r.stdout)
    assert.deepEqual(
      {exit: json.error.exit, message: json.error.message},
      {exit: 2, message: `${bad}: model.safetensors is corrupt (checksum mismatch)`},
    )
  })

  it('a failed train --out into an existing run changes none of its files', async () => {
    const {dir} = await trainA()
    const before = snapshot(dir)
    assert.ok(Object.keys(before).length >= 8, `snapshot covers the run: ${Object.keys(before)}`)
    for (const args of [
      ['--steps', '2'],
      ['--arch', 'hc', '--steps', '9', '--save-every', '1'],
      ['--steps', '2', '--json'],
    ]) {
      const r = await cli(['train', ...TINY, '--out', dir, ...args])
      assert.equal(r.status, 2, show(r))
      assert.deepEqual(snapshot(dir), before, `files changed after train ${args.join(' ')}`)
    }

    assert.deepEqual(
      readdirSync(dir)
        .map((f) => (f.startsWith('events.out.tfevents.') ? 'events (TensorBoard)' : f))
        .sort(),
      ['ckpt-000003', 'ckpt-000006', 'events (TensorBoard)', 'latest', 'metrics.jsonl'],
    )
  })
})
