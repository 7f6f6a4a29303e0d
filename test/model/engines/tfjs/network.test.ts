// The model's maths against independent references: float64 Sinkhorn-Knopp written here, the residual baseline,
// and central finite differences of the loss.
import assert from 'node:assert/strict'
import {before, test} from 'node:test'

import {Arch, ModelConfig, modelConfig} from '../../../../src/model/config.js'
import {connectionOf} from '../../../../src/model/connections/index.js'
import {selectBackend, tf} from '../../../../src/model/engines/tfjs/backend.js'
import {connectionMaps, Params} from '../../../../src/model/engines/tfjs/connections.js'
import {forward, gradients, initParams, loss} from '../../../../src/model/engines/tfjs/network.js'
import {sinkhornKnopp, sinkhornKnoppFused} from '../../../../src/model/engines/tfjs/sinkhorn.js'
import {paramSpecs} from '../../../../src/model/params.js'
import {Rng} from '../../../../src/model/rng.js'

before(async () => {
  await selectBackend('wasm')
})

const cfg = (arch: Arch, o: Partial<ModelConfig> = {}): ModelConfig =>
  modelConfig(arch, {seqLen: 8, layers: 2, dModel: 16, heads: 2, mlpRatio: 2, ...o})

function randomTokens(rng: Rng, b: number, t: number): tf.Tensor2D {
  return tf.tensor2d(
    Int32Array.from({length: b * t}, () => rng.int(256)),
    [b, t],
    'int32',
  )
}

/** Sinkhorn-Knopp in float64, written independently of the tfjs version: column then row normalisation. */
function sinkhorn64(logits: number[][], iters: number): number[][] {
  const n = logits.length
  const mx = Math.max(...logits.flat())
  let m = logits.map((r) => r.map((v) => Math.exp(v - mx)))
  for (let t = 0; t < iters; t++) {
    const col = Array.from({length: n}, (_, j) => m.reduce((s, r) => s + r[j], 0))
    m = m.map((r) => r.map((v, j) => v / col[j]))
    m = m.map((r) => {
      const s = r.reduce((a, b) => a + b, 0)
      return r.map((v) => v / s)
    })
  }

  return m
}

const disposeParams = (p: Params) => {
  for (const v of Object.values(p)) v.dispose()
}

type Vars = Record<string, tf.Variable>

test('sinkhornKnopp: non-negative, doubly stochastic, equal to a float64 reference', () => {
  const rng = new Rng(7)
  for (const [n, scale] of [
    [2, 1],
    [4, 1],
    [4, 5],
    [6, 3],
  ] as const) {
    const batch = 5
    const logits = Array.from({length: batch}, () =>
      Array.from({length: n}, () => Array.from({length: n}, () => scale * rng.normal())),
    )
    const out = tf.tidy(() => sinkhornKnopp(tf.tensor3d(logits), 20).arraySync()) as number[][][]
    for (let b = 0; b < batch; b++) {
      const ref = sinkhorn64(logits[b], 20)
      for (let i = 0; i < n; i++) {
        const row = out[b][i].reduce((a, v) => a + v, 0)
        const col = out[b].reduce((a, r) => a + r[i], 0)
        assert.ok(Math.abs(row - 1) < 1e-5, `row ${i} sums to ${row}`)
        // After 20 iterations columns are close to 1 too; how close depends on the conditioning (scale).
        const colTol = scale <= 1 ? 1e-4 : 5e-2
        assert.ok(Math.abs(col - 1) < colTol, `n=${n} scale=${scale}: column ${i} sums to ${col}`)
        for (let j = 0; j < n; j++) {
          assert.ok(out[b][i][j] >= 0, 'entries are non-negative')
          assert.ok(
            Math.abs(out[b][i][j] - ref[i][j]) < 1e-5,
            `entry (${i},${j}) ${out[b][i][j]} vs float64 ${ref[i][j]}`,
          )
        }
      }
    }
  }
})

test('sinkhornKnopp: more iterations converge; huge logits stay finite', () => {
  const logits = [
    [3, -2, 0.5],
    [1, 4, -1],
    [-3, 0, 2],
  ]
  const err = (iters: number) => {
    const m = sinkhorn64(logits, iters)
    return Math.max(...[0, 1, 2].map((j) => Math.abs(m.reduce((s, r) => s + r[j], 0) - 1)))
  }

  assert.ok(err(20) < err(3) && err(3) < err(1), `column error should shrink: ${err(1)} ${err(3)} ${err(20)}`)
  const big = tf.tidy(() =>
    sinkhornKnopp(
      tf.tensor3d([
        [
          [500, -500],
          [200, 100],
        ],
      ]),
      20,
    ).arraySync(),
  ) as number[][][]
  for (const v of big.flat(2)) assert.ok(Number.isFinite(v) && v >= 0, `finite: ${v}`)
})

/** Copies the parameters two configs share (embeddings, blocks, final norm, head) from `src` into a new set. */
function sharedParams(src: Vars, target: ModelConfig): Vars {
  const out: Vars = {}
  for (const s of paramSpecs(target)) out[s.name] = tf.variable(src[s.name] ?? tf.zeros(s.shape))
  return out
}

for (const arch of ['hc', 'mhc'] as const) {
  test(`${arch} at initialisation reproduces the residual baseline (exactly with gates α = 0, closely with α = 0.01)`, () => {
    const c = cfg(arch)
    const p = initParams(c, 3)
    const base = sharedParams(p, cfg('baseline'))
    const tokens = randomTokens(new Rng(4), 3, c.seqLen)
    const logitsOf = (params: Params, cc: ModelConfig) => tf.tidy(() => forward(params, cc, tokens).logits.dataSync())
    const ref = logitsOf(base, cfg('baseline'))
    const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) =>
      Array.from(a).reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0)
    const scale = Array.from(ref).reduce((m, v) => Math.max(m, Math.abs(v)), 0)

    const initDiff = maxDiff(logitsOf(p, c), ref)
    assert.ok(initDiff > 0, 'with α = 0.01 the dynamic part is live')
    assert.ok(initDiff < 0.05 * scale, `default init close to baseline: max |Δlogit| ${initDiff} vs scale ${scale}`)

    for (const k of Object.keys(p)) if (/alpha_/.test(k)) p[k].assign(tf.scalar(0))
    const gatedDiff = maxDiff(logitsOf(p, c), ref)
    assert.ok(gatedDiff < 1e-4 * Math.max(1, scale), `α = 0: max |Δlogit| ${gatedDiff}`)

    // ... and the maps are the static ones: H_pre picks/averages, H_post = 1, H_res doubly stochastic ≈ I.
    const xs = tf.randomNormal([4, c.expansion, c.dModel], 0, 1, 'float32', 1)
    const m = connectionMaps(connectionOf(c), p, 1, c, xs)
    const pre = m.hPre.arraySync()[0]
    const post = m.hPost.arraySync()[0]
    const res = m.hRes.arraySync()[0]
    const n = c.expansion
    // hc: H_res = b_res = I. mhc: SK(exp(b_res)) with b_res = 0 on the diagonal and −4 elsewhere, in float64.
    const bRes = p['conn.1.b_res'].arraySync() as unknown as number[][]
    const expectedRes = arch === 'hc' ? bRes : sinkhorn64(bRes, c.sinkhornIters)
    if (arch === 'hc')
      for (const [i, r] of bRes.entries()) for (const [j, v] of r.entries()) assert.equal(v, i === j ? 1 : 0)
    for (let i = 0; i < n; i++) {
      assert.ok(Math.abs(post[i] - 1) < 1e-6, `H_post = 1, got ${post[i]}`)
      assert.ok(Math.abs(pre[i] - (arch === 'hc' ? (i === 1 % n ? 1 : 0) : 1 / n)) < 1e-6, `H_pre[${i}] = ${pre[i]}`)
      for (let j = 0; j < n; j++)
        assert.ok(
          Math.abs(res[i][j] - expectedRes[i][j]) < 1e-5,
          `H_res[${i}][${j}] = ${res[i][j]} vs ${expectedRes[i][j]}`,
        )
      assert.ok(res[i][i] > 0.9, 'close to the identity')
    }

    tf.dispose([xs, m.hPre, m.hPost, m.hRes, tokens])
    disposeParams(p)
    disposeParams(base)
  })
}

// Gradients vs central finite differences along a random unit direction per parameter tensor:
// d/dε L(θ + ε v) = ∇L·v. The gates are raised to 0.5 and the static parts perturbed so that tanh, sigmoid and
// Sinkhorn operate away from their initial, nearly linear regime.
for (const arch of ['baseline', 'hc', 'mhc'] as const) {
  test(`${arch}: gradients match central finite differences`, () => {
    const c = cfg(arch, {layers: 1, seqLen: 6, dModel: 8, heads: 2, sinkhornIters: 6})
    const p = initParams(c, 11)
    const rng = new Rng(12)
    for (const [k, v] of Object.entries(p)) {
      if (/alpha_/.test(k)) v.assign(tf.scalar(0.5))
      if (/\.(b_pre|b_post|b_res)$/.test(k))
        v.assign(tf.tidy(() => tf.add(v, tf.randomNormal(v.shape, 0, 0.3, 'float32', rng.nextU32()))))
      if (/\.(theta|phi)$/.test(k)) v.assign(tf.tidy(() => tf.mul(v, 3))) // make the dynamic part matter
    }

    const x = randomTokens(rng, 2, c.seqLen)
    const y = randomTokens(rng, 2, c.seqLen)
    const {grads, loss: l0} = gradients(p, c, x, y)
    const eps = 1e-2
    let checked = 0
    for (const [name, v] of Object.entries(p)) {
      const dir = tf.tidy(() => {
        const r = tf.randomNormal(v.shape, 0, 1, 'float32', rng.nextU32())
        return tf.div(r, tf.norm(r))
      })
      const analytic = tf.tidy(() => tf.sum(tf.mul(grads[name], dir)).dataSync()[0])
      const orig = tf.clone(v)
      const lossAt = (e: number) => {
        v.assign(tf.tidy(() => tf.add(orig, tf.mul(dir, e))))
        return tf.tidy(() => loss(p, c, x, y).dataSync()[0])
      }

      const numeric = (lossAt(eps) - lossAt(-eps)) / (2 * eps)
      v.assign(orig)
      const tol = 1e-4 + 2e-2 * Math.abs(numeric) // float32 loss noise / 2ε is ~1e-5
      assert.ok(
        Math.abs(analytic - numeric) < tol,
        `${arch} ${name}: autodiff ${analytic} vs finite difference ${numeric}`,
      )
      checked++
      tf.dispose([dir, orig])
    }

    assert.equal(checked, paramSpecs(c).length)
    tf.dispose([x, y, l0, ...Object.values(grads)])
    disposeParams(p)
  })
}

test('fused Sinkhorn kernel equals the op-by-op version in value and gradient', () => {
  const rng = new Rng(21)
  for (const [n, iters, scale] of [
    [4, 20, 1],
    [3, 5, 4],
    [2, 1, 2],
  ] as const) {
    const x = tf.tensor3d(
      Array.from({length: 6}, () => Array.from({length: n}, () => Array.from({length: n}, () => scale * rng.normal()))),
    )
    const w = tf.randomNormal([6, n, n], 0, 1, 'float32', rng.nextU32())
    const [va, ga] = tf.tidy(() => [
      sinkhornKnopp(x, iters).arraySync(),
      tf
        .grad((z: tf.Tensor) => tf.sum(tf.mul(sinkhornKnopp(z, iters), w)))(x)
        .arraySync(),
    ])
    const [vb, gb] = tf.tidy(() => [
      sinkhornKnoppFused(x, iters).arraySync(),
      tf
        .grad((z: tf.Tensor) => tf.sum(tf.mul(sinkhornKnoppFused(z, iters), w)))(x)
        .arraySync(),
    ])
    const flat = (v: unknown) => (v as number[][][]).flat(2)
    for (const [i, v] of flat(va).entries())
      assert.ok(Math.abs(v - flat(vb)[i]) < 1e-5, `value ${i}: ${v} vs ${flat(vb)[i]}`)
    for (const [i, v] of flat(ga).entries())
      assert.ok(Math.abs(v - flat(gb)[i]) < 1e-4 * Math.max(1, Math.abs(v)), `grad ${i}: ${v} vs ${flat(gb)[i]}`)

    tf.dispose([x, w])
  }
})
