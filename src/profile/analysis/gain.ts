// Propagation gains of the residual mixing matrices H_res (paper §3, Fig. 3 and 7), in float64 with ml-matrix.
//   single-layer mapping     H_l
//   composite (to the end)   ∏_{i=1}^{L−l} H_{L−i} = H_{L−1} ··· H_l      (paper Eq. 4: layer l to the last layer)
//   composite (from start)   H_l ··· H_0                                   (the first layer up to l)
// Amax gain magnitude: forward = max absolute row sum (how much a signal can grow going forward),
// backward = max absolute column sum (how much a gradient can grow going back).
import {Matrix, SingularValueDecomposition} from 'ml-matrix'

export interface Amax {
  forward: number
  backward: number
}

export function amaxGain(m: Matrix): Amax {
  let forward = 0
  let backward = 0
  for (let i = 0; i < m.rows; i++) {
    let row = 0
    for (let j = 0; j < m.columns; j++) row += Math.abs(m.get(i, j))
    forward = Math.max(forward, row)
  }

  for (let j = 0; j < m.columns; j++) {
    let col = 0
    for (let i = 0; i < m.rows; i++) col += Math.abs(m.get(i, j))
    backward = Math.max(backward, col)
  }

  return {forward, backward}
}

/** Largest singular value: the worst-case gain in the 2-norm, bounded by sqrt(forward · backward). */
export function spectralNorm(m: Matrix): number {
  return new SingularValueDecomposition(m, {computeLeftSingularVectors: false, computeRightSingularVectors: false})
    .norm2
}

/** How far a matrix is from doubly stochastic: worst |row sum − 1|, worst |column sum − 1|, smallest entry. */
export function stochasticity(m: Matrix): {rowError: number; columnError: number; minEntry: number} {
  const rows = m.sum('row')
  const cols = m.sum('column')
  return {
    rowError: Math.max(...rows.map((s) => Math.abs(s - 1))),
    columnError: Math.max(...cols.map((s) => Math.abs(s - 1))),
    minEntry: m.min(),
  }
}

/** Frobenius distance from the identity (0 for a pure residual connection). */
export function identityDistance(m: Matrix): number {
  return Matrix.sub(m, Matrix.eye(m.rows, m.columns)).norm('frobenius')
}

/** P_l = H_{L−1} ··· H_l for every l (P_{L−1} = H_{L−1}). */
export function suffixProducts(ms: Matrix[]): Matrix[] {
  const out: Matrix[] = Array.from({length: ms.length})
  let acc: Matrix | undefined
  for (let l = ms.length - 1; l >= 0; l--) {
    acc = acc ? acc.mmul(ms[l]) : ms[l].clone()
    out[l] = acc
  }

  return out
}

/** Q_l = H_l ··· H_0 for every l (Q_0 = H_0). */
export function prefixProducts(ms: Matrix[]): Matrix[] {
  const out: Matrix[] = []
  let acc: Matrix | undefined
  for (const m of ms) {
    acc = acc ? m.mmul(acc) : m.clone()
    out.push(acc)
  }

  return out
}

export interface GainSummary {
  mean: number
  max: number
} // over tokens: the paper's average, and the worst token
export interface LayerGains {
  layer: number
  sublayer: 'attn' | 'mlp'
  single: {forward: GainSummary; backward: GainSummary}
  composite: {forward: GainSummary; backward: GainSummary} // layer l to the last layer
  prefix: {forward: GainSummary; backward: GainSummary} // first layer up to l
  /** Diagnostics of the token-averaged matrices. */
  mean: {single: Diagnostics; composite: Diagnostics}
}
export interface Diagnostics {
  spectralNorm: number
  rowError: number
  columnError: number
  minEntry: number
  identityDistance: number
  amax: Amax
}
export interface GainAnalysis {
  n: number
  tokens: number
  layers: LayerGains[]
  /** Token-averaged matrices, as the paper's Fig. 8 shows them. */
  meanSingle: number[][][]
  meanComposite: number[][][]
  meanPrefix: number[][][]
}

export function diagnostics(m: Matrix): Diagnostics {
  return {spectralNorm: spectralNorm(m), ...stochasticity(m), identityDistance: identityDistance(m), amax: amaxGain(m)}
}

/**
 * hRes[l] holds the per-token H_res of layer l as `tokens` row-major n×n blocks (float32 from the model).
 * Products are formed per token, then gains are averaged (and maximised) over tokens.
 */
export function analyzeGains(hRes: ArrayLike<number>[], n: number): GainAnalysis {
  const L = hRes.length
  if (L === 0) throw new Error('no layers to analyse')
  const tokens = hRes[0].length / (n * n)
  if (!Number.isInteger(tokens) || tokens < 1)
    throw new Error(`H_res data of length ${hRes[0].length} is not a whole number of ${n}×${n} matrices`)
  for (const h of hRes) if (h.length !== hRes[0].length) throw new Error('layers hold different numbers of tokens')
  const zero = () => ({forward: {mean: 0, max: 0}, backward: {mean: 0, max: 0}})
  const acc = Array.from({length: L}, () => ({single: zero(), composite: zero(), prefix: zero()}))
  const zeros = () => Array.from({length: L}, () => Matrix.zeros(n, n))
  const [sumSingle, sumComposite, sumPrefix] = [zeros(), zeros(), zeros()]
  const add = (s: {forward: GainSummary; backward: GainSummary}, g: Amax) => {
    s.forward.mean += g.forward / tokens
    s.backward.mean += g.backward / tokens
    s.forward.max = Math.max(s.forward.max, g.forward)
    s.backward.max = Math.max(s.backward.max, g.backward)
  }

  for (let t = 0; t < tokens; t++) {
    const ms = hRes.map((h) => {
      const m = new Matrix(n, n)
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) m.set(i, j, h[t * n * n + i * n + j])
      return m
    })
    const suffix = suffixProducts(ms)
    const prefix = prefixProducts(ms)
    for (let l = 0; l < L; l++) {
      add(acc[l].single, amaxGain(ms[l]))
      add(acc[l].composite, amaxGain(suffix[l]))
      add(acc[l].prefix, amaxGain(prefix[l]))
      sumSingle[l].add(ms[l])
      sumComposite[l].add(suffix[l])
      sumPrefix[l].add(prefix[l])
    }
  }

  const avg = (ms: Matrix[]) => ms.map((m) => m.div(tokens))
  const [meanSingle, meanComposite, meanPrefix] = [avg(sumSingle), avg(sumComposite), avg(sumPrefix)]
  const layers: LayerGains[] = acc.map((a, l) => ({
    layer: l,
    sublayer: l % 2 === 0 ? 'attn' : 'mlp',
    ...a,
    mean: {single: diagnostics(meanSingle[l]), composite: diagnostics(meanComposite[l])},
  }))
  return {
    n,
    tokens,
    layers,
    meanSingle: meanSingle.map((m) => m.to2DArray()),
    meanComposite: meanComposite.map((m) => m.to2DArray()),
    meanPrefix: meanPrefix.map((m) => m.to2DArray()),
  }
}

// ---------------------------------------------------------------------------------------------------------------
// CI gates

/** A gate bounds the single-layer or the composite Amax gain, in both directions (the worst of forward and backward). */
export type GateQuantity = 'single' | 'composite'
export interface GateRule {
  quantity: GateQuantity
  threshold: number
  flag: string
}
export interface GateResult extends GateRule {
  pass: boolean
  worst: number
  direction: 'forward' | 'backward'
  layer: number
  sublayer: 'attn' | 'mlp'
  run: string
  aggregate: 'mean' | 'max'
}

/** Checks every rule against every layer of every run, both directions; reports the worst layer per rule. */
export function checkGates(
  runs: {name: string; layers: LayerGains[]}[],
  rules: GateRule[],
  aggregate: 'mean' | 'max',
): GateResult[] {
  return rules.map((rule) => {
    let worst = {
      value: -Infinity,
      direction: 'forward' as 'forward' | 'backward',
      layer: -1,
      sublayer: 'attn' as 'attn' | 'mlp',
      run: '',
    }
    for (const r of runs) {
      for (const l of r.layers) {
        for (const direction of ['forward', 'backward'] as const) {
          const v = l[rule.quantity][direction][aggregate]
          if (v > worst.value || (Number.isNaN(v) && !Number.isNaN(worst.value)))
            worst = {value: v, direction, layer: l.layer, sublayer: l.sublayer, run: r.name}
        }
      }
    }

    const pass = !(worst.value > rule.threshold) && !Number.isNaN(worst.value)
    return {
      ...rule,
      pass,
      worst: worst.value,
      direction: worst.direction,
      layer: worst.layer,
      sublayer: worst.sublayer,
      run: worst.run,
      aggregate,
    }
  })
}

export function describeGate(g: GateResult): string {
  const what = `${g.quantity}-layer Amax gain (worst of forward and backward, ${g.aggregate} over tokens)`.replace(
    'composite-layer',
    'composite',
  )
  return `${g.pass ? 'pass' : 'FAIL'}: ${what} ${g.worst.toPrecision(4)} (${g.direction}) at layer ${g.layer} (${g.sublayer}) of ${g.run} ${g.pass ? '<=' : '>'} ${g.flag} ${g.threshold}`
}

/** A residual connection's "mapping" is the 1×1 identity: every gain is exactly 1. */
export function identityLayers(count: number): LayerGains[] {
  const one = {forward: {mean: 1, max: 1}, backward: {mean: 1, max: 1}}
  const eye = diagnostics(Matrix.eye(1, 1))
  return Array.from({length: count}, (_, l) => ({
    layer: l,
    sublayer: l % 2 === 0 ? 'attn' : 'mlp',
    single: one,
    composite: one,
    prefix: one,
    mean: {single: eye, composite: eye},
  }))
}
