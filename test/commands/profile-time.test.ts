// mhc profile-time end to end (spawned, for real exit codes); the model itself: test/profile/cost-models/time.test.ts.
import assert from 'node:assert/strict'
import {mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {describe, it} from 'node:test'

import {runCli} from '../helpers.js'

describe('mhc profile-time (CLI)', {concurrency: true}, () => {
  const cli = (args: string[]) => runCli(['profile-time', ...args], {timeoutMs: 60_000})

  it('--json: the headline, five scenarios, the assumptions and an SVG chart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mhc-pt-'))
    try {
      const svg = join(dir, 'time.svg')
      const r = await cli(['--json', '--chart', svg, '--timeline-width', '60'])
      assert.equal(r.status, 0, r.stderr)
      const j = JSON.parse(r.stdout)
      assert.equal(j.preset, 'paper-27b')
      assert.equal(j.backend, null, 'no engine without --measure, and the key is there to say so')
      assert.ok(Math.abs(j.headline.overhead - 0.067) <= 0.02, `headline ${j.headline.overhead}`)
      assert.deepEqual(
        j.scenarios.map((s: any) => s.id),
        ['hc', 'mhc-unfused', 'mhc-fused', 'mhc-fused-recompute', 'mhc-paper'],
      )
      assert.equal(j.headline.hcUnfused, j.scenarios[0].overhead)
      for (const flag of [
        '--mfu',
        '--bandwidth-efficiency',
        '--launch-us',
        '--activation-bytes',
        '--overlap-p2p',
        '--micro-batches',
        '--recompute-block',
        '--hide-fraction',
      ]) {
        assert.ok(
          j.assumptions.some((a: any) => a.flag.includes(flag)),
          `assumption for ${flag}`,
        )
      }

      assert.equal(j.timeline.split('\n').length, 6)
      assert.match(readFileSync(svg, 'utf8'), /^<svg/)
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('text report: the headline first, 120 columns; the assumptions and the timeline under --verbose', async () => {
    const args = ['--preset', 'paper-3b', '--schedule', '1f1b', '--pipeline-stages', '3', '--micro-batches', '6']
    const [r, v] = await Promise.all([cli(args), cli([...args, '--verbose'])])
    assert.equal(r.status, 0, r.stderr)
    assert.equal(v.status, 0, v.stderr)
    const first = r.stdout.split('\n')[0]
    assert.match(first, /^mHC time overhead, paper-3b on H800: the paper's design \+\d+\.\d% \(paper: \+6\.7% at n = 4/)
    assert.match(first, /HC unfused \+\d+\.\d%$/)
    assert.ok(Math.max(...r.stdout.split('\n').map((l) => l.length)) <= 120, 'the default output fits 120 columns')
    assert.doesNotMatch(r.stdout, /rank {2}2 \||assumptions \(every one is a flag\)/)
    assert.match(v.stdout, /assumptions \(every one is a flag\)/)
    assert.match(v.stdout, /rank {2}2 \|/)
    assert.equal(v.stdout.split('\n')[0], first)
  })

  for (const [args, pattern] of [
    [['--mfu', '2'], /--mfu/],
    [['--pipeline-stages', '5'], /DualPipe needs an even number of pipeline ranks/],
    [['--act-bytes', '2'], /Nonexistent flag: --act-bytes/],
    [['--chart', 'time.png'], /--chart time\.png: writes \.svg only/],
    [['--hardware', 'tpu'], /--hardware/],
    // The same rules as train for an mHC model: n ≥ 2, t_max ≥ 1.
    [['--expansion', '1'], /expansion must be at least 2 for hc\/mhc/],
    [['--sinkhorn-iters', '0'], /sinkhornIters must be at least 1 for mhc/],
  ] as const) {
    it(`bad input (${args.join(' ')}) exits 2 with one Error: line`, async () => {
      const r = await cli([...args])
      assert.equal(r.status, 2, r.stderr)
      const lines = r.stderr.split('\n').filter((l) => l.trim())
      assert.equal(lines.length, 1, r.stderr)
      assert.match(lines[0], /^Error: /)
      assert.match(lines[0], pattern)
      assert.equal(r.stdout, '')
    })
  }
})
