// mhc check end to end. The first pair is the project's smoke test of the paper's claim: with the same config and seed,
// an HC run trained without gradient clipping fails the stability gate and the mHC run passes.
import {XMLParser, XMLValidator} from 'fast-xml-parser'
import assert from 'node:assert/strict'
import {cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {fileURLToPath} from 'node:url'

import {CliResult, runCli} from '../helpers.js'

const repo = fileURLToPath(new URL('../..', import.meta.url))
let tmp = ''
before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'mhc-check-'))
})
after(() => rmSync(tmp, {recursive: true, force: true}))

type Run = CliResult
const check = (args: string[]) => runCli(['check', ...args])
const show = (r: Run) => `exit ${r.status}\n${r.stdout.slice(-2500)}\n${r.stderr.slice(-1500)}`
// 4 blocks (8 layers), 150 steps at lr 0.01, no clipping: seconds on a CPU, enough for HC's H_res products to blow up.
const PAIR = [
  '--train',
  '--preset',
  'tiny',
  '--layers',
  '4',
  '--steps',
  '150',
  '--lr',
  '0.01',
  '--grad-clip',
  '0',
  '--seed',
  '7',
  '--json',
]

describe('smoke: HC fails the gate, mHC passes (same config and seed, no clipping)', {concurrency: 2}, () => {
  it('HC: exit 1, the composite-gain rule fails at a named layer', async () => {
    const junit = join(tmp, 'hc.xml')
    const r = await check([...PAIR, '--arch', 'hc', '--out', join(tmp, 'hc'), '--junit', junit])
    assert.equal(r.status, 1, show(r))
    const out = JSON.parse(r.stdout)
    assert.equal(out.pass, false)
    const composite = out.rules.find((x: any) => x.rule === 'composite-gain')
    assert.equal(composite.pass, false)
    assert.equal(typeof composite.value, 'number')
    assert.ok(composite.value > 10, `HC composite gain ${composite.value}`)
    assert.equal(composite.threshold, 2)
    assert.equal(composite.unit, 'Amax gain')
    assert.ok(
      Number.isInteger(composite.layer) && composite.layer >= 0 && composite.layer < 8,
      `layer ${composite.layer}`,
    )
    assert.match(composite.detail, /at layer \d+ \((attn|mlp)\)/)
    assert.equal(out.kept, true, '--out keeps the run')
    for (const f of ['finite-loss', 'finite-gradients', 'finite-weights'])
      assert.equal(out.rules.find((x: any) => x.rule === f).pass, true, f)
    const xml = readFileSync(junit, 'utf8')
    assert.equal(XMLValidator.validate(xml), true)
    const cases = [
      new XMLParser({ignoreAttributes: false, attributeNamePrefix: '@'}).parse(xml).testsuites.testsuite.testcase,
    ].flat()
    assert.deepEqual(
      cases.map((c: any) => c['@name']),
      out.rules.map((x: any) => x.rule),
    )
    assert.ok(cases.find((c: any) => c['@name'] === 'composite-gain').failure)
  })

  it('mHC: exit 0, every rule passes, including doubly-stochastic', async () => {
    const r = await check([...PAIR, '--arch', 'mhc', '--out', join(tmp, 'mhc')])
    assert.equal(r.status, 0, show(r))
    const out = JSON.parse(r.stdout)
    assert.equal(out.pass, true)
    assert.deepEqual(
      out.rules.map((x: any) => x.rule),
      [
        'finite-loss',
        'finite-gradients',
        'finite-weights',
        'loss-spike',
        'grad-norm-explosion',
        'single-gain',
        'composite-gain',
        'doubly-stochastic',
      ],
    )
    assert.ok(out.rules.find((x: any) => x.rule === 'composite-gain').value <= 2)
  })

  it('--train without --out trains in a temporary directory and removes it afterwards', async () => {
    const r = await check(['--train', '--preset', 'tiny', '--steps', '3', '--json'])
    assert.equal(r.status, 0, show(r))
    const out = JSON.parse(r.stdout)
    assert.equal(out.kept, false)
    assert.equal(existsSync(out.run), false, `${out.run} was left behind`)
  })
})

/** A copy of the mHC fixture whose metrics.jsonl has a corrupt third line. */
function corruptRun(): string {
  const dir = join(tmp, 'corrupt-metrics')
  cpSync(join(repo, 'fixtures', 'mhc'), dir, {recursive: true})
  const f = join(dir, 'metrics.jsonl')
  const lines = readFileSync(f, 'utf8').split('\n')
  lines[2] = lines[2].slice(0, 20) + '#' + lines[2].slice(21)
  writeFileSync(f, lines.join('\n'))
  return dir
}

describe('check on run directories and bad input', {concurrency: 2}, () => {
  it('the committed fixtures: hc fails, mhc passes; --skip removes rules; thresholds are honoured', async () => {
    const hc = await check([join(repo, 'fixtures', 'hc'), '--tokens', '256'])
    assert.equal(hc.status, 1, show(hc))
    assert.match(hc.stdout, /│ composite-gain\s+│\s+FAIL/)
    assert.match(hc.stderr, /^FAIL composite-gain: /m)
    const loose = await check([
      join(repo, 'fixtures', 'hc'),
      '--tokens',
      '256',
      '--json',
      '--max-gain',
      '1e6',
      '--max-composite-gain',
      '1e6',
      '--skip',
      'grad-norm-explosion',
    ])
    assert.equal(loose.status, 0, show(loose))
    assert.equal(
      JSON.parse(loose.stdout).rules.some((x: any) => x.rule === 'grad-norm-explosion'),
      false,
    )
    const mhc = await check([join(repo, 'fixtures', 'mhc'), '--tokens', '256'])
    assert.equal(mhc.status, 0, show(mhc))
  })

  it('bad input exits 2 with one Error: line', async () => {
    for (const [args, pattern] of [
      [[], /give one of: a run directory, --train, or --maps FILE/],
      [[join(tmp, 'nope')], /no metrics\.jsonl/],
      [['--train', '--arch', 'foo'], /Expected --arch=foo to be one of/],
      [[join(repo, 'fixtures', 'mhc'), '--skip', 'bogus'], /Expected --skip=bogus to be one of/],
      [[join(repo, 'fixtures', 'mhc'), '--spike-k', '0'], /Expected a positive number/],
      [[corruptRun(), '--tokens', '64'], /metrics\.jsonl:3: not a JSON record/],
    ] as [string[], RegExp][]) {
      const r = await check(args)
      assert.equal(r.status, 2, show(r))
      const errors = r.stderr.split('\n').filter((l) => l.startsWith('Error:'))
      assert.equal(errors.length, 1, show(r))
      assert.match(errors[0], pattern)
    }
  })
})

describe('check --maps: the gain gates on maps recorded anywhere', () => {
  it('mHC maps pass the gain and doubly-stochastic rules; HC maps fail the gain rules (exit 1); training rules do not apply', async () => {
    const files: Record<string, string> = {}
    for (const arch of ['mhc', 'hc']) {
      files[arch] = join(tmp, `${arch}-maps.safetensors`)
      const saved = await runCli([
        'analyze-gain',
        join(repo, 'fixtures', arch),
        '--tokens',
        '256',
        '--save-maps',
        files[arch],
        '--json',
      ])
      assert.equal(saved.status, 0, show(saved))
    }

    const mhc = await check(['--maps', files.mhc, '--json'])
    assert.equal(mhc.status, 0, show(mhc))
    const j = JSON.parse(mhc.stdout)
    assert.deepEqual(
      j.rules.map((r: {rule: string}) => r.rule),
      ['single-gain', 'composite-gain', 'doubly-stochastic'],
    )
    const hc = await check(['--maps', files.hc, '--json'])
    assert.equal(hc.status, 1, show(hc))
    const failed = JSON.parse(hc.stdout).rules.filter((r: {pass: boolean}) => !r.pass)
    assert.deepEqual(
      failed.map((r: {rule: string}) => r.rule),
      ['single-gain', 'composite-gain'],
    )
    const both = await check([join(repo, 'fixtures', 'mhc'), '--maps', files.mhc])
    assert.equal(both.status, 2, show(both))
    assert.match(both.stderr, /give one of: a run directory, --train, or --maps FILE/)
  })
})
