// The CLI as installed: compiled by tsc into dist/ and run by bin/run.js under plain Node (no tsx). Node's ES module
// loader is stricter than tsx (an import path without its extension fails there only), so every command must load
// from the build, and the quick start's demo must run from it.
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {readdirSync} from 'node:fs'
import {join} from 'node:path'
import {before, it} from 'node:test'

import {EMPTY_CONFIG, repo} from '../helpers.js'

const env = {...process.env, MHC_NO_TFJS_NODE: '1', MHC_CONFIG: EMPTY_CONFIG, NODE_ENV: 'production'}
const run = (args: string[]) =>
  spawnSync(process.execPath, [join(repo, 'bin', 'run.js'), ...args], {
    cwd: repo,
    encoding: 'utf8',
    env,
    timeout: 120_000,
  })

before(() => {
  const tsc = spawnSync(process.execPath, [join(repo, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', '.'], {
    cwd: repo,
    encoding: 'utf8',
  })
  assert.equal(tsc.status, 0, `tsc failed:\n${tsc.stdout}${tsc.stderr}`)
})

it('every command loads from the build (--help), with nothing on stderr', () => {
  const commands = readdirSync(join(repo, 'src', 'commands')).map((f) => f.replace(/\.ts$/, ''))
  for (const command of commands) {
    const r = run([command, '--help'])
    assert.equal(r.status, 0, `${command}: ${r.stderr}`)
    assert.match(r.stdout, /USAGE/, command)
    assert.equal(r.stderr, '', `${command} --help wrote to stderr: ${r.stderr}`)
  }
})

it("the quick start's five-second demo runs from the build", () => {
  const r = run(['analyze-gain', 'fixtures/hc', 'fixtures/mhc', '--tokens', '256', '--backend', 'wasm', '--json'])
  assert.equal(r.status, 0, r.stderr)
  assert.deepEqual(
    JSON.parse(r.stdout).runs.map((x: any) => x.arch),
    ['hc', 'mhc'],
  )
})
