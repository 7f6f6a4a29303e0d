// mhc report: one self-contained HTML file whose numbers are the runs' own. (That it renders in a real browser is
// bench/report-check.ts, with its committed screenshot: Chromium is not part of the test machines.)
import assert from 'node:assert/strict'
import {existsSync, mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, it} from 'node:test'

import {repo, runCli, showRun} from '../helpers.js'

let tmp = ''
before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'mhc-report-'))
})
after(() => rmSync(tmp, {recursive: true, force: true}))

it('hc and baseline: every section, the runs’ numbers, heatmaps for hc only, nothing loaded from elsewhere', async () => {
  const out = join(tmp, 'report.html')
  const runs = ['hc', 'baseline'].map((f) => join(repo, 'fixtures', f))
  const r = await runCli(['report', ...runs, '--out', out, '--tokens', '256', '--backend', 'wasm', '--json'])
  assert.equal(r.status, 0, showRun(r))
  const html = readFileSync(out, 'utf8')
  for (const id of ['summary', 'curves', 'gains', 'heatmaps', 'config'])
    assert.match(html, new RegExp(`<h2 id="${id}">`))
  // Self-contained: no scripts, no stylesheets or images fetched, no external references.
  assert.doesNotMatch(html, /<script|<link|<img|@import|url\(/i)
  assert.doesNotMatch(html, /(?:src|href)="https?:/i)
  // The curves, the gains, and 3 layers × (single, composite) heatmaps of the one hc run.
  assert.equal(html.match(/<svg/g)?.length, 2 + 6)
  assert.match(html, /A residual connection: H_res is the identity/)
  // The summary row of each run holds its last validation loss from metrics.jsonl.
  for (const run of runs) {
    const evals = readFileSync(join(run, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
      .filter((e) => e.type === 'eval')
    const row = html.split('<tr>').find((t) => t.startsWith(`<td>${run}</td>`))
    assert.ok(row?.includes(`<td>${evals.at(-1).valLoss.toFixed(4)}</td>`), `${run}: ${row}`)
  }

  assert.deepEqual(
    JSON.parse(r.stdout).runs.map((x: any) => [x.arch, x.tokens]),
    [
      ['hc', 256],
      ['baseline', 0],
    ],
  )
})

it('bad input: not a run, a wrong extension; nothing written', async () => {
  const out = join(tmp, 'bad.html')
  let r = await runCli(['report', join(repo, 'src'), '--out', out])
  assert.equal(r.status, 2, showRun(r))
  r = await runCli(['report', join(repo, 'fixtures', 'hc'), '--out', join(tmp, 'r.pdf')])
  assert.equal(r.status, 2, showRun(r))
  assert.match(r.stderr, /writes \.html or \.htm only/)
  assert.ok(!existsSync(out))
})
