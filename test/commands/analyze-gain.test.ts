// mhc analyze-gain on the committed fixtures (fixtures/regenerate.sh): what the paper shows, gates, bad input.
import assert from 'node:assert/strict'
import {cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {fileURLToPath} from 'node:url'

import {CliResult, runCli} from '../helpers.js'

const repo = fileURLToPath(new URL('../..', import.meta.url))
const FIX = {
  hc: join(repo, 'fixtures', 'hc'),
  mhc: join(repo, 'fixtures', 'mhc'),
  baseline: join(repo, 'fixtures', 'baseline'),
}
let tmp = ''
before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'mhc-gain-'))
})
after(() => rmSync(tmp, {recursive: true, force: true}))

type Run = CliResult
const cli = (args: string[], cwd?: string) => runCli(['analyze-gain', ...args], {cwd})
const show = (r: Run) => `exit ${r.status}\n${r.stdout.slice(0, 1500)}\n${r.stderr.slice(0, 1500)}`
const errorLine = (r: Run) => r.stderr.split('\n').filter((l) => l.startsWith('Error:'))

describe('analyze-gain on HC, mHC and baseline fixtures (same config and seed)', {concurrency: 2}, () => {
  let json: any
  before(async () => {
    const r = await cli([
      FIX.hc,
      FIX.mhc,
      FIX.baseline,
      '--json',
      '--tokens',
      '1024',
      '--chart',
      join(tmp, 'g.svg'),
      '--csv',
      join(tmp, 'g.csv'),
    ])
    assert.equal(r.status, 0, show(r))
    json = JSON.parse(r.stdout)
  })

  it('mHC: single-layer gains within Sinkhorn tolerance of 1, composite gains at most 2', () => {
    const mhc = json.runs[1]
    assert.equal(mhc.arch, 'mhc')
    for (const l of mhc.layers) {
      // rows are normalised last, so forward gains are 1 to float precision; columns converge within t_max = 20
      assert.ok(Math.abs(l.single.forward.mean - 1) < 1e-5, `layer ${l.layer} single fwd ${l.single.forward.mean}`)
      assert.ok(Math.abs(l.single.backward.mean - 1) < 0.1, `layer ${l.layer} single bwd ${l.single.backward.mean}`)
      assert.ok(l.mean.single.minEntry >= 0, 'doubly stochastic matrices have no negative entries')
      assert.ok(
        l.composite.forward.max <= 2 && l.composite.backward.max <= 2,
        `layer ${l.layer} composite ${l.composite.forward.max} ${l.composite.backward.max}`,
      )
    }
  })

  it('HC: composite gains clearly above mHC and growing with depth', () => {
    const [hc, mhc] = json.runs
    const worst = (r: any) => Math.max(...r.layers.map((l: any) => l.composite.forward.mean))
    assert.ok(worst(hc) > 10 * worst(mhc), `HC ${worst(hc)} vs mHC ${worst(mhc)}`)
    // the product over more layers (smaller l) is larger: compare the first and the last layer's composites
    const L = hc.layers.length
    assert.ok(hc.layers[0].composite.forward.mean > 3 * hc.layers[L - 1].composite.forward.mean)
    assert.ok(
      hc.layers.some((l: any) => l.single.forward.mean > 1.2),
      'HC single-layer mappings left the identity',
    )
  })

  it('baseline: the trivial identity, every gain exactly 1', () => {
    const b = json.runs[2]
    assert.equal(b.arch, 'baseline')
    assert.equal(b.n, 1)
    for (const l of b.layers) assert.deepEqual([l.single.forward.mean, l.composite.backward.max], [1, 1])
  })

  it('writes a CSV with one row per layer per checkpoint, and an SVG chart', () => {
    const lines = readFileSync(join(tmp, 'g.csv'), 'utf8').trim().split('\n')
    assert.match(lines[0], /^checkpoint,arch,step,layer,sublayer,single_forward_mean,/)
    assert.equal(lines.length, 1 + 8 * 3)
    const svg = readFileSync(join(tmp, 'g.svg'), 'utf8')
    assert.match(svg, /^<svg/)
    assert.match(svg, /composite/)
  })

  it('gates: --max-composite-gain 2 fails HC with exit 1 naming the layer, passes mHC; each gate bounds both directions', async () => {
    const fail = await cli([FIX.hc, '--tokens', '256', '--max-composite-gain', '2'])
    assert.equal(fail.status, 1, show(fail))
    const lines = fail.stderr.split('\n').filter((l) => l.startsWith('FAIL'))
    assert.equal(lines.length, 1)
    assert.match(
      lines[0],
      /^FAIL: composite Amax gain \(worst of forward and backward, mean over tokens\) [\d.e+]+ \((forward|backward)\) at layer 0 \(attn\) of .*fixtures\/hc\/ckpt-000150 > --max-composite-gain 2$/,
    )
    const pass = await cli([FIX.mhc, '--tokens', '256', '--max-composite-gain', '2', '--max-gain', '1.1'])
    assert.equal(pass.status, 0, show(pass))
    const json = await cli([FIX.hc, FIX.mhc, '--tokens', '256', '--max-gain', '1.5', '--json'])
    assert.equal(json.status, 1, show(json))
    const out = JSON.parse(json.stdout)
    assert.equal(out.pass, false)
    assert.equal(out.gates[0].run.includes('fixtures/hc'), true)
    assert.equal(typeof out.gates[0].worst, 'number')
    assert.ok(['forward', 'backward'].includes(out.gates[0].direction))
    // mHC rows are normalised last (forward gain 1 to float precision); the worst token's columns deviate slightly,
    // so a bound just above 1 fails on the backward direction: the gate looks at both.
    const worst = await cli([FIX.mhc, '--tokens', '256', '--max-gain', '1.0001', '--gate-on', 'max', '--json'])
    assert.equal(worst.status, 1, show(worst))
    assert.equal(JSON.parse(worst.stdout).gates[0].direction, 'backward')
  })

  it('no file is written unless asked: no chart without --chart; --chart refuses an extension it does not write', async () => {
    const cwd = mkdtempSync(join(tmpdir(), 'mhc-cwd-'))
    try {
      const r = await cli([FIX.mhc, '--tokens', '64'], cwd)
      assert.equal(r.status, 0, show(r))
      assert.deepEqual(readdirSync(cwd), [], 'nothing written to the working directory')
      const png = await cli([FIX.mhc, '--tokens', '64', '--chart', join(cwd, 'g.png')], cwd)
      assert.equal(png.status, 2, show(png))
      assert.match(errorLine(png)[0], /--chart .*g\.png: writes \.svg only/)
      assert.deepEqual(readdirSync(cwd), [])
    } finally {
      rmSync(cwd, {recursive: true, force: true})
    }
  })

  it('bad input exits 2 with one Error: line', async () => {
    const corrupt = join(tmp, 'corrupt')
    cpSync(FIX.mhc, corrupt, {recursive: true})
    const w = join(corrupt, 'ckpt-000150', 'model.safetensors')
    const b = readFileSync(w)
    b[b.length - 5] ^= 0x40
    writeFileSync(w, b)
    const mismatched = join(tmp, 'mismatched')
    cpSync(FIX.hc, mismatched, {recursive: true})
    const m = join(mismatched, 'ckpt-000150', 'manifest.json')
    const man = JSON.parse(readFileSync(m, 'utf8'))
    man.model.expansion = 2
    writeFileSync(m, JSON.stringify(man))
    const cases: [string[], RegExp][] = [
      [[join(tmp, 'nope')], /no such checkpoint or run directory/],
      [[corrupt], /model\.safetensors is corrupt \(checksum mismatch\)/],
      [[mismatched], /has shape \[.*\], the config implies/],
      [[FIX.mhc, '--heatmap-layers', '99'], /--heatmap-layers 99: .* has layers 0\.\.7/],
      [[FIX.mhc, '--max-backward-gain', '1'], /Nonexistent flag: --max-backward-gain/],
      [[FIX.mhc, '--tokens', '0'], /--tokens/],
      [[FIX.mhc, '--max-gain', '-1'], /Expected a positive number/],
    ]
    for (const [args, pattern] of cases) {
      const r = await cli(args)
      assert.equal(r.status, 2, show(r))
      assert.equal(errorLine(r).length, 1, show(r))
      assert.match(errorLine(r)[0], pattern)
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace')
    }
  })
})

describe('maps files: a model analysed from what any framework recorded', () => {
  it('--save-maps then --maps: the same analysis as the checkpoint, with no engine opened', async () => {
    const file = join(tmp, 'mhc-maps.safetensors')
    const fromCheckpoint = await cli([FIX.mhc, '--tokens', '256', '--save-maps', file, '--json'])
    assert.equal(fromCheckpoint.status, 0, show(fromCheckpoint))
    const fromFile = await cli(['--maps', file, '--json'])
    assert.equal(fromFile.status, 0, show(fromFile))
    const a = JSON.parse(fromCheckpoint.stdout).runs[0]
    const b = JSON.parse(fromFile.stdout)
    assert.equal(b.backend, null, 'a maps file needs no engine')
    assert.equal(b.runs[0].tokens, a.tokens)
    assert.equal(b.runs[0].n, a.n)
    assert.deepEqual(b.runs[0].layers, a.layers)
    assert.deepEqual(b.runs[0].meanComposite, a.meanComposite)
    // Side by side with a checkpoint, and gated like one.
    const both = await cli([FIX.hc, '--maps', file, '--tokens', '256', '--max-composite-gain', '2', '--json'])
    assert.equal(both.status, 1, show(both))
    const {gates} = JSON.parse(both.stdout)
    assert.deepEqual(
      gates.map((g: {run: string; pass: boolean}) => g.pass),
      [false],
      JSON.stringify(gates),
    )
    assert.match(JSON.stringify(gates), /hc/)
  })

  it('a corrupt maps file, or nothing to analyse, is one Error: line and exit 2', async () => {
    const bad = join(tmp, 'bad-maps.safetensors')
    writeFileSync(bad, 'not a safetensors file at all')
    for (const args of [['--maps', bad], []]) {
      const r = await cli(args)
      assert.equal(r.status, 2, show(r))
      assert.equal(errorLine(r).length, 1, show(r))
    }
  })
})
