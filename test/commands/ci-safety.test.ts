// What a CI job relies on: silent backend probing, a default backend without a flag, one exit-code table, a run
// directory that two processes cannot share, sizes refused before allocation, pseudo-filesystems refused.
import assert from 'node:assert/strict'
import {spawn} from 'node:child_process'
import {existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'

import {assertWritableDir} from '../../src/cli/base.js'
import {memoryBudget} from '../../src/model/engines/backends.js'
import {probeWebgpu} from '../../src/model/engines/webgpu-probe.js'
import {LOCK_FILE} from '../../src/model/train/run-dir.js'
import {repo, runCli, showRun, startCli} from '../helpers.js'

let root = ''
before(() => {
  root = mkdtempSync(join(tmpdir(), 'mhc-ci-'))
})
after(() => rmSync(root, {recursive: true, force: true}))
let counter = 0
const tmpPath = (name: string) => join(root, `${name}-${++counter}`)

describe('backend choice and probing', () => {
  const lavapipe = ['/usr/share/vulkan/icd.d', '/etc/vulkan/icd.d'].some(
    (d) => existsSync(d) && readdirSync(d).some((f) => /lvp/.test(f)),
  )
  it(
    "with Mesa's lavapipe installed and no GPU: webgpu is skipped silently and train --json writes nothing to stderr",
    {skip: !lavapipe && 'no lavapipe Vulkan driver here (apt-get install mesa-vulkan-drivers; .ci/run does)'},
    async () => {
      const probe = await probeWebgpu()
      assert.equal(probe.ok, false, 'a software Vulkan driver is not a GPU')
      const out = tmpPath('lvp')
      const r = await runCli(
        ['train', '--preset', 'tiny', '--steps', '1', '--eval-windows', '2', '--out', out, '--json'],
        {env: {MHC_BACKEND: undefined, MHC_NO_TFJS_NODE: undefined, XDG_RUNTIME_DIR: undefined}},
      )
      assert.equal(r.status, 0, showRun(r))
      assert.equal(r.stderr, '', 'no native Dawn or Vulkan line')
      const json = JSON.parse(r.stdout)
      assert.equal(json.backend.name, 'wasm')
      assert.equal(json.backend.source, 'default')
      assert.ok(
        json.backend.skipped.some((s: {backend: string}) => s.backend === 'webgpu'),
        JSON.stringify(json.backend),
      )
    },
  )

  it('MHC_BACKEND picks the backend without a flag, reported once in one line and in --json', async () => {
    const r = await runCli(['eval', join(repo, 'fixtures', 'baseline'), '--eval-windows', '2'], {
      env: {MHC_BACKEND: 'cpu'},
    })
    assert.equal(r.status, 0, showRun(r))
    assert.deepEqual(r.stderr.split('\n').filter(Boolean), ['backend: cpu (from MHC_BACKEND)'])
    const j = await runCli(['eval', join(repo, 'fixtures', 'baseline'), '--eval-windows', '2', '--json'], {
      env: {MHC_BACKEND: 'cpu'},
    })
    assert.deepEqual(JSON.parse(j.stdout).backend, {name: 'cpu', requested: 'cpu', source: 'env', skipped: []})
    const bad = await runCli(['eval', join(repo, 'fixtures', 'baseline')], {env: {MHC_BACKEND: 'tpu'}})
    assert.equal(bad.status, 2, showRun(bad))
    assert.match(bad.stderr, /^Error: MHC_BACKEND: backend "tpu" is not one of/m)
  })
})

describe('a run directory has one writer', () => {
  it('a second train --out X exits 2 naming the holder; after kill -9, a resume takes the stale lock over', async () => {
    const out = tmpPath('busy')
    const first = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        'bin/dev.js',
        'train',
        '--preset',
        'tiny',
        '--steps',
        '100000',
        '--save-every',
        '2',
        '--eval-every',
        '0',
        '--no-progress',
        '--out',
        out,
      ],
      {cwd: repo, env: {...process.env, MHC_NO_TFJS_NODE: '1', MHC_BACKEND: 'wasm'}, stdio: 'ignore'},
    )
    try {
      const t0 = Date.now()
      while (!existsSync(join(out, 'latest')) && Date.now() - t0 < 60_000)
        await new Promise((r) => {
          setTimeout(r, 200)
        })
      assert.ok(existsSync(join(out, LOCK_FILE)), 'the running train holds the lock')
      const second = await runCli(['train', '--preset', 'tiny', '--steps', '4', '--no-progress', '--out', out])
      assert.equal(second.status, 2, showRun(second))
      assert.match(
        second.stderr,
        new RegExp(`^Error: ${out} is in use by another mhc process \\(PID ${first.pid},`, 'm'),
      )
      const resume = await runCli(['train', '--resume', out, '--steps', '4', '--no-progress'])
      assert.equal(resume.status, 2, showRun(resume))
      assert.match(resume.stderr, /in use by another mhc process/)
    } finally {
      first.kill('SIGKILL')
      await new Promise((r) => {
        first.once('close', r)
      })
    }

    assert.ok(existsSync(join(out, LOCK_FILE)), 'kill -9 leaves the lock behind')
    const ck = readFileSync(join(out, 'latest'), 'utf8').trim()
    const steps = Number(ck.slice('ckpt-'.length)) + 1
    const r = await runCli([
      'train',
      '--resume',
      out,
      '--steps',
      String(steps),
      '--eval-windows',
      '2',
      '--no-progress',
      '--json',
    ])
    assert.equal(r.status, 0, showRun(r))
    assert.equal(JSON.parse(r.stdout).steps, steps)
    assert.equal(existsSync(join(out, LOCK_FILE)), false, 'released at the end')
  })
})

describe('resources and paths', () => {
  it('a model that cannot fit is refused before allocation, with the estimate and the largest --batch that fits; nothing is left behind', async () => {
    assert.equal(memoryBudget('wasm').bytes, 4 * 2 ** 30 - 65_536)
    const cwd = tmpPath('cwd')
    mkdirSync(cwd)
    // The medium preset (batch 32) needs about 8 GiB in the tfjs engine: on wasm that used to end in Aborted().
    const r = await runCli(['train', '--preset', 'medium', '--steps', '1', '--no-progress'], {
      cwd,
      env: {MHC_BACKEND: 'wasm'},
    })
    assert.equal(r.status, 2, showRun(r))
    const m =
      /^Error: this model does not fit: training needs about ([\d.]+) GiB .* the wasm backend's heap holds at most 4 GiB; --batch (\d+) would fit/m.exec(
        r.stderr,
      )
    assert.ok(m, showRun(r))
    assert.ok(Number(m[1]) > 6, `estimate ${m[1]} GiB`)
    assert.ok(Number(m[2]) >= 8 && Number(m[2]) < 16, `suggested --batch ${m[2]} (16 and more abort, 8 fits)`)
    assert.deepEqual(readdirSync(cwd), [], 'no runs/ left in the working directory')
    // Absurd sizes too, whatever --out says.
    const out = join(tmpPath('deep'), 'a', 'b')
    const huge = await runCli(
      ['train', '--preset', 'tiny', '--d-model', '8192', '--heads', '8', '--layers', '8', '--steps', '1', '--out', out],
      {env: {MHC_BACKEND: 'wasm'}},
    )
    assert.equal(huge.status, 2, showRun(huge))
    assert.match(huge.stderr, /^Error: this model does not fit: training needs about \d+(\.\d+)? GiB/m)
    assert.equal(existsSync(join(out, '..', '..')), false)
  })

  it('--out, --csv, --junit under /proc or /sys are refused at once', async () => {
    assert.throws(
      () => assertWritableDir('/proc/self/x', '--out'),
      /--out \/proc\/self\/x: .* is on the kernel's proc filesystem/,
    )
    assert.throws(() => assertWritableDir('/sys/kernel/mhc', '--out'), /sysfs filesystem/)
    assertWritableDir(tmpPath('fine'), '--out')
    const t0 = Date.now()
    const r = await runCli(['train', '--preset', 'tiny', '--steps', '1', '--out', '/proc/mhc-run'], {timeoutMs: 30_000})
    assert.equal(r.status, 2, showRun(r))
    assert.match(r.stderr, /^Error: --out \/proc\/mhc-run: \/proc is on the kernel's proc filesystem/m)
    assert.ok(Date.now() - t0 < 30_000)
    const c = await runCli(['check', join(repo, 'fixtures', 'mhc'), '--junit', '/sys/mhc.xml'])
    assert.equal(c.status, 2, showRun(c))
  })
})

describe('check --train cleans up after itself', () => {
  for (const sig of ['SIGTERM', 'SIGHUP'] as const)
    it(`${sig} (a cancelled CI job, a closed terminal) removes the temporary run and ends as the signal says`, async () => {
      const tmp = tmpPath('tmpdir')
      mkdirSync(tmp)
      const run = startCli(['check', '--train', '--steps', '100000', '--json'], {env: {TMPDIR: tmp}})
      const t0 = Date.now()
      const runDirs = () => readdirSync(tmp).filter((f) => f.startsWith('mhc-check-'))
      while (!runDirs().some((d) => existsSync(join(tmp, d, 'metrics.jsonl'))) && Date.now() - t0 < 60_000) {
        await new Promise((r) => {
          setTimeout(r, 100)
        })
      }

      assert.equal(runDirs().length, 1, 'training into a temporary run')
      run.child.kill(sig)
      const r = await run.done
      assert.equal(r.signal, sig, showRun(r))
      assert.deepEqual(runDirs(), [], 'the temporary run is gone')
      assert.match(r.stderr, new RegExp(`${sig}: check interrupted; removed `))
    })
})
