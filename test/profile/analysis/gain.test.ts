// Gain analysis against hand computations and naive float64 loops.
import {Matrix} from 'ml-matrix'
import assert from 'node:assert/strict'
import {test} from 'node:test'

import {
  amaxGain,
  analyzeGains,
  checkGates,
  identityDistance,
  identityLayers,
  prefixProducts,
  spectralNorm,
  stochasticity,
  suffixProducts,
} from '../../../src/profile/analysis/gain.js'

/** Plain nested-loop matrix product, independent of ml-matrix. */
const matmul = (a: number[][], b: number[][]) =>
  a.map((r) => b[0].map((_, j) => r.reduce((s, v, k) => s + v * b[k][j], 0)))
const rowSumMax = (m: number[][]) => Math.max(...m.map((r) => r.reduce((s, v) => s + Math.abs(v), 0)))
const colSumMax = (m: number[][]) => Math.max(...m[0].map((_, j) => m.reduce((s, r) => s + Math.abs(r[j]), 0)))
const close = (a: number, b: number, tol = 1e-12) =>
  assert.ok(Math.abs(a - b) <= tol * Math.max(1, Math.abs(b)), `${a} vs ${b}`)

const perm = (p: number[]) => p.map((j) => p.map((_, k) => (k === j ? 1 : 0)))

test('Amax gain of hand-built matrices', () => {
  assert.deepEqual(amaxGain(Matrix.eye(4)), {forward: 1, backward: 1})
  assert.deepEqual(amaxGain(new Matrix(perm([2, 0, 3, 1]))), {forward: 1, backward: 1})
  // rows |1|+|−2| = 3 and |3|+|4| = 7; columns 1+3 = 4 and 2+4 = 6
  assert.deepEqual(
    amaxGain(
      new Matrix([
        [1, -2],
        [3, 4],
      ]),
    ),
    {forward: 7, backward: 6},
  )
  // a column-stochastic but not row-stochastic matrix: backward gain 1, forward gain 1.5
  assert.deepEqual(
    amaxGain(
      new Matrix([
        [1, 0.5],
        [0, 0.5],
      ]),
    ),
    {forward: 1.5, backward: 1},
  )
  close(
    spectralNorm(
      new Matrix([
        [3, 0],
        [0, -5],
      ]),
    ),
    5,
    1e-12,
  )
  close(spectralNorm(new Matrix(perm([1, 2, 0]))), 1, 1e-12)
  close(
    identityDistance(
      new Matrix([
        [1, 1],
        [0, 1],
      ]),
    ),
    1,
  )
  const s = stochasticity(
    new Matrix([
      [0.5, 0.6],
      [0.5, 0.4],
    ]),
  )
  close(s.columnError, 0, 1e-15)
  close(s.rowError, 0.1)
  close(s.minEntry, 0.4)
})

test('composite products equal a naive loop, in both directions', () => {
  let seed = 1
  const rnd = () => {
    seed = (seed * 16_807) % 2_147_483_647
    return (seed / 2_147_483_647) * 2 - 1
  }

  const ms = Array.from({length: 7}, () => Array.from({length: 3}, () => Array.from({length: 3}, rnd)))
  const suffix = suffixProducts(ms.map((m) => new Matrix(m)))
  const prefix = prefixProducts(ms.map((m) => new Matrix(m)))
  for (let l = 0; l < ms.length; l++) {
    let s = ms.at(-1)! // H_{L−1} ··· H_l
    for (let i = ms.length - 2; i >= l; i--) s = matmul(s, ms[i])
    let p = ms[0] // H_l ··· H_0
    for (let i = 1; i <= l; i++) p = matmul(ms[i], p)
    for (const [i, r] of s.entries()) for (const [j, v] of r.entries()) close(suffix[l].get(i, j), v, 1e-12)
    for (const [i, r] of p.entries()) for (const [j, v] of r.entries()) close(prefix[l].get(i, j), v, 1e-12)
  }
})

test('products of permutations are permutations (gain 1); products of a scaled matrix grow geometrically', () => {
  const ps = [perm([1, 0, 2]), perm([0, 2, 1]), perm([2, 1, 0])].map((m) => new Matrix(m))
  for (const m of suffixProducts(ps)) assert.deepEqual(amaxGain(m), {forward: 1, backward: 1})
  const h = new Matrix([
    [1.2, 0.1],
    [0, 1],
  ]) // forward gain 1.3 per layer
  const suffix = suffixProducts(Array.from({length: 5}, () => h))
  // H^k computed by hand-rolled repeated multiplication
  let hk = h.to2DArray()
  for (let k = 1; k <= 5; k++) {
    close(amaxGain(suffix[5 - k]).forward, rowSumMax(hk), 1e-12)
    close(amaxGain(suffix[5 - k]).backward, colSumMax(hk), 1e-12)
    hk = matmul(hk, h.to2DArray())
  }

  assert.ok(amaxGain(suffix[0]).forward > 2.4, 'composite of five 1.2-diagonal layers exceeds 1.2^5')
})

test('analyzeGains: per-token gains, token mean and worst token, token-averaged matrices', () => {
  // Two layers, two tokens, n = 2. Token 0: identity then swap. Token 1: diag(2, 1) then [[1,1],[0,1]].
  const n = 2
  const t0 = [
    [
      [1, 0],
      [0, 1],
    ],
    [
      [0, 1],
      [1, 0],
    ],
  ]
  const t1 = [
    [
      [2, 0],
      [0, 1],
    ],
    [
      [1, 1],
      [0, 1],
    ],
  ]
  const layer = (l: number) => Float32Array.from([...t0[l].flat(), ...t1[l].flat()])
  const a = analyzeGains([layer(0), layer(1)], n)
  assert.equal(a.tokens, 2)
  // single layer 0: token gains fwd 1 and 2 → mean 1.5, max 2
  assert.deepEqual(a.layers[0].single.forward, {mean: 1.5, max: 2})
  // single layer 1: [[1,1],[0,1]] has fwd 2, bwd 2; swap has 1, 1
  assert.deepEqual(a.layers[1].single.backward, {mean: 1.5, max: 2})
  // composite from layer 0: H1·H0 per token. token 1: [[1,1],[0,1]]·diag(2,1) = [[2,1],[0,1]]: fwd 3, bwd 2
  const c1 = matmul(t1[1], t1[0])
  assert.deepEqual(c1, [
    [2, 1],
    [0, 1],
  ])
  assert.deepEqual(a.layers[0].composite.forward, {mean: (1 + 3) / 2, max: 3})
  assert.deepEqual(a.layers[0].composite.backward, {mean: (1 + 2) / 2, max: 2})
  // the last layer's composite is the layer itself; the first layer's prefix is the layer itself
  assert.deepEqual(a.layers[1].composite, a.layers[1].single)
  assert.deepEqual(a.layers[0].prefix, a.layers[0].single)
  // token-averaged matrices (Fig. 8): mean of H0 over tokens = diag(1.5, 1)
  assert.deepEqual(a.meanSingle[0], [
    [1.5, 0],
    [0, 1],
  ])
  const c0 = matmul(t0[1], t0[0]) // the swap
  assert.deepEqual(a.meanComposite[0], [
    [(c0[0][0] + c1[0][0]) / 2, (c0[0][1] + c1[0][1]) / 2],
    [(c0[1][0] + c1[1][0]) / 2, (c0[1][1] + c1[1][1]) / 2],
  ])
  assert.deepEqual(a.meanComposite[0], [
    [1, 1],
    [0.5, 0.5],
  ])
  assert.equal(a.layers[0].sublayer, 'attn')
  assert.equal(a.layers[1].sublayer, 'mlp')
  assert.throws(() => analyzeGains([new Float32Array(5)], 2), /not a whole number/)
})

test('gates: both directions, pass at the bound, fail above it, naming the worst layer, direction and run', () => {
  // Layer 1 = [[1.5, 0], [0.25, 1]]: row sums 1.5, 1.25 (forward 1.5); column sums 1.75, 1 (backward 1.75).
  const a = analyzeGains([Float32Array.from([1, 0, 0, 1]), Float32Array.from([1.5, 0, 0.25, 1])], 2)
  const runs = [
    {name: 'runA', layers: identityLayers(2)},
    {name: 'runB', layers: a.layers},
  ]
  const [g1, g2, g3] = checkGates(
    runs,
    [
      {quantity: 'single', threshold: 1.75, flag: '--max-gain'},
      {quantity: 'single', threshold: 1.74, flag: '--max-gain'},
      {quantity: 'composite', threshold: 1.2, flag: '--max-composite-gain'},
    ],
    'mean',
  )
  assert.equal(g1.pass, true, 'at the bound passes')
  assert.equal(g2.pass, false)
  assert.equal(g2.worst, 1.75)
  assert.equal(g2.direction, 'backward', 'the column sum is the larger one')
  assert.equal(g2.layer, 1)
  assert.equal(g2.run, 'runB')
  assert.equal(g3.pass, false)
  assert.equal(g3.layer, 0) // composite of layer 0 = H_1·I
  const nan = analyzeGains([Float32Array.from([Number.NaN, 0, 0, 1])], 2)
  assert.equal(
    checkGates([{name: 'x', layers: nan.layers}], [{quantity: 'single', threshold: 10, flag: '--max-gain'}], 'max')[0]
      .pass,
    false,
    'NaN never passes a gate',
  )
})
