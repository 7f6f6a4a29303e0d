// What a CI job relies on: silent backend probing, a default backend without a flag, one exit-code table, a run
// directory that two processes cannot share, sizes refused before allocation, pseudo-filesystems refused.
import {describe, it, before, after} from 'node:test'
import assert from 'node:assert/strict'
import {spawn, spawnSync} from 'node:child_process'
import {existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync} from 'node:fs'
import {hostname, tmpdir} from 'node:os'
import {join} from 'node:path'
import {pathToFileURL} from 'node:url'
import {EXIT, UsageError, assertWritableDir, exitCodeFor} from '../src/cli/base.js'
import {memoryBudget, readUserConfig, resolveBackendChoice} from '../src/model/backend-names.js'
import {InputError} from '../src/model/errors.js'
import {LOCK_FILE, acquireRunLock, assertUnlocked, lockHolder} from '../src/model/run-lock.js'
import {NonFiniteError} from '../src/model/train.js'
import {AdapterInfo, isSoftwareAdapter, probeWebgpu} from '../src/model/webgpu-probe.js'
import {trainingMemoryEstimate} from '../src/profile/memory.js'
import {repo, runCli, showRun} from './helpers.js'

let root = ''
before(() => { root = mkdtempSync(join(tmpdir(), 'mhc-ci-')) })
after(() => rmSync(root, {recursive: true, force: true}))
let counter = 0
const tmpPath = (name: string) => join(root, `${name}-${++counter}`)

const adapter = (o: Partial<AdapterInfo>): AdapterInfo => ({vendor: '', architecture: '', device: '', description: '', isFallbackAdapter: false, ...o})

describe('backend choice and probing', () => {
  it('--backend, then MHC_BACKEND, then the config file, then auto; bad values are bad input', () => {
    const dir = tmpPath('cfg')
    mkdirSync(dir)
    const file = join(dir, 'config.json')
    writeFileSync(file, JSON.stringify({backend: 'cpu'}))
    assert.deepEqual(resolveBackendChoice('wasm', dir, {MHC_BACKEND: 'cpu'}), {choice: 'wasm', source: 'flag'})
    assert.deepEqual(resolveBackendChoice(undefined, dir, {MHC_BACKEND: 'wasm'}), {choice: 'wasm', source: 'env', where: 'MHC_BACKEND'})
    assert.deepEqual(resolveBackendChoice(undefined, dir, {}), {choice: 'cpu', source: 'config', where: file})
    assert.deepEqual(resolveBackendChoice(undefined, join(dir, 'none'), {}), {choice: 'auto', source: 'default'})
    assert.deepEqual(resolveBackendChoice(undefined, undefined, {MHC_CONFIG: file}), {choice: 'cpu', source: 'config', where: file})
    assert.throws(() => resolveBackendChoice(undefined, dir, {MHC_BACKEND: 'gpu'}), (e: unknown) => e instanceof InputError && /MHC_BACKEND: backend "gpu" is not one of auto, tensorflow/.test(e.message))
    writeFileSync(file, '{"backend": "wasm", "backnd": "cpu"}')
    assert.throws(() => readUserConfig(dir, {}), /unknown key "backnd"/)
    writeFileSync(file, '{nope')
    assert.throws(() => readUserConfig(dir, {}), /not valid JSON/)
    assert.throws(() => readUserConfig(undefined, {MHC_CONFIG: join(dir, 'missing.json')}), /MHC_CONFIG=.*missing\.json: no such file/)
  })

  it('software adapters (llvmpipe, lavapipe, SwiftShader, fallback) are never a training device', () => {
    assert.equal(isSoftwareAdapter(adapter({device: 'llvmpipe-llvm-15-0-6-256-bits-', description: 'OpenGL ES 3.2 Mesa 22.3.6'})), true)
    assert.equal(isSoftwareAdapter(adapter({vendor: 'mesa', device: 'llvmpipe (LLVM 15.0.6, 256 bits)', description: 'lavapipe'})), true)
    assert.equal(isSoftwareAdapter(adapter({vendor: 'google', architecture: 'swiftshader', description: 'SwiftShader Device (Subzero)'})), true)
    assert.equal(isSoftwareAdapter(adapter({vendor: 'nvidia', device: 'NVIDIA H200', isFallbackAdapter: true})), true)
    assert.equal(isSoftwareAdapter(adapter({vendor: 'nvidia', architecture: 'hopper', device: 'NVIDIA H200', description: 'NVIDIA: 580.159.03'})), false)
  })

  it('the probe runs in a child whose native output never reaches our stderr', () => {
    // A stand-in for Dawn that writes to file descriptor 2 natively-style, then offers an adapter.
    const fake = join(tmpPath('fake-dawn'), 'dawn.mjs')
    mkdirSync(join(fake, '..'), {recursive: true})
    writeFileSync(fake, `import {writeSync} from 'node:fs'
export const globals = {}
export function create() {
  writeSync(2, 'error: XDG_RUNTIME_DIR is invalid or not set in the environment.\\nWarning: Vulkan shaderUniform*ArrayDynamicIndexing required.\\n')
  return {requestAdapter: async () => ({info: {vendor: 'nvidia', architecture: 'hopper', device: 'NVIDIA H200', description: 'test'}})}
}
`)
    const script = `const {probeWebgpu} = await import(${JSON.stringify(pathToFileURL(join(repo, 'src/model/webgpu-probe.ts')).href)})
const r = await probeWebgpu({moduleUrl: ${JSON.stringify(pathToFileURL(fake).href)}})
process.stdout.write(JSON.stringify(r))`
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {cwd: repo, encoding: 'utf8'})
    assert.equal(r.status, 0, r.stderr)
    assert.equal(r.stderr, '', 'nothing from the probe reached stderr')
    const out = JSON.parse(r.stdout)
    assert.equal(out.ok, true)
    assert.equal(out.adapter.device, 'NVIDIA H200')
  })

  const lavapipe = ['/usr/share/vulkan/icd.d', '/etc/vulkan/icd.d'].some((d) => existsSync(d) && readdirSync(d).some((f) => /lvp/.test(f)))
  it('with Mesa\'s lavapipe installed and no GPU: webgpu is skipped silently and train --json writes nothing to stderr',
    {skip: !lavapipe && 'no lavapipe Vulkan driver here (apt-get install mesa-vulkan-drivers; .ci/run does)'}, async () => {
      const probe = await probeWebgpu()
      assert.equal(probe.ok, false, 'a software Vulkan driver is not a GPU')
      const out = tmpPath('lvp')
      const r = await runCli(['train', '--preset', 'tiny', '--steps', '1', '--eval-windows', '2', '--no-progress', '--out', out, '--json'], {env: {MHC_BACKEND: undefined, XDG_RUNTIME_DIR: undefined}})
      assert.equal(r.status, 0, showRun(r))
      assert.equal(r.stderr, '', 'no native Dawn or Vulkan line')
      const json = JSON.parse(r.stdout)
      assert.equal(json.backend.name, 'wasm')
      assert.equal(json.backend.source, 'default')
      assert.ok(json.backend.skipped.some((s: {backend: string}) => s.backend === 'webgpu'), JSON.stringify(json.backend))
    })

  it('MHC_BACKEND picks the backend without a flag, reported once in one line and in --json', async () => {
    const r = await runCli(['eval', join(repo, 'fixtures', 'baseline'), '--eval-windows', '2'], {env: {MHC_BACKEND: 'cpu'}})
    assert.equal(r.status, 0, showRun(r))
    assert.deepEqual(r.stderr.split('\n').filter(Boolean), ['backend: cpu (from MHC_BACKEND)'])
    const j = await runCli(['eval', join(repo, 'fixtures', 'baseline'), '--eval-windows', '2', '--json'], {env: {MHC_BACKEND: 'cpu'}})
    assert.deepEqual(JSON.parse(j.stdout).backend, {name: 'cpu', requested: 'cpu', source: 'env', skipped: []})
    const bad = await runCli(['eval', join(repo, 'fixtures', 'baseline')], {env: {MHC_BACKEND: 'tpu'}})
    assert.equal(bad.status, 2, showRun(bad))
    assert.match(bad.stderr, /^Error: MHC_BACKEND: backend "tpu" is not one of/m)
  })
})

describe('one exit-code table', () => {
  it('1 is only a failed gate; bad input 2; divergence 3; anything unexpected 70', () => {
    assert.deepEqual(EXIT, {ok: 0, gateFailed: 1, badInput: 2, diverged: 3, internal: 70, sigint: 130, sigterm: 143})
    assert.equal(exitCodeFor(new InputError('x')), 2)
    assert.equal(exitCodeFor(new UsageError('x')), 2)
    assert.equal(exitCodeFor({oclif: {exit: 2}, message: 'Nonexistent flag'}), 2)
    assert.equal(exitCodeFor(new NonFiniteError('nan')), 3)
    assert.equal(exitCodeFor(new TypeError('cannot read properties of undefined')), 70)
    assert.equal(exitCodeFor(new Error('ENOSPC')), 70)
  })
})

describe('a run directory has one writer', () => {
  it('acquire, refuse while held (naming the PID), release; a stale lock from a dead process is taken over', () => {
    const dir = tmpPath('lock')
    mkdirSync(dir)
    const release = acquireRunLock(dir, 'test')
    assert.equal(JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8')).pid, process.pid)
    assert.equal(lockHolder(dir), undefined, 'a process never waits for itself')
    release()
    assert.equal(existsSync(join(dir, LOCK_FILE)), false)
    // A live holder: another process (this test's parent is alive for sure).
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify({pid: process.ppid, host: hostname(), started: '2026-01-01T00:00:00Z'}))
    assert.throws(() => assertUnlocked(dir), new RegExp(`in use by another mhc process \\(PID ${process.ppid}`))
    assert.throws(() => acquireRunLock(dir), new RegExp(`PID ${process.ppid}`))
    // A dead holder: a child that has exited.
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], {encoding: 'utf8'})
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify({pid: Number(dead.stdout), host: hostname(), started: '2026-01-01T00:00:00Z'}))
    assertUnlocked(dir)
    const again = acquireRunLock(dir)
    assert.equal(JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8')).pid, process.pid)
    again()
    assert.deepEqual(readdirSync(dir), [], 'no lock or temp file left')
  })

  it('a second train --out X exits 2 naming the holder; after kill -9, a resume takes the stale lock over', async () => {
    const out = tmpPath('busy')
    const first = spawn(process.execPath, ['--import', 'tsx', 'bin/dev.js', 'train', '--preset', 'tiny', '--steps', '100000', '--save-every', '2', '--eval-every', '0', '--no-progress', '--out', out],
      {cwd: repo, env: {...process.env, MHC_NO_TFJS_NODE: '1', MHC_BACKEND: 'wasm'}, stdio: 'ignore'})
    try {
      const t0 = Date.now()
      while (!existsSync(join(out, 'latest')) && Date.now() - t0 < 60_000) await new Promise((r) => setTimeout(r, 200))
      assert.ok(existsSync(join(out, LOCK_FILE)), 'the running train holds the lock')
      const second = await runCli(['train', '--preset', 'tiny', '--steps', '4', '--no-progress', '--out', out])
      assert.equal(second.status, 2, showRun(second))
      assert.match(second.stderr, new RegExp(`^Error: ${out} is in use by another mhc process \\(PID ${first.pid},`, 'm'))
      const resume = await runCli(['train', '--resume', out, '--steps', '4', '--no-progress'])
      assert.equal(resume.status, 2, showRun(resume))
      assert.match(resume.stderr, /in use by another mhc process/)
    } finally {
      first.kill('SIGKILL')
      await new Promise((r) => first.once('close', r))
    }
    assert.ok(existsSync(join(out, LOCK_FILE)), 'kill -9 leaves the lock behind')
    const ck = readFileSync(join(out, 'latest'), 'utf8').trim()
    const steps = Number(ck.slice('ckpt-'.length)) + 1
    const r = await runCli(['train', '--resume', out, '--steps', String(steps), '--eval-windows', '2', '--no-progress', '--json'])
    assert.equal(r.status, 0, showRun(r))
    assert.equal(JSON.parse(r.stdout).steps, steps)
    assert.equal(existsSync(join(out, LOCK_FILE)), false, 'released at the end')
  })
})

describe('resources and paths', () => {
  it('a model that cannot fit is refused before allocation, with the estimate, and leaves no run directory', async () => {
    const est = trainingMemoryEstimate({arch: 'mhc', layers: 8, dModel: 8192, heads: 8, seqLen: 32, mlpRatio: 4, expansion: 4, vocabSize: 256, params: 6.46e9, batch: 8, recomputeBlock: 0})
    assert.ok(est.state === 16 * 6.46e9 && est.bytes > est.state)
    assert.equal(memoryBudget('wasm').bytes, 4 * 2 ** 30)
    const out = tmpPath('huge')
    const r = await runCli(['train', '--preset', 'tiny', '--d-model', '8192', '--heads', '8', '--layers', '8', '--steps', '1', '--out', out], {env: {MHC_BACKEND: 'wasm'}})
    assert.equal(r.status, 2, showRun(r))
    assert.match(r.stderr, /^Error: this model does not fit: training needs about \d+(\.\d+)? GiB .* the wasm backend's heap holds at most 4 GiB/m)
    assert.equal(existsSync(out), false)
    // Small models are far from the bound.
    const small = trainingMemoryEstimate({arch: 'mhc', layers: 4, dModel: 128, heads: 4, seqLen: 64, mlpRatio: 4, expansion: 4, vocabSize: 256, params: 1e6, batch: 16, recomputeBlock: 0})
    assert.ok(small.bytes < 2 ** 30, `small preset estimate ${small.bytes}`)
  })

  it('--out, --csv, --junit under /proc or /sys are refused at once', async () => {
    assert.throws(() => assertWritableDir('/proc/self/x', '--out'), /--out \/proc\/self\/x: .* is on the kernel's proc filesystem/)
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
