// Stability rules a CI job can gate on: finiteness, loss spikes, gradient-norm explosions, Amax gains, and (mHC)
// how doubly stochastic H_res really is. Pure functions over metric series and gain analyses.
import {XMLBuilder} from 'fast-xml-parser'

import type {StepRecord} from '../../model/train/run-dir.js'

import {LayerGains} from './gain.js'

export type {StepRecord} from '../../model/train/run-dir.js'

/**
 * One rule's verdict, numeric so a pipeline can compare: `value` against `threshold` (both in `unit`; null when
 * nothing could be measured, e.g. no steps or no checkpoint), the worst `layer` or the first/worst `step` where the
 * rule looks at one, and `detail` for people.
 */
export interface RuleResult {
  rule: string
  description: string
  pass: boolean
  value: number | null
  threshold: number
  unit: string
  layer: number | null
  step: number | null
  direction?: 'forward' | 'backward' // gain rules: which direction was worst
  minEntry?: number // doubly-stochastic: the smallest entry of any token's H_res
  /** The value as printed: also for what JSON cannot hold (a NaN or infinite gain becomes null there, "NaN" here). */
  display: string
  detail?: string
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

/**
 * Robust upward-spike score of each point against the `window` points before it: (x − median) / (1.4826·MAD), the
 * MAD floored at 1% of |median| so that a perfectly flat stretch does not turn noise into infinite scores.
 * Points before `warmup` (and without `minHistory` predecessors) get no score: early training is meant to move fast.
 */
export function spikeScores(xs: number[], window: number, warmup: number, minHistory = 10): (number | undefined)[] {
  return xs.map((x, i) => {
    if (i < warmup || i < minHistory) return
    const past = xs.slice(Math.max(0, i - window), i).filter(Number.isFinite)
    if (past.length < minHistory) return
    const med = median(past)
    const mad = median(past.map((v) => Math.abs(v - med))) * 1.4826
    return (x - med) / Math.max(mad, 0.01 * Math.abs(med), 1e-12)
  })
}

/** Ratio of each value to the median of the `window` values before it (gradient-norm explosions). */
export function growthRatios(xs: number[], window: number, warmup: number, minHistory = 10): (number | undefined)[] {
  return xs.map((x, i) => {
    if (i < warmup || i < minHistory) return
    const past = xs.slice(Math.max(0, i - window), i).filter(Number.isFinite)
    return past.length < minHistory ? undefined : x / Math.max(median(past), 1e-12)
  })
}

export interface Thresholds {
  spikeK: number // robust standard deviations above the rolling median
  spikeWindow: number
  warmup: number // steps excluded from the spike and explosion rules
  maxGradRatio: number // grad norm / rolling median
  maxGain: number // single-layer Amax gain (forward and backward)
  maxCompositeGain: number // composite Amax gain (forward and backward)
  gainAggregate: 'mean' | 'max'
  dsTolerance: number // |row or column sum − 1| of every token's H_res
}

export interface CheckInput {
  steps: StepRecord[]
  checkpoint?: {
    dir: string
    arch: string
    /** H_res is constrained to the doubly stochastic matrices (mHC): the doubly-stochastic rule applies. */
    doublyStochastic?: boolean
    nonFiniteWeights: number
    gains?: LayerGains[] // per layer; identity layers for a baseline
    stochasticity?: {rowError: number; columnError: number; minEntry: number; layer: number} // worst over tokens (mHC)
  }
  skip?: string[] // rule names not to evaluate
}

export const fmt = (v: number) =>
  Number.isFinite(v)
    ? Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3)
      ? v.toExponential(3)
      : Number.isInteger(v)
        ? String(v)
        : v.toFixed(4)
    : String(v)

export function evaluateRules(input: CheckInput, t: Thresholds): RuleResult[] {
  const out: RuleResult[] = []
  const add = (r: Omit<RuleResult, 'layer' | 'step' | 'display'> & {layer?: number | null; step?: number | null}) => {
    if (!input.skip?.includes(r.rule))
      out.push({layer: null, step: null, ...r, display: r.value === null ? 'n/a' : fmt(r.value)})
  }

  const {steps} = input
  for (const [rule, key, what] of [
    ['finite-loss', 'loss', 'loss'],
    ['finite-gradients', 'gradNorm', 'global gradient norm'],
  ] as const) {
    const bad = steps.find((s) => !Number.isFinite(s[key]))
    const count = steps.filter((s) => !Number.isFinite(s[key])).length
    add({
      rule,
      description: `no NaN/Inf ${what} in ${steps.length} steps`,
      pass: steps.length > 0 && count === 0,
      value: steps.length > 0 ? count : null,
      threshold: 0,
      unit: 'non-finite steps',
      step: bad?.step ?? null,
      detail: steps.length === 0 ? 'no steps recorded' : bad ? `first at step ${bad.step} (${bad[key]})` : undefined,
    })
  }

  const ck = input.checkpoint
  add({
    rule: 'finite-weights',
    description: 'no NaN/Inf in the latest checkpoint weights',
    pass: ck !== undefined && ck.nonFiniteWeights === 0,
    value: ck ? ck.nonFiniteWeights : null,
    threshold: 0,
    unit: 'non-finite weights',
    detail: ck ? ck.dir : 'the run saved no checkpoint',
  })

  const finiteSteps = steps.filter((s) => Number.isFinite(s.loss))
  // Warm-up by step number, not array index: NaN steps are filtered out above.
  const afterWarmup = <V>(xs: (V | undefined)[], recs: StepRecord[]) =>
    xs.map((v, i) => (recs[i].step > t.warmup ? v : undefined))
  const worstOf = (xs: (number | undefined)[]) =>
    xs.reduce<{v: number; i: number}>((w, v, i) => (v !== undefined && v > w.v ? {v, i} : w), {v: -Infinity, i: -1})
  const z = worstOf(
    afterWarmup(
      spikeScores(
        finiteSteps.map((s) => s.loss),
        t.spikeWindow,
        0,
      ),
      finiteSteps,
    ),
  )
  add({
    rule: 'loss-spike',
    description: `train loss never exceeds its rolling median (window ${t.spikeWindow}, after step ${t.warmup}) by more than k robust std`,
    pass: z.i < 0 || z.v <= t.spikeK,
    value: z.i < 0 ? null : z.v,
    threshold: t.spikeK,
    unit: 'robust standard deviations above the rolling median',
    step: z.i < 0 ? null : finiteSteps[z.i].step,
    detail:
      z.i < 0
        ? 'too few steps after the warm-up'
        : `worst at step ${finiteSteps[z.i].step} (loss ${fmt(finiteSteps[z.i].loss)})`,
  })

  const finiteGrad = steps.filter((s) => Number.isFinite(s.gradNorm))
  const r = worstOf(
    afterWarmup(
      growthRatios(
        finiteGrad.map((s) => s.gradNorm),
        t.spikeWindow,
        0,
      ),
      finiteGrad,
    ),
  )
  add({
    rule: 'grad-norm-explosion',
    description: `global gradient norm never exceeds its rolling median by more than a factor (after step ${t.warmup})`,
    pass: r.i < 0 || r.v <= t.maxGradRatio,
    value: r.i < 0 ? null : r.v,
    threshold: t.maxGradRatio,
    unit: 'times the rolling median',
    step: r.i < 0 ? null : finiteGrad[r.i].step,
    detail:
      r.i < 0
        ? 'too few steps after the warm-up'
        : `worst at step ${finiteGrad[r.i].step} (grad norm ${fmt(finiteGrad[r.i].gradNorm)})`,
  })

  const gainRule = (rule: string, kind: 'single' | 'composite', limit: number, label: string) => {
    if (!ck?.gains)
      return add({
        rule,
        description: label,
        pass: false,
        value: null,
        threshold: limit,
        unit: 'Amax gain',
        detail: ck ? 'non-finite weights: no maps' : 'no checkpoint',
      })
    let worst = {v: -Infinity, layer: -1, sub: '', dir: 'forward' as 'forward' | 'backward'}
    for (const l of ck.gains)
      for (const dir of ['forward', 'backward'] as const) {
        const v = l[kind][dir][t.gainAggregate]
        if (v > worst.v || (Number.isNaN(v) && !Number.isNaN(worst.v)))
          worst = {v, layer: l.layer, sub: l.sublayer, dir}
      }

    add({
      rule,
      description: label,
      pass: worst.v <= limit,
      value: worst.v,
      threshold: limit,
      unit: 'Amax gain',
      layer: worst.layer,
      direction: worst.dir,
      detail: `${worst.dir} gain at layer ${worst.layer} (${worst.sub})`,
    })
  }

  gainRule(
    'single-gain',
    'single',
    t.maxGain,
    `single-layer Amax gain of H_res (${t.gainAggregate} over tokens, forward and backward)`,
  )
  gainRule(
    'composite-gain',
    'composite',
    t.maxCompositeGain,
    `composite Amax gain H_{L-1}···H_l (${t.gainAggregate} over tokens, forward and backward)`,
  )

  if (ck?.doublyStochastic) {
    const s = ck.stochasticity
    // One number for both conditions, so that value against threshold explains the verdict: the larger of the worst
    // |row or column sum − 1| and the magnitude of the most negative entry (doubly stochastic matrices have none).
    const err = s ? Math.max(s.rowError, s.columnError, -s.minEntry, 0) : null
    add({
      rule: 'doubly-stochastic',
      description:
        "every token's H_res has row and column sums within tolerance of 1 and no entry below minus the tolerance",
      pass: err !== null && err <= t.dsTolerance,
      value: err,
      threshold: t.dsTolerance,
      unit: 'max of |row or column sum - 1| and -(min entry)',
      layer: s ? s.layer : null,
      minEntry: s?.minEntry,
      detail: s ? `worst at layer ${s.layer}; min entry ${fmt(s.minEntry)}` : 'no maps',
    })
  }

  return out
}

/** A rule's measured value and threshold as printed in tables and JUnit. */
export function describeValue(r: RuleResult): {value: string; threshold: string} {
  const unit = r.rule === 'grad-norm-explosion' ? '×' : ''
  return {value: r.value === null ? 'n/a' : `${fmt(r.value)}${unit}`, threshold: `${fmt(r.threshold)}${unit}`}
}

/** Worst per-token deviation from doubly stochastic over all layers: hRes[l] holds tokens × n × n row-major. */
export function worstStochasticity(
  hRes: ArrayLike<number>[],
  n: number,
): {rowError: number; columnError: number; minEntry: number; layer: number} {
  let [rowError, columnError, minEntry, layer, worst] = [0, 0, Infinity, 0, 0]
  for (const [l, h] of hRes.entries()) {
    for (let off = 0; off < h.length; off += n * n) {
      for (let i = 0; i < n; i++) {
        let row = 0
        let col = 0
        for (let j = 0; j < n; j++) {
          row += h[off + i * n + j]
          col += h[off + j * n + i]
          minEntry = Math.min(minEntry, h[off + i * n + j])
        }

        rowError = Math.max(rowError, Math.abs(row - 1))
        columnError = Math.max(columnError, Math.abs(col - 1))
        if (Math.max(Math.abs(row - 1), Math.abs(col - 1)) > worst)
          [worst, layer] = [Math.max(Math.abs(row - 1), Math.abs(col - 1)), l]
      }
    }
  }

  return {rowError, columnError, minEntry, layer}
}

/** JUnit XML (one testsuite, a testcase per rule, <failure> for failed ones) that CI systems display. */
export function toJUnit(results: RuleResult[], suite: string, seconds: number): string {
  const failures = results.filter((r) => !r.pass).length
  const builder = new XMLBuilder({
    ignoreAttributes: false,
    attributeNamePrefix: '@',
    format: true,
    suppressEmptyNode: true,
  })
  const doc = {
    // eslint-disable-next-line unicorn/text-encoding-identifier-case -- the XML declaration spells it this way
    '?xml': {'@version': '1.0', '@encoding': 'UTF-8'},
    testsuites: {
      '@name': 'mhc check',
      '@tests': results.length,
      '@failures': failures,
      '@time': seconds.toFixed(3),
      testsuite: {
        '@name': suite,
        '@tests': results.length,
        '@failures': failures,
        '@errors': 0,
        '@time': seconds.toFixed(3),
        testcase: results.map((r) => ({
          '@classname': 'mhc.check',
          '@name': r.rule,
          ...(r.pass
            ? {
                'system-out': `${r.description}: ${describeValue(r).value} (threshold ${describeValue(r).threshold}, ${r.unit})${r.detail ? `; ${r.detail}` : ''}`,
              }
            : {
                failure: {
                  '@message': `${describeValue(r).value} (threshold ${describeValue(r).threshold}, ${r.unit})${r.detail ? `; ${r.detail}` : ''}`,
                  '@type': 'StabilityRule',
                  '#text': r.description,
                },
              }),
        })),
      },
    },
  }
  return builder.build(doc)
}
