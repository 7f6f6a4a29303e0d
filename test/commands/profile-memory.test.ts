// `mhc profile-memory` as a user runs it: the model mode's JSON against an independent recount of Eq. 20, and bad
// input as one line with exit 2.
import assert from 'node:assert/strict'
import {describe, it} from 'node:test'

import {runCli, showRun} from '../helpers.js'

describe('mhc profile-memory (CLI)', () => {
  it('paper-27b: the optimum minimises the curve, which follows Eq. 20 recounted here; L_r* = 5 as the paper has it', async () => {
    const r = await runCli(['profile-memory', '--preset', 'paper-27b', '--json'])
    assert.equal(r.status, 0, showRun(r))
    const j = JSON.parse(r.stdout)
    const {L} = j
    const n = j.config.expansion
    assert.equal(L, 30)
    assert.deepEqual(j.argmin, [5])
    assert.ok(Math.abs(j.closedForm - Math.sqrt((n * L) / (n + 2))) < 1e-12)
    const totals = j.curve.map((c: {counts: {total: number}}) => c.counts.total)
    const best = Math.min(...totals)
    assert.deepEqual(
      j.argmin,
      j.curve.filter((c: {counts: {total: number}}) => c.counts.total === best).map((c: any) => c.recomputeBlock),
    )
    // Table 3 / Eq. 20 per token: x_{l0} (nC) stored every L_r layers and F(H_pre x_l) (C) every layer; one block of
    // L_r layers recomputed at a time keeps x_l (nC) and two C-sized tensors per layer.
    const C = j.curve[0].counts.transient / (n + 2)
    assert.equal(C, j.config.dModel)
    for (const c of j.curve) {
      const Lr = c.recomputeBlock
      assert.equal(c.counts.stored, n * C * Math.ceil(L / Lr) + C * L, `stored at L_r = ${Lr}`)
      assert.equal(c.counts.transient, (n + 2) * C * Lr, `transient at L_r = ${Lr}`)
    }
  })

  for (const [args, pattern] of [
    [['--expansion', '1'], /expansion must be at least 2/],
    [['--pipeline-stages', '7'], /--pipeline-stages 7 must divide the 30 blocks/],
    [['--chart', 'memory.png'], /writes \.svg only/],
    [['--layer-unit', 'layers'], /--layer-unit/],
  ] as const) {
    it(`bad input (${args.join(' ')}) exits 2 with one Error: line`, async () => {
      const r = await runCli(['profile-memory', ...args])
      assert.equal(r.status, 2, showRun(r))
      const lines = r.stderr.split('\n').filter((l) => l.trim())
      assert.equal(lines.length, 1, r.stderr)
      assert.match(lines[0], pattern)
    })
  }

  it('text: the headline first (L_r* and the stage memory), 120 columns; how each item is counted under --verbose', async () => {
    const [r, v, j] = await Promise.all([
      runCli(['profile-memory']),
      runCli(['profile-memory', '--verbose']),
      runCli(['profile-memory', '--json']),
    ])
    for (const x of [r, v, j]) assert.equal(x.status, 0, showRun(x))
    const doc = JSON.parse(j.stdout)
    const lines = r.stdout.split('\n')
    assert.equal(
      lines[0],
      `paper-27b: L_r* = ${doc.argmin[0]} (closed form √(nL/(n+2)) = ${doc.closedForm.toFixed(2)})`,
    )
    const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`
    assert.ok(lines[1].includes(`mHC residual path ${gib(doc.paths[0].perGpuBytes)} at L_r*`), lines[1])
    assert.ok(lines[1].endsWith(`${gib(doc.perGpu.at(-1).bytes)} in all`), lines[1])
    assert.ok(Math.max(...lines.map((l) => l.length)) <= 120, 'fits 120 columns')
    assert.doesNotMatch(r.stdout, /Korthikanti/)
    assert.match(v.stdout, /Korthikanti/) // the "how" column
  })

  it('--measure shows its progress on stderr (L_r by L_r), and nothing there under --json', async () => {
    const args = ['profile-memory', '--measure', '--layers', '2', '--d-model', '8', '--batch', '4', '--seq-len', '4']
    const [r, j] = await Promise.all([
      runCli([...args, '--backend', 'wasm']),
      runCli([...args, '--backend', 'wasm', '--json']),
    ])
    assert.equal(r.status, 0, showRun(r))
    assert.equal(j.status, 0, showRun(j))
    assert.match(r.stderr, /measured 4\/4 \| L_r = 4: [\d.]+ MiB/)
    assert.match(r.stdout.split('\n')[0], /^measured optimum L_r = \d+/) // the headline first
    assert.ok(Math.max(...r.stdout.split('\n').map((l) => l.trimEnd().length)) <= 120, 'fits 120 columns')
    assert.equal(j.stderr, '')
    assert.equal(JSON.parse(j.stdout).rows.length, 4)
  })
})
