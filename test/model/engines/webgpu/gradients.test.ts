import assert from 'node:assert/strict'
// Whole-model loss and gradients of the WebGPU engine against the tfjs implementation (src/model, wasm backend), for
// every parameter, at awkward shapes: T = 1, channels and heads that are not multiples of any tile, n = 1 … 8 streams
// for HC and mHC, and mHC's checkpointed Sinkhorn backward. This checks every kernel of the forward and backward pass.
import {before, test} from 'node:test'

import {Arch, ModelConfig} from '../../../../src/model/config.js'
import {selectBackend, tf} from '../../../../src/model/engines/tfjs/backend.js'
import {gradients, initParams} from '../../../../src/model/engines/tfjs/network.js'
import {device, noDeviceErrors} from './helpers.js'
type Params = ReturnType<typeof initParams>
import {WebGpuTrainer} from '../../../../src/model/engines/webgpu/trainer.js'
import {Rng} from '../../../../src/model/rng.js'

const {gpu, skip} = await device()

before(async () => {
  await selectBackend('wasm')
})

async function paramRecord(p: Params): Promise<Record<string, Float32Array>> {
  const out: Record<string, Float32Array> = {}
  for (const [k, v] of Object.entries(p)) out[k] = Float32Array.from(await v.data())
  return out
}

interface Case {
  arch: Arch
  n: number
  T: number
  C: number
  H: number
  B: number
  layers: number
  skEvery?: number
  skewed?: boolean
}

const cases: Case[] = [
  {arch: 'baseline', n: 1, T: 1, C: 12, H: 3, B: 3, layers: 2},
  {arch: 'baseline', n: 1, T: 9, C: 20, H: 2, B: 2, layers: 1},
  // One token id at ~90% of 80 positions: its embedding gradient adds several pieces of 32 positions.
  {arch: 'baseline', n: 1, T: 20, C: 8, H: 1, B: 4, layers: 1, skewed: true},
  ...[1, 2, 5, 8].map((n): Case => ({arch: 'hc', n, T: n === 5 ? 1 : 6, C: 10, H: 2, B: 2, layers: 1})),
  ...[1, 2, 3, 4, 5, 6, 7, 8].map((n): Case => ({arch: 'mhc', n, T: n === 3 ? 1 : 5, C: 12, H: 3, B: 2, layers: 1})),
  {arch: 'mhc', n: 4, T: 7, C: 20, H: 4, B: 2, layers: 2, skEvery: 3},
]

for (const c of cases) {
  const name = `${c.arch} n=${c.n} T=${c.T} C=${c.C} heads=${c.H} batch=${c.B} blocks=${c.layers}${c.skEvery ? ` (Sinkhorn trace every ${c.skEvery})` : ''}${c.skewed ? ', one token id at 90%' : ''}`
  test(`gradients equal tfjs: ${name}`, {skip}, async () => {
    const cfg: ModelConfig = {
      arch: c.arch,
      vocabSize: 19,
      seqLen: c.T,
      layers: c.layers,
      dModel: c.C,
      heads: c.H,
      mlpRatio: 3,
      expansion: c.n,
      sinkhornIters: 20,
      gateInit: 0.5,
      normEps: 1e-20,
    }
    const params = initParams(cfg, 11 + c.n)
    // Random static parts too, so every map (and every α, b gradient) is exercised away from its symmetric start.
    const rng = new Rng(5 + c.n)
    for (const [k, v] of Object.entries(params))
      if (/\.b_(pre|post|res)$/.test(k)) {
        const data = (await v.data()) as Float32Array
        v.assign(
          tf.tensor(
            data.map((x) => (Number.isFinite(x) ? x : 0) + 0.5 * rng.normal()),
            v.shape,
          ),
        )
      }

    const x = Int32Array.from({length: c.B * c.T}, () => (c.skewed && rng.uniform() < 0.9 ? 3 : rng.int(cfg.vocabSize)))
    const y = Int32Array.from({length: c.B * c.T}, () => rng.int(cfg.vocabSize))
    const eng = await WebGpuTrainer.create(gpu!.device, cfg, c.B, await paramRecord(params), {skEvery: c.skEvery})
    const got = await eng.gradients(x, y)
    eng.dispose()
    const xt = tf.tensor2d(x, [c.B, c.T], 'int32')
    const yt = tf.tensor2d(y, [c.B, c.T], 'int32')
    const ref = gradients(params, cfg, xt, yt)
    const refLoss = (await ref.loss.data())[0]
    const refGrads: Record<string, Float32Array> = {}
    let sq = 0
    for (const [k, t] of Object.entries(ref.grads)) {
      refGrads[k] = (await t.data()) as Float32Array
      for (const v of refGrads[k]) sq += v * v
    }

    tf.dispose([xt, yt, ref.loss, ...Object.values(ref.grads), ...Object.values(params)])
    const refNorm = Math.sqrt(sq)
    assert.ok(Math.abs(got.loss - refLoss) <= 1e-5 * Math.abs(refLoss), `loss ${got.loss} vs tfjs ${refLoss}`)
    assert.ok(Math.abs(got.gradNorm - refNorm) <= 1e-5 * refNorm, `grad norm ${got.gradNorm} vs tfjs ${refNorm}`)
    // Per tensor: the largest difference against the tensor's own scale (floored at 1e-3 of the global norm, since
    // some gradients are pure rounding noise, e.g. H_pre's with identical streams).
    for (const [k, r] of Object.entries(refGrads)) {
      const g = got.grads[k]
      let diff = 0
      let mx = 0
      for (const [i, element] of r.entries()) {
        diff = Math.max(diff, Math.abs(g[i] - element))
        mx = Math.max(mx, Math.abs(element))
      }

      const scale = Math.max(mx, 1e-3 * refNorm)
      assert.ok(
        !(diff > 1e-4 * scale),
        `${k}: max |Δ| ${diff.toExponential(2)} against scale ${scale.toExponential(2)}`,
      )
    }
  })
}

test('no WebGPU validation or device errors were raised', {skip}, noDeviceErrors)
