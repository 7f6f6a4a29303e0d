// `mhc train --backend webgpu` through the whole command path without a GPU: MHC_WEBGPU_SOFTWARE=1 lets an explicit
// --backend webgpu run the engine on Mesa llvmpipe. The run's checkpoint must load in the tfjs engine (wasm) and give
// the same validation loss; --backend auto must never take that software device.
import assert from 'node:assert/strict'
import {mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'

import {runCli, showRun} from '../helpers.js'
import {device} from '../model/engines/webgpu/helpers.js'

let root = ''
before(() => {
  root = mkdtempSync(join(tmpdir(), 'mhc-webgpu-cli-'))
})
after(() => rmSync(root, {recursive: true, force: true}))

const SOFTWARE = {MHC_WEBGPU_SOFTWARE: '1', MHC_BACKEND: undefined}
const TINY = ['--preset', 'tiny', '--steps', '4', '--eval-every', '2', '--eval-windows', '4', '--no-progress']

describe('mhc train --backend webgpu (software adapter)', async () => {
  const {skip} = await device()

  for (const arch of ['baseline', 'hc', 'mhc']) {
    it(`${arch}: trains, checkpoints, and the checkpoint gives the same val loss on wasm`, {skip}, async () => {
      const out = join(root, arch)
      const train = await runCli(['train', '--arch', arch, ...TINY, '--backend', 'webgpu', '--out', out, '--json'], {
        env: SOFTWARE,
      })
      assert.equal(train.status, 0, showRun(train))
      const t = JSON.parse(train.stdout)
      assert.equal(t.backend.name, 'webgpu')
      assert.equal(t.steps, 4)
      assert.ok(Number.isFinite(t.valLoss) && t.valLoss > 0 && t.valLoss < Math.log(256) + 0.5, String(t.valLoss))

      const evaluated = await runCli(['eval', t.checkpoint, '--eval-windows', '4', '--backend', 'wasm', '--json'])
      assert.equal(evaluated.status, 0, showRun(evaluated))
      const e = JSON.parse(evaluated.stdout)
      assert.ok(
        Math.abs(e.valLoss - t.valLoss) <= 1e-5 * t.valLoss,
        `webgpu ${t.valLoss} vs wasm ${e.valLoss} on the same checkpoint and windows`,
      )
    })
  }

  it('--backend auto never trains on the software adapter, even with MHC_WEBGPU_SOFTWARE=1', {skip}, async () => {
    const r = await runCli(
      ['train', '--preset', 'tiny', '--steps', '1', '--eval-windows', '2', '--out', join(root, 'auto'), '--json'],
      {env: SOFTWARE},
    )
    assert.equal(r.status, 0, showRun(r))
    const j = JSON.parse(r.stdout)
    assert.notEqual(j.backend.name, 'webgpu', JSON.stringify(j.backend))
    assert.equal(j.backend.requested, 'auto')
  })

  it('--recompute-block on the webgpu engine is bad input (exit 2, one line)', {skip}, async () => {
    const r = await runCli(
      [
        'train',
        '--preset',
        'tiny',
        '--steps',
        '1',
        '--backend',
        'webgpu',
        '--recompute-block',
        '1',
        '--out',
        join(root, 'rb'),
      ],
      {env: SOFTWARE},
    )
    assert.equal(r.status, 2, showRun(r))
    assert.match(r.stderr, /--recompute-block needs a tfjs backend/)
  })
})
