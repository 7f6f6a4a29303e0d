// mhc train's settings as a researcher keeps them: --config files (precedence, strictness, a manifest reused),
// --print-config round trips, --dry-run writes nothing, presets in --help; checkpoints as users manage them
// (--keep-last, --keep-best, --init-from) and the mhc version and commit in every manifest.
import assert from 'node:assert/strict'
import {execFileSync, spawnSync} from 'node:child_process'
import {existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'

import {configFromPreset, PRESETS} from '../../src/model/config.js'
import {readCheckpointDir} from '../../src/model/io/checkpoint.js'
import {initParamData, parameterCount} from '../../src/model/params.js'
import {EMPTY_CONFIG, repo, runCli, showRun} from '../helpers.js'

let root = ''
before(() => {
  root = mkdtempSync(join(tmpdir(), 'mhc-config-'))
})
after(() => rmSync(root, {recursive: true, force: true}))
let counter = 0
const path = (name: string) => join(root, `${++counter}-${name}`)
const file = (name: string, text: string) => {
  const p = path(name)
  writeFileSync(p, text)
  return p
}

const without = (o: object, key: string) => Object.fromEntries(Object.entries(o).filter(([k]) => k !== key))
const errorLine = (stderr: string) => stderr.split('\n').find((l) => l.startsWith('Error:')) ?? ''

describe('--config, --print-config, --dry-run', {concurrency: 2}, () => {
  it('precedence is preset < file < flags, and --print-config is what a run would use', async () => {
    const config = file('c.yaml', 'preset: tiny\narch: hc\nlr: 0.004\nsteps: 12\nmodel:\n  dModel: 64\n')
    const r = await runCli(['train', '--config', config, '--lr', '0.005', '--print-config', '--json'])
    assert.equal(r.status, 0, showRun(r))
    const doc = JSON.parse(r.stdout)
    const {model, train} = configFromPreset('tiny', 'hc', {lr: 0.005, steps: 12, dModel: 64})
    assert.deepEqual(doc, {
      arch: 'hc',
      data: 'moby-dick',
      model: without(model, 'arch'),
      train: without(train, 'scheduleSteps'),
    })
  })

  it('--print-config output read back with --config resolves to the same settings', async () => {
    const first = await runCli(['train', '--preset', 'deep', '--arch', 'baseline', '--warmup', '7', '--print-config'])
    assert.equal(first.status, 0, showRun(first))
    const again = await runCli(['train', '--config', file('printed.yaml', first.stdout), '--print-config'])
    assert.equal(again.status, 0, showRun(again))
    assert.equal(again.stdout, first.stdout)
    assert.match(first.stdout, /^ {2}layers: 12$/m)
    assert.match(first.stdout, /^ {2}warmup: 7$/m)
  })

  it('--print-config keeps every setting given: the run ones (out, backend, keep-*) and the policies', async () => {
    const config = file(
      'all.yaml',
      'preset: tiny\nkeep-best: true\nkeep-last: 2\non-nonfinite: rollback\nout: runs/x\nrecompute-block: 2\nbackend: wasm\n',
    )
    const first = await runCli(['train', '--config', config, '--print-config'])
    assert.equal(first.status, 0, showRun(first))
    for (const line of [
      'out: runs/x',
      'backend: wasm',
      'keep-last: 2',
      'keep-best: true',
      '  onNonFinite: rollback',
      '  recomputeBlock: 2',
    ])
      assert.ok(first.stdout.split('\n').includes(line), `${line} missing from:\n${first.stdout}`)
    const again = await runCli(['train', '--config', file('again.yaml', first.stdout), '--print-config'])
    assert.equal(again.stdout, first.stdout)
  })

  it("a checkpoint's manifest.json is a config file: the same model and training settings", async () => {
    const manifest = join(repo, 'fixtures', 'mhc', 'ckpt-000150', 'manifest.json')
    const r = await runCli(['train', '--config', manifest, '--print-config', '--json'])
    assert.equal(r.status, 0, showRun(r))
    const doc = JSON.parse(r.stdout)
    const m = JSON.parse(readFileSync(manifest, 'utf8'))
    assert.deepEqual(doc, {
      arch: m.model.arch,
      data: m.data.source,
      model: without(m.model, 'arch'),
      train: without(m.train, 'scheduleSteps'),
    })
  })

  it('a bad file is one error naming the setting: unknown (with a suggestion), out of bounds, wrong type, bad YAML', async () => {
    for (const [text, pattern] of [
      ['d_model: 64\n', /unknown setting "d_model" \(did you mean "d-model"\?\)/],
      ['layers: 0\n', /layers: Expected an integer greater than or equal to 1/],
      ['lr: fast\n', /lr: Expected a number in \(0, 10\), got fast/],
      ['on-nonfinite: explode\n', /on-nonfinite: expected one of stop, skip, rollback/],
      ['keep-best: 1\n', /keep-best: expected true or false/],
      ['layers: [1\n', /not valid YAML/],
      ['- 1\n- 2\n', /expected a mapping/],
      ['lr: 0.1\nlr: 0.2\n', /not valid YAML.*[Mm]ap keys must be unique/],
      ['train:\n  adamEps: 0.1\n', /train\.adamEps cannot be set/],
      ['resume: runs/x\n', /unknown setting "resume"/],
    ] as const) {
      const r = await runCli(['train', '--config', file('bad.yaml', text), '--dry-run'])
      assert.equal(r.status, 2, `${text}\n${showRun(r)}`)
      assert.match(errorLine(r.stderr), pattern, text)
    }

    const r = await runCli(['train', '--config', file('bad.json', '{"lr": '), '--dry-run'])
    assert.equal(r.status, 2, showRun(r))
    assert.match(errorLine(r.stderr), /not valid JSON/)
  })

  it('--dry-run checks and reports, and writes nothing', async () => {
    const out = path('dry')
    const r = await runCli(['train', '--preset', 'small', '--arch', 'mhc', '--out', out, '--dry-run', '--json'])
    assert.equal(r.status, 0, showRun(r))
    const doc = JSON.parse(r.stdout)
    assert.equal(doc.dryRun, true)
    assert.equal(doc.params, parameterCount(configFromPreset('small', 'mhc').model))
    assert.ok(doc.memory.bytes > doc.memory.state && doc.memory.state > 4 * doc.params, JSON.stringify(doc.memory))
    assert.ok(!existsSync(out), 'nothing written')
    // Every input is still checked: a missing corpus is an error, not a plan.
    const bad = await runCli(['train', '--data', join(root, 'nope.txt'), '--dry-run'])
    assert.equal(bad.status, 2, showRun(bad))
  })

  it('--help lists every preset with the values it sets', async () => {
    const r = await runCli(['train', '--help'])
    assert.equal(r.status, 0, showRun(r))
    for (const [name, p] of Object.entries(PRESETS)) {
      const row = r.stdout
        .split('\n')
        .find((l) => l.trim().startsWith(`${name} `) && l.includes(String(p.model.dModel)))
      assert.ok(row, `no model row for ${name}`)
      assert.deepEqual(row.trim().split(/\s+/).slice(1).map(Number), [
        p.model.layers,
        p.model.dModel,
        p.model.heads,
        p.model.seqLen,
      ])
    }

    assert.match(r.stdout.replaceAll(/\s+/g, ' '), /Every preset: --mlp-ratio 4 --expansion 4 --sinkhorn-iters 20/)
  })
})

describe('checkpoints as users manage them', {concurrency: 2}, () => {
  const TINY = ['--preset', 'tiny', '--no-progress', '--backend', 'wasm']

  it('--keep-last 2 --keep-best keeps the newest two and the lowest validation loss, named in <run>/best', async () => {
    const out = path('keep')
    const r = await runCli([
      'train',
      ...TINY,
      '--steps',
      '16',
      '--save-every',
      '2',
      '--eval-every',
      '4',
      '--lr',
      '0.03',
      '--keep-last',
      '2',
      '--keep-best',
      '--out',
      out,
      '--json',
    ])
    assert.equal(r.status, 0, showRun(r))
    // The run's evaluations and checkpoints, as they stand after each of the invocations below.
    const evalsOf = () =>
      readFileSync(join(out, 'metrics.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
        .filter((e) => e.type === 'eval')
    const ckpts = () => new Set(readdirSync(out).filter((f) => f.startsWith('ckpt-')))
    // The validation loss of every checkpoint saved, from metrics.jsonl (--keep-best evaluates at every save).
    const evals = evalsOf()
    const saved = [2, 4, 6, 8, 10, 12, 14, 16]
    for (const step of saved)
      assert.ok(
        evals.some((e) => e.step === step),
        `no evaluation at step ${step}`,
      )
    const best = saved.reduce((a, b) =>
      evals.find((e) => e.step === b).valLoss < evals.find((e) => e.step === a).valLoss ? b : a,
    )
    const name = (s: number) => `ckpt-${String(s).padStart(6, '0')}`
    const expected = new Set([name(14), name(16), name(best)])
    assert.deepEqual(ckpts(), expected)
    assert.equal(readFileSync(join(out, 'best'), 'utf8').trim(), name(best))
    assert.equal(readFileSync(join(out, 'latest'), 'utf8').trim(), name(16))
    // RUN/best is a checkpoint path every command takes.
    const e = await runCli(['eval', join(out, 'best'), '--json', '--backend', 'wasm'])
    assert.equal(e.status, 0, showRun(e))
    assert.equal(JSON.parse(e.stdout).step, best)
    assert.deepEqual(readCheckpointDir(join(out, name(16))).manifest.keep, {last: 2, best: true})

    // A resume goes on with the run's retention (from the manifest) without being told again ...
    const resumed = await runCli(['train', '--resume', out, '--steps', '20', '--no-progress', '--backend', 'wasm'])
    assert.equal(resumed.status, 0, showRun(resumed))
    const allEvals = evalsOf()
    const valAt = (s: number) => allEvals.find((x) => x.step === s).valLoss
    const best2 = [best, 18, 20].reduce((a, b) => (valAt(b) < valAt(a) ? b : a))
    assert.deepEqual(ckpts(), new Set([name(18), name(20), name(best2)]))
    assert.equal(readFileSync(join(out, 'best'), 'utf8').trim(), name(best2))
    // ... and flags turn it off: --keep-last 0 keeps every checkpoint, --no-keep-best stops recording it.
    const off = await runCli([
      'train',
      '--resume',
      out,
      '--steps',
      '24',
      '--keep-last',
      '0',
      '--no-keep-best',
      '--no-progress',
      '--backend',
      'wasm',
    ])
    assert.equal(off.status, 0, showRun(off))
    assert.deepEqual(ckpts(), new Set([name(18), name(20), name(22), name(24), name(best2)]))
    assert.equal(readCheckpointDir(join(out, name(24))).manifest.keep, undefined)
  })

  it('--init-from starts a new run from trained weights (new schedule, fresh optimiser), and records where from', async () => {
    const source = join(repo, 'fixtures', 'hc', 'ckpt-000150')
    const out = path('init')
    // A learning rate so small that one step leaves the weights where they started (AdamW moves each by ~lr).
    const r = await runCli([
      'train',
      ...TINY,
      '--init-from',
      source,
      '--steps',
      '1',
      '--lr',
      '1e-9',
      '--out',
      out,
      '--json',
    ])
    assert.equal(r.status, 0, showRun(r))
    const ck = readCheckpointDir(join(out, 'ckpt-000001'))
    const from = readCheckpointDir(source)
    assert.deepEqual(ck.manifest.model, from.manifest.model)
    assert.deepEqual(ck.manifest.initFrom, {checkpoint: source, step: 150})
    assert.equal(ck.manifest.train.lr, 1e-9)
    const fresh = initParamData(ck.manifest.model, ck.manifest.train.seed)
    let fromSource = 0
    let fromFresh = 0
    for (const [k, v] of Object.entries(ck.params))
      for (let i = 0; i < v.length; i++) {
        fromSource = Math.max(fromSource, Math.abs(v[i] - from.params[k][i]))
        fromFresh = Math.max(fromFresh, Math.abs(v[i] - fresh[k][i]))
      }

    assert.ok(fromSource < 1e-6, `moved ${fromSource} from the source weights`)
    assert.ok(fromFresh > 0.1, `only ${fromFresh} from a fresh init: the source weights were not loaded`)

    const refused = await runCli(['train', ...TINY, '--init-from', source, '--layers', '2', '--out', path('no')])
    assert.equal(refused.status, 2, showRun(refused))
    assert.match(errorLine(refused.stderr), /--init-from takes the model from the checkpoint; drop --layers/)
  })

  it('train ends with the next commands, and each works as printed (a run directory with a space in its name)', async () => {
    const out = join(root, 'next run')
    const r = await runCli(['train', ...TINY, '--steps', '2', '--out', out, '--json'])
    assert.equal(r.status, 0, showRun(r))
    const {next} = JSON.parse(r.stdout) as {next: string[]}
    assert.deepEqual(
      next.map((c) => c.split(' ').slice(0, 2).join(' ')),
      ['./bin/dev.js analyze-gain', './bin/dev.js check', './bin/dev.js plot', './bin/dev.js report'],
    )
    const text = await runCli(['train', ...TINY, '--steps', '2', '--out', join(root, 'next-text')])
    assert.match(text.stdout, /^next:\n {2}\.\/bin\/dev\.js analyze-gain /m)
    for (const command of next) {
      const done = spawnSync('bash', ['-c', `${command} --json`], {
        cwd: repo,
        encoding: 'utf8',
        env: {...process.env, MHC_NO_TFJS_NODE: '1', MHC_CONFIG: EMPTY_CONFIG, MHC_BACKEND: 'wasm'},
      })
      assert.equal(done.status, 0, `${command}\n${done.stderr}`)
    }

    assert.ok(existsSync(join(out, 'curves.svg')) && existsSync(join(out, 'report.html')))
  })

  it('every manifest records the mhc version and, in a git checkout, the commit', async () => {
    const out = path('version')
    const r = await runCli(['train', ...TINY, '--steps', '2', '--out', out])
    assert.equal(r.status, 0, showRun(r))
    const {mhc} = readCheckpointDir(join(out, 'ckpt-000002')).manifest
    assert.equal(mhc?.version, JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')).version)
    if (existsSync(join(repo, '.git'))) {
      const head = execFileSync('git', ['-C', repo, 'rev-parse', 'HEAD'], {encoding: 'utf8'}).trim()
      assert.match(mhc?.commit ?? '', new RegExp(`^${head}(\\+dirty)?$`))
    }
  })
})
