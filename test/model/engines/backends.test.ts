// The backend choice (flag, MHC_BACKEND, config file, auto) and the silent probe for a real GPU adapter.
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {mkdirSync, mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {pathToFileURL} from 'node:url'

import {PRESETS} from '../../../src/model/config.js'
import {readUserConfig, resolveBackendChoice} from '../../../src/model/engines/backends.js'
import {AdapterInfo, isSoftwareAdapter} from '../../../src/model/engines/webgpu-probe.js'
import {InputError} from '../../../src/model/errors.js'
import {repo} from '../../helpers.js'

let root = ''
before(() => {
  root = mkdtempSync(join(tmpdir(), 'mhc-backends-'))
})
after(() => rmSync(root, {recursive: true, force: true}))
let counter = 0
const tmpPath = (name: string) => join(root, `${name}-${++counter}`)
const adapter = (o: Partial<AdapterInfo>): AdapterInfo => ({
  vendor: '',
  architecture: '',
  device: '',
  description: '',
  isFallbackAdapter: false,
  ...o,
})

describe('backend choice and probing', () => {
  it('--backend, then MHC_BACKEND, then the config file, then auto; bad values are bad input', () => {
    const dir = tmpPath('cfg')
    mkdirSync(dir)
    const file = join(dir, 'config.json')
    writeFileSync(file, JSON.stringify({backend: 'cpu'}))
    assert.deepEqual(resolveBackendChoice('wasm', dir, {MHC_BACKEND: 'cpu'}), {choice: 'wasm', source: 'flag'})
    assert.deepEqual(resolveBackendChoice(undefined, dir, {MHC_BACKEND: 'wasm'}), {
      choice: 'wasm',
      source: 'env',
      where: 'MHC_BACKEND',
    })
    assert.deepEqual(resolveBackendChoice(undefined, dir, {}), {choice: 'cpu', source: 'config', where: file})
    assert.deepEqual(resolveBackendChoice(undefined, join(dir, 'none'), {}), {choice: 'auto', source: 'default'})
    assert.deepEqual(resolveBackendChoice(undefined, undefined, {MHC_CONFIG: file}), {
      choice: 'cpu',
      source: 'config',
      where: file,
    })
    assert.throws(
      () => resolveBackendChoice(undefined, dir, {MHC_BACKEND: 'gpu'}),
      (e: unknown) =>
        e instanceof InputError &&
        e.message.endsWith('MHC_BACKEND: backend "gpu" is not one of auto, webgpu, tensorflow, tfjs-webgpu, wasm, cpu'),
    )
    writeFileSync(file, '{"backend": "wasm", "backnd": "cpu"}')
    assert.throws(() => readUserConfig(dir, {}), /unknown key "backnd"/)
    writeFileSync(file, '{nope')
    assert.throws(() => readUserConfig(dir, {}), /not valid JSON/)
    assert.throws(
      () => readUserConfig(undefined, {MHC_CONFIG: join(dir, 'missing.json')}),
      /MHC_CONFIG=.*missing\.json: no such file/,
    )
  })

  it('software adapters (llvmpipe, lavapipe, SwiftShader, fallback) are never a training device', () => {
    assert.equal(
      isSoftwareAdapter(adapter({device: 'llvmpipe-llvm-15-0-6-256-bits-', description: 'OpenGL ES 3.2 Mesa 22.3.6'})),
      true,
    )
    assert.equal(
      isSoftwareAdapter(adapter({vendor: 'mesa', device: 'llvmpipe (LLVM 15.0.6, 256 bits)', description: 'lavapipe'})),
      true,
    )
    assert.equal(
      isSoftwareAdapter(
        adapter({vendor: 'google', architecture: 'swiftshader', description: 'SwiftShader Device (Subzero)'}),
      ),
      true,
    )
    assert.equal(isSoftwareAdapter(adapter({vendor: 'nvidia', device: 'NVIDIA H200', isFallbackAdapter: true})), true)
    assert.equal(
      isSoftwareAdapter(
        adapter({vendor: 'nvidia', architecture: 'hopper', device: 'NVIDIA H200', description: 'NVIDIA: 580.159.03'}),
      ),
      false,
    )
  })

  it('the probe runs in a child whose native output never reaches our stderr', () => {
    // A stand-in for Dawn that writes to file descriptor 2 natively-style, then offers an adapter.
    const fake = join(tmpPath('fake-dawn'), 'dawn.mjs')
    mkdirSync(join(fake, '..'), {recursive: true})
    writeFileSync(
      fake,
      `import {writeSync} from 'node:fs'
export const globals = {}
export function create() {
  writeSync(2, 'error: XDG_RUNTIME_DIR is invalid or not set in the environment.\\nWarning: Vulkan shaderUniform*ArrayDynamicIndexing required.\\n')
  return {requestAdapter: async () => ({info: {vendor: 'nvidia', architecture: 'hopper', device: 'NVIDIA H200', description: 'test'}})}
}
`,
    )
    const script = `const {probeWebgpu} = await import(${JSON.stringify(pathToFileURL(join(repo, 'src/model/engines/webgpu-probe.ts')).href)})
const r = await probeWebgpu({moduleUrl: ${JSON.stringify(pathToFileURL(fake).href)}})
process.stdout.write(JSON.stringify(r))`
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: repo,
      encoding: 'utf8',
    })
    assert.equal(r.status, 0, r.stderr)
    assert.equal(r.stderr, '', 'nothing from the probe reached stderr')
    const out = JSON.parse(r.stdout)
    assert.equal(out.ok, true)
    assert.equal(out.adapter.device, 'NVIDIA H200')
  })

  it('auto skips the webgpu engine for what it cannot run (before opening a device) and opens the next backend', async () => {
    const {openEngines} = await import('../../../src/model/engines/index.js')
    const auto = {choice: 'auto', source: 'default'} as const
    const withRecompute = await openEngines(auto, {recomputeBlock: 2})
    assert.notEqual(withRecompute.report.backend, 'webgpu')
    assert.match(withRecompute.report.attempts[0].reason ?? '', /^the webgpu engine keeps every activation/)
    const model = {...PRESETS.tiny.model, arch: 'mhc' as const, expansion: 9}
    const wide = await openEngines(auto, {model})
    assert.match(wide.report.attempts[0].reason ?? '', /supports expansion n ≤ 8 \(got 9\)/)
    // Named, the same refusal is bad input, not "no usable backend".
    await assert.rejects(
      openEngines({choice: 'webgpu', source: 'flag'}, {model}),
      (e: unknown) => e instanceof InputError && /supports expansion n ≤ 8/.test((e as Error).message),
    )
  })
})
