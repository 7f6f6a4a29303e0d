// mhc sample as a user runs it: the same seed prints the same text, bad input is one error line.
import assert from 'node:assert/strict'
import {join} from 'node:path'
import {it} from 'node:test'

import {repo, runCli, showRun} from '../helpers.js'

const ckpt = join(repo, 'fixtures', 'hc')

it('the same seed gives the same text (stdout and --json agree); another seed another text', async () => {
  const args = ['sample', ckpt, '--prompt', 'Call me ', '--tokens', '40', '--seed', '9', '--backend', 'wasm']
  const [text, json, other] = await Promise.all([
    runCli(args),
    runCli([...args, '--json']),
    runCli([...args.slice(0, -4), '--seed', '10', '--backend', 'wasm', '--json']),
  ])
  for (const r of [text, json, other]) assert.equal(r.status, 0, showRun(r))
  const a = JSON.parse(json.stdout)
  assert.equal(a.bytes.length, 40)
  assert.equal(a.prompt, 'Call me ')
  assert.equal(text.stdout, `Call me ${new TextDecoder().decode(Uint8Array.from(a.bytes))}\n`)
  assert.notDeepEqual(JSON.parse(other.stdout).bytes, a.bytes)
})

it('bad input: an empty prompt, a backend without logits, a missing checkpoint', async () => {
  for (const [args, pattern] of [
    [['--prompt', ''], /--prompt must hold at least one byte/],
    [['--backend', 'webgpu'], /the webgpu engine does not return logits/],
    [['--temperature', '-1'], /Expected a number in \[0, 100\]/],
  ] as const) {
    const r = await runCli(['sample', ckpt, ...args])
    assert.equal(r.status, 2, showRun(r))
    assert.match(r.stderr, pattern)
  }

  const r = await runCli(['sample', join(repo, 'no-such-run')])
  assert.equal(r.status, 2, showRun(r))
})
