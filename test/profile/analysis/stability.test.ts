// Each stability rule on synthetic inputs built to pass or to fail it, and the JUnit report.
import {XMLParser, XMLValidator} from 'fast-xml-parser'
import assert from 'node:assert/strict'
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {test} from 'node:test'

import {InputError} from '../../../src/model/errors.js'
import {readStepRecords} from '../../../src/model/train/run-dir.js'
import {analyzeGains} from '../../../src/profile/analysis/gain.js'
import {
  CheckInput,
  evaluateRules,
  growthRatios,
  median,
  RuleResult,
  spikeScores,
  StepRecord,
  Thresholds,
  toJUnit,
  worstStochasticity,
} from '../../../src/profile/analysis/stability.js'

const T: Thresholds = {
  spikeK: 6,
  spikeWindow: 50,
  warmup: 20,
  maxGradRatio: 10,
  maxGain: 1.5,
  maxCompositeGain: 2,
  gainAggregate: 'mean',
  dsTolerance: 0.1,
}

/** A decaying, noisy loss curve (deterministic LCG noise), the shape of a healthy run. */
function healthy(n = 300): StepRecord[] {
  let s = 12_345
  const noise = () => {
    s = (s * 1_103_515_245 + 12_345) % 2 ** 31
    return (s / 2 ** 31 - 0.5) * 0.1
  }

  return Array.from({length: n}, (_, i) => ({
    step: i + 1,
    loss: 2 + 3 * Math.exp(-i / 30) + noise(),
    gradNorm: 0.8 + noise(),
  }))
}

const rule = (rs: RuleResult[], name: string) => {
  const r = rs.find((x) => x.rule === name)
  assert.ok(r, `rule ${name} reported`)
  return r
}

test('median and robust spike scores', () => {
  assert.equal(median([3, 1, 2]), 2)
  assert.equal(median([4, 1, 3, 2]), 2.5)
  // window [1,2,3,...]: median 5.5 for 1..10; MAD = 2.5 → σ = 3.7065; x = 20 scores (20 − 5.5) / 3.7065
  const xs = [...Array.from({length: 10}, (_, i) => i + 1), 20]
  const z = spikeScores(xs, 50, 0)
  assert.equal(z[9], undefined, 'fewer than 10 predecessors: no score')
  assert.ok(Math.abs(z[10]! - 14.5 / (2.5 * 1.4826)) < 1e-12)
  assert.deepEqual(growthRatios([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4], 50, 0).slice(10), [4])
})

test('loss-spike: a healthy curve passes; one jump of +1 nat fails at its step; a jump inside the warm-up is ignored', () => {
  const ok = evaluateRules({steps: healthy()}, T)
  assert.equal(rule(ok, 'loss-spike').pass, true, String(rule(ok, 'loss-spike').value))
  const spiky = healthy()
  spiky[199].loss += 1
  const bad = rule(evaluateRules({steps: spiky}, T), 'loss-spike')
  assert.equal(bad.pass, false)
  assert.equal(bad.step, 200)
  assert.equal(bad.threshold, 6)
  assert.ok(typeof bad.value === 'number' && bad.value > 6, `z ${bad.value}`)
  assert.match(bad.detail!, /step 200/)
  const early = healthy()
  early[15].loss += 1
  assert.equal(rule(evaluateRules({steps: early}, T), 'loss-spike').pass, true)
})

test('grad-norm-explosion: a 30× gradient norm fails, naming the step', () => {
  const steps = healthy()
  steps[149].gradNorm *= 30
  const r = rule(evaluateRules({steps}, T), 'grad-norm-explosion')
  assert.equal(r.pass, false)
  assert.equal(r.step, 150)
  assert.ok(r.value! > 25 && r.value! < 35, `ratio ${r.value}`)
  assert.equal(r.threshold, 10)
  assert.equal(rule(evaluateRules({steps: healthy()}, T), 'grad-norm-explosion').pass, true)
})

test('finiteness: NaN loss, Inf gradient norm and non-finite weights each fail with the first step', () => {
  const steps = healthy()
  steps[36].loss = Number.NaN
  steps[80].gradNorm = Infinity
  const rs = evaluateRules(
    {steps, checkpoint: {dir: 'ck', arch: 'mhc', doublyStochastic: true, nonFiniteWeights: 3}},
    T,
  )
  assert.equal(rule(rs, 'finite-loss').pass, false)
  assert.match(rule(rs, 'finite-loss').detail!, /first at step 37/)
  assert.equal(rule(rs, 'finite-gradients').pass, false)
  assert.match(rule(rs, 'finite-gradients').detail!, /step 81/)
  assert.equal(rule(rs, 'finite-weights').pass, false)
  assert.equal(rule(rs, 'finite-weights').value, 3)
  assert.equal(rule(rs, 'finite-loss').value, 1)
  assert.equal(rule(rs, 'finite-loss').step, 37)
  assert.equal(rule(rs, 'finite-loss').threshold, 0)
  assert.equal(rule(evaluateRules({steps: []}, T), 'finite-loss').value, null, 'nothing measured: null, never a number')
  assert.equal(rule(evaluateRules({steps: []}, T), 'finite-loss').pass, false, 'a run with no steps is not a pass')
  assert.equal(rule(evaluateRules({steps: healthy()}, T), 'finite-weights').pass, false, 'no checkpoint: fail')
})

test('gain rules on hand-built H_res beyond and within the bounds', () => {
  const layers = (m: number[], L: number) => Array.from({length: L}, () => Float32Array.from(m))
  // diag(1.2, 1): single gain 1.2 (passes 1.5); the composite of 4 layers has gain 1.2^4 = 2.07 (fails 2)
  const a = analyzeGains(layers([1.2, 0, 0, 1], 4), 2)
  const rs = evaluateRules(
    {steps: healthy(), checkpoint: {dir: 'ck', arch: 'hc', nonFiniteWeights: 0, gains: a.layers}},
    T,
  )
  assert.equal(rule(rs, 'single-gain').pass, true)
  assert.equal(rule(rs, 'composite-gain').pass, false)
  assert.ok(Math.abs(rule(rs, 'composite-gain').value! - 1.2 ** 4) < 1e-5)
  assert.equal(rule(rs, 'composite-gain').threshold, 2)
  assert.equal(rule(rs, 'composite-gain').layer, 0)
  assert.equal(rule(rs, 'composite-gain').unit, 'Amax gain')
  // a column that sums to 1.6: backward single gain 1.6 fails 1.5
  const b = analyzeGains(layers([1, 0.6, 0, 0.4], 1), 2)
  assert.equal(
    rule(
      evaluateRules({steps: healthy(), checkpoint: {dir: 'ck', arch: 'hc', nonFiniteWeights: 0, gains: b.layers}}, T),
      'single-gain',
    ).pass,
    false,
  )
})

test('doubly-stochastic: permutations pass, a row summing to 1.2 or a negative entry fails (mHC only)', () => {
  const check = (m: number[]) => {
    const input: CheckInput = {
      steps: healthy(),
      checkpoint: {
        dir: 'ck',
        arch: 'mhc',
        doublyStochastic: true,
        nonFiniteWeights: 0,
        stochasticity: worstStochasticity([Float32Array.from(m)], 2),
      },
    }
    return rule(evaluateRules(input, T), 'doubly-stochastic')
  }

  assert.equal(check([0, 1, 1, 0]).pass, true)
  assert.equal(check([0.5, 0.5, 0.5, 0.5]).pass, true)
  const r = check([0.7, 0.5, 0.3, 0.5])
  assert.equal(r.pass, false)
  assert.ok(Math.abs(r.value! - 0.2) < 1e-6, `sum error ${r.value}`)
  assert.equal(r.layer, 0)
  assert.equal(r.threshold, 0.1)
  const negative = check([1.2, -0.2, -0.2, 1.2]) // sums are exactly 1: only the negative entries fail it
  assert.equal(negative.pass, false, 'negative entry')
  assert.ok(
    Math.abs(negative.value! - 0.2) < 1e-6 && negative.value! > negative.threshold,
    'the value explains the verdict',
  )
  assert.ok(negative.minEntry! < 0)
  const hc = evaluateRules({steps: healthy(), checkpoint: {dir: 'ck', arch: 'hc', nonFiniteWeights: 0}}, T)
  assert.equal(
    hc.some((x) => x.rule === 'doubly-stochastic'),
    false,
    'HC is not held to it',
  )
  const w = worstStochasticity(
    [Float32Array.from([1, 0, 0, 1]), Float32Array.from([1, 0, 0, 1, 0.6, 0.4, 0.4, 0.7])],
    2,
  )
  assert.equal(w.layer, 1)
  assert.ok(Math.abs(w.rowError - 0.1) < 1e-6 && Math.abs(w.columnError - 0.1) < 1e-6)
})

test('skip leaves rules out; the JUnit report parses as XML and lists each rule with its outcome', () => {
  const steps = healthy()
  steps[10].loss = Number.NaN
  const rs = evaluateRules({steps, skip: ['loss-spike']}, T)
  assert.equal(
    rs.some((r) => r.rule === 'loss-spike'),
    false,
  )
  const xml = toJUnit(rs, 'mhc check run & "x" <y>', 1.5)
  assert.equal(XMLValidator.validate(xml), true)
  const doc = new XMLParser({ignoreAttributes: false, attributeNamePrefix: '@'}).parse(xml)
  const suite = doc.testsuites.testsuite
  assert.equal(suite['@name'], 'mhc check run & "x" <y>')
  const cases = [suite.testcase].flat()
  assert.deepEqual(
    cases.map((c: any) => c['@name']),
    rs.map((r) => r.rule),
  )
  assert.equal(Number(suite['@failures']), rs.filter((r) => !r.pass).length)
  const failed = cases.filter((c: any) => c.failure)
  assert.deepEqual(
    failed.map((c: any) => c['@name']).sort(),
    rs
      .filter((r) => !r.pass)
      .map((r) => r.rule)
      .sort(),
  )
})

test('every rule is numeric in JSON: value and threshold numbers (or a null value), a unit, layer and step fields', () => {
  const a = analyzeGains([Float32Array.from([1, 0, 0, 1])], 2)
  const rs = evaluateRules(
    {
      steps: healthy(),
      checkpoint: {
        dir: 'ck',
        arch: 'mhc',
        doublyStochastic: true,
        nonFiniteWeights: 0,
        gains: a.layers,
        stochasticity: worstStochasticity([Float32Array.from([1, 0, 0, 1])], 2),
      },
    },
    T,
  )
  assert.equal(rs.length, 8)
  // eslint-disable-next-line unicorn/prefer-structured-clone -- the point is what survives JSON
  for (const r of JSON.parse(JSON.stringify(rs)) as RuleResult[]) {
    assert.ok(r.value === null || typeof r.value === 'number', `${r.rule} value ${r.value}`)
    assert.equal(typeof r.threshold, 'number', r.rule)
    assert.equal(typeof r.unit, 'string', r.rule)
    assert.ok('layer' in r && 'step' in r, r.rule)
  }
})

test('metrics.jsonl: a corrupt line is bad input naming its line; only a torn last line (no newline) is skipped', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mhc-metrics-'))
  try {
    const good = [
      {type: 'step', step: 1, loss: 3, gradNorm: 1},
      {type: 'eval', step: 1, valLoss: 3},
      {type: 'step', step: 2, loss: null, gradNorm: 2},
    ].map((r) => JSON.stringify(r))
    const f = join(dir, 'metrics.jsonl')
    writeFileSync(f, good.join('\n') + '\n')
    const ok = readStepRecords(f)
    assert.deepEqual(
      ok.steps.map((s) => s.step),
      [1, 2],
    )
    assert.ok(Number.isNaN(ok.steps[1].loss), 'null (JSON has no NaN) reads as NaN')
    assert.equal(ok.tornLastLine, false)
    writeFileSync(f, good.join('\n') + '\n{"type":"step","st')
    assert.equal(readStepRecords(f).tornLastLine, true)
    for (const notTorn of ['garbage', good.join('\n') + '\ngarbage', '{"type":"st']) {
      writeFileSync(f, notTorn)
      assert.throws(() => readStepRecords(f), InputError, `${JSON.stringify(notTorn)} is corrupt, not torn`)
    }

    for (const [bad, line, why] of [
      [[good[0], 'garbage', good[1]], 2, /not a JSON record/],
      [[good[0], '[1,2]', good[1]], 2, /not a metrics record/],
      [[good[0], good[1], '{"type":"step","step":"3","loss":1,"gradNorm":1}'], 3, /integer step/],
      [['{"type":"step","step":1,"loss":"x","gradNorm":1}'], 1, /numeric loss/],
      [[good[0], '{"type":"step","step":2,"loss":1', good[2]], 2, /not a JSON record/],
      [['garbage'], 1, /not a JSON record/], // one line, no record before it: not a torn append
    ] as [string[], number, RegExp][]) {
      writeFileSync(f, bad.join('\n') + '\n')
      assert.throws(
        () => readStepRecords(f),
        (e: unknown) => e instanceof InputError && e.message.startsWith(`${f}:${line}: `) && why.test(e.message),
      )
    }
  } finally {
    rmSync(dir, {recursive: true, force: true})
  }
})
