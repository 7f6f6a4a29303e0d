// mhc plot as a user runs it: the summary is the runs' own records, the files are written, bad input is one error.
import assert from 'node:assert/strict'
import {existsSync, mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, it} from 'node:test'

import {repo, runCli, showRun} from '../helpers.js'

let tmp = ''
before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'mhc-plot-'))
})
after(() => rmSync(tmp, {recursive: true, force: true}))

const records = (run: string) =>
  readFileSync(join(run, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l))

it('two runs: a summary from their metrics, an SVG and a PNG of all the curves', async () => {
  const runs = ['hc', 'mhc'].map((f) => join(repo, 'fixtures', f))
  const svg = join(tmp, 'curves.svg')
  const png = join(tmp, 'curves.png')
  const r = await runCli(['plot', ...runs, '--out', svg, '--out', png, '--json'])
  assert.equal(r.status, 0, showRun(r))
  const doc = JSON.parse(r.stdout)
  for (const [i, run] of runs.entries()) {
    const recs = records(run)
    const steps = recs.filter((x) => x.type === 'step')
    const evals = recs.filter((x) => x.type === 'eval')
    const best = evals.reduce((a, b) => (b.valLoss < a.valLoss ? b : a))
    assert.deepEqual(doc.runs[i], {
      run,
      steps: steps.at(-1).step,
      trainLoss: steps.at(-1).loss,
      valLoss: evals.at(-1).valLoss,
      bestValLoss: best.valLoss,
      bestStep: best.step,
    })
  }

  const text = readFileSync(svg, 'utf8')
  for (const panel of ['loss (nats/byte)', 'global gradient norm', 'learning rate'])
    assert.ok(text.includes(panel), panel)
  assert.deepEqual([...readFileSync(png).subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
})

it('bad input: an unknown file type, a directory that is not a run; nothing is written', async () => {
  const out = join(tmp, 'x.jpg')
  let r = await runCli(['plot', join(repo, 'fixtures', 'hc'), '--out', out])
  assert.equal(r.status, 2, showRun(r))
  assert.match(r.stderr, /writes \.svg or \.png only/)
  r = await runCli(['plot', join(repo, 'src'), '--out', join(tmp, 'y.svg')])
  assert.equal(r.status, 2, showRun(r))
  assert.match(r.stderr, /no metrics\.jsonl \(not a run directory\)/)
  assert.ok(!existsSync(out) && !existsSync(join(tmp, 'y.svg')))
})
