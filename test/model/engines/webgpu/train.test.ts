// The WebGPU engine against the tfjs engine through the Engine seam, the way the training loop drives them: five
// AdamW steps from the same weights and batches (loss, gradient norm, clipping, then weights and moments), a
// non-finite step that must change nothing, evaluation and maps, and a checkpoint round trip between engines.
import assert from 'node:assert/strict'
import {before, test} from 'node:test'

import type {Engine} from '../../../../src/model/engines/engine.js'

import {Arch, ModelConfig, modelConfig, TrainConfig} from '../../../../src/model/config.js'
import {selectBackend, tf} from '../../../../src/model/engines/tfjs/backend.js'
import {TfjsEngine} from '../../../../src/model/engines/tfjs/engine.js'
import {crossEntropy, forward, initParams} from '../../../../src/model/engines/tfjs/network.js'
import {WebGpuEngine} from '../../../../src/model/engines/webgpu/engine.js'
import {StepHyper, WebGpuTrainer} from '../../../../src/model/engines/webgpu/trainer.js'
import {windowsToBatch} from '../../../../src/model/io/data.js'
import {initParamData} from '../../../../src/model/params.js'
import {Rng} from '../../../../src/model/rng.js'
import {evaluate, restore, takeStep} from '../../../../src/model/train/loop.js'
import {device, noDeviceErrors, relErr} from './helpers.js'

const {gpu, skip} = await device()

before(async () => {
  await selectBackend('wasm')
})

/** The trainer's step hyper-parameters for step t (AdamW with decay 0.1, clipping at 1). */
const adamw = (lr: number, t: number): StepHyper => ({
  lr,
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  weightDecay: 0.1,
  gradClip: 1,
  t,
})

type Rec = Record<string, Float32Array>
const record = async (p: Record<string, tf.Variable>): Promise<Rec> =>
  Object.fromEntries(
    await Promise.all(Object.entries(p).map(async ([k, v]) => [k, Float32Array.from(await v.data())] as const)),
  )

const model = (arch: Arch): ModelConfig => modelConfig(arch, {seqLen: 16, layers: 1, dModel: 32, heads: 2})
// Weight decay 0.5: large enough that a decay error would show in the weights' RMS bound below.
const trainCfg: TrainConfig = {
  steps: 5,
  batch: 4,
  lr: 3e-3,
  minLrRatio: 0.1,
  warmup: 2,
  weightDecay: 0.5,
  beta1: 0.9,
  beta2: 0.95,
  adamEps: 1e-8,
  gradClip: 0.5,
  evalEvery: 0,
  evalWindows: 1,
  saveEvery: 0,
  seed: 1,
}
const text = (() => {
  const rng = new Rng(99)
  return Uint8Array.from({length: 4000}, () => 32 + rng.int(90))
})()

/**
 * Per tensor, the weights (or moments) `a` against tfjs's `b`: no element more than `maxAbs` away, and the RMS of the
 * difference within `tol` of the RMS of how far the values moved from `from` (zero for moments). AdamW turns fp32
 * rounding in a gradient element near zero into a difference of up to lr in that element's update, so the bound on
 * every element can only be loose; a systematic error (a missed weight decay, a wrong bias correction) moves the RMS.
 * The RMS bound leaves out the H_pre gates and biases: with the paper's α = 0.01 the streams are near-identical copies
 * and those gradients are mostly cancellation (exactly so in connection 0, where mHC's H_res is in the same case).
 */
function closeRec(a: Rec, b: Rec, from: Rec | undefined, tol: number, maxAbs: number, what: string, arch: Arch): void {
  for (const [k, r] of Object.entries(b)) {
    const g = a[k]
    let dd = 0
    let mv = 0
    let mx = 0
    for (const [i, element] of r.entries()) {
      if (element === g[i]) continue // equal infinities included
      const d = Math.abs(g[i] - element)
      dd += d * d
      mx = Math.max(mx, d)
    }

    for (let i = 0; i < r.length; i++) if (Number.isFinite(r[i])) mv += (r[i] - (from ? from[k][i] : 0)) ** 2
    const moved = Math.sqrt(mv / r.length)
    const rms = Math.sqrt(dd / r.length)
    assert.ok(!(mx > maxAbs), `${what} ${k}: max |Δ| ${mx.toExponential(2)} > ${maxAbs.toExponential(2)}`)
    if (/\.(alpha_pre|b_pre)$/.test(k) || (arch === 'mhc' && /^conn\.0\.(alpha_res|b_res)$/.test(k))) continue
    assert.ok(
      !(rms > tol * moved),
      `${what} ${k}: RMS |Δ| ${rms.toExponential(2)} against RMS change ${moved.toExponential(2)}`,
    )
  }
}

for (const arch of ['baseline', 'hc', 'mhc'] as const) {
  test(
    `${arch}: five training steps equal the tfjs engine's (loss and grad norm to 1e-5, clipping, then weights and moments)`,
    {skip},
    async () => {
      const cfg = model(arch)
      const tc = {...trainCfg}
      const ref: Engine = new TfjsEngine({model: cfg})
      const eng: Engine = await WebGpuEngine.create(gpu!.device, {model: cfg, batch: tc.batch})
      // The same seeded weights and the same data order in both, as the training loop sets them up.
      const [posRef, pos] = [restore(ref, tc), restore(eng, tc)]
      const initial = initParamData(cfg, tc.seed)
      let lrSum = 0
      const clipped: boolean[] = []
      for (let s = 0; s < 5; s++) {
        tc.gradClip = s < 3 ? 0.5 : 0 // clipping on for three steps, off for two
        const r = await takeStep(ref, posRef, tc, text)
        const got = await takeStep(eng, pos, tc, text)
        lrSum += r.lr
        assert.equal(r.nonFinite, undefined)
        assert.equal(got.nonFinite, undefined)
        assert.ok(
          Math.abs(got.loss - r.loss) <= 1e-5 * Math.abs(r.loss),
          `step ${s + 1}: loss ${got.loss} vs tfjs ${r.loss}`,
        )
        assert.ok(
          Math.abs(got.gradNorm - r.gradNorm) <= 1e-5 * r.gradNorm,
          `step ${s + 1}: grad norm ${got.gradNorm} vs tfjs ${r.gradNorm}`,
        )
        assert.equal(got.clipped, r.clipped, `step ${s + 1}: clipped`)
        clipped.push(got.clipped)
      }

      assert.ok(clipped.includes(true) && clipped.includes(false), `clipping engaged on some steps only: ${clipped}`)
      const [a, b] = [await eng.readState(), await ref.readState()]
      closeRec(a.params, b.params, initial, 5e-3, 0.05 * lrSum, 'weights', arch)
      closeRec(a.m, b.m, undefined, 5e-3, Infinity, 'm', arch)
      closeRec(a.v, b.v, undefined, 5e-3, Infinity, 'v', arch)
      eng.dispose()
      ref.dispose()
    },
  )
}

test(
  'a non-finite step (NaN weight, overflowing logits) changes no bit of the weights or moments',
  {skip},
  async () => {
    const cfg = model('mhc')
    const params = initParams(cfg, 4)
    const rec = await record(params)
    tf.dispose(Object.values(params))
    const eng = await WebGpuTrainer.create(gpu!.device, cfg, 4, rec)
    const hp = (t: number) => adamw(1e-3, t)
    const {x, y} = windowsToBatch(text, [3, 300, 900, 2000], cfg.seqLen)
    const ok = await eng.trainStep(x, y, hp(1)) // moments non-zero from here on
    assert.equal(ok.nonFinite, false)
    const bits = (r: Rec) =>
      Object.fromEntries(
        Object.entries(r).map(([k, v]) => [k, Array.from(new Uint32Array(v.buffer, v.byteOffset, v.length))]),
      )
    for (const poison of [
      (p: Rec) => {
        p['blocks.0.mlp.fc.weight'][17] = Number.NaN
      },
      (p: Rec) => {
        p['lm_head.weight'].fill(3e38)
      },
    ]) {
      const p = await eng.readParams()
      poison(p)
      eng.writeParams(p)
      const before = {p: bits(await eng.readParams()), ...(await eng.readOptimizer())}
      const r = await eng.trainStep(x, y, hp(2))
      assert.equal(r.nonFinite, true, `loss ${r.loss}, grad norm ${r.gradNorm}`)
      assert.ok(!Number.isFinite(r.loss) || !Number.isFinite(r.gradNorm))
      const after = await eng.readOptimizer()
      assert.deepEqual(bits(await eng.readParams()), before.p, 'weights unchanged')
      assert.deepEqual(bits(after.m), bits(before.m), 'm unchanged')
      assert.deepEqual(bits(after.v), bits(before.v), 'v unchanged')
      eng.writeParams(rec)
    }

    const again = await eng.trainStep(x, y, hp(2))
    assert.equal(again.nonFinite, false, 'healthy weights train again')
    eng.dispose()
  },
)

test('evaluate (full, partial and several batches) and collectMaps equal tfjs', {skip}, async () => {
  for (const arch of ['hc', 'mhc'] as const) {
    const cfg = model(arch)
    const params = initParams(cfg, 5)
    const eng = await WebGpuTrainer.create(gpu!.device, cfg, 3, await record(params))
    for (const rows of [3, 2, 5]) {
      const batch = windowsToBatch(
        text,
        Array.from({length: rows}, (_, i) => 100 * i + 7),
        cfg.seqLen,
      )
      const x = tf.tensor2d(batch.x, [rows, cfg.seqLen], 'int32')
      const y = tf.tensor2d(batch.y, [rows, cfg.seqLen], 'int32')
      const ref = tf.tidy(() => crossEntropy(forward(params, cfg, x).logits, y, cfg.vocabSize).dataSync()[0])
      const got = await eng.evaluate(batch.x, batch.y)
      assert.ok(Math.abs(got - ref) <= 1e-5 * ref, `${arch} ${rows} sequences: ${got} vs tfjs ${ref}`)
      if (rows === 5) {
        const maps = await eng.collectMaps(batch.x)
        const {maps: refMaps, logits} = forward(params, cfg, x, {captureMaps: true})
        for (const [l, refMap] of refMaps.entries()) {
          assert.ok(relErr(maps.hPre[l], refMap.hPre.dataSync()) < 1e-5, `${arch} layer ${l} H_pre`)
          assert.ok(relErr(maps.hPost[l], refMap.hPost.dataSync()) < 1e-5, `${arch} layer ${l} H_post`)
          assert.ok(relErr(maps.hRes[l], refMap.hRes.dataSync()) < 1e-5, `${arch} layer ${l} H_res`)
        }

        tf.dispose([logits, ...refMaps.flatMap((m) => [m.hPre, m.hPost, m.hRes])])
      }

      tf.dispose([x, y])
    }

    eng.dispose()
    tf.dispose(Object.values(params))
  }
})

test(
  'checkpoint round trip: params and moments read from one engine and written to another continue bit-identically',
  {skip},
  async () => {
    const cfg = model('hc')
    const params = initParams(cfg, 6)
    const rec = await record(params)
    tf.dispose(Object.values(params))
    const a = await WebGpuTrainer.create(gpu!.device, cfg, 4, rec)
    const hp = (t: number) => adamw(2e-3, t)
    for (let t = 1; t <= 2; t++) {
      const {x, y} = windowsToBatch(text, [t, 400 + t, 1200 + t, 3000 + t], cfg.seqLen)
      await a.trainStep(x, y, hp(t))
    }

    const b = await WebGpuTrainer.create(gpu!.device, cfg, 4, await a.readParams())
    b.writeOptimizer(await a.readOptimizer())
    const {x, y} = windowsToBatch(text, [10, 500, 1500, 3500], cfg.seqLen)
    const ra = await a.trainStep(x, y, hp(3))
    const rb = await b.trainStep(x, y, hp(3))
    assert.deepEqual(rb, ra)
    const [pa, pb] = [await a.readParams(), await b.readParams()]
    for (const k of Object.keys(pa)) assert.deepEqual(pb[k], pa[k], k)
    assert.throws(() => b.writeParams({...pa, 'lm_head.weight': new Float32Array(3)}), /lm_head.weight has 3 values/)
    a.dispose()
    b.dispose()
  },
)

test('no WebGPU validation or device errors were raised', {skip}, noDeviceErrors)

test(
  'a run trained by the webgpu engine is evaluated by the tfjs engine to the same loss (checkpoints are engine-neutral)',
  {skip},
  async () => {
    const cfg = model('mhc')
    const tc = {...trainCfg, gradClip: 1}
    const eng = await WebGpuEngine.create(gpu!.device, {model: cfg, batch: tc.batch})
    const pos = restore(eng, tc)
    for (let s = 0; s < 3; s++) await takeStep(eng, pos, tc, text)
    const state = await eng.readState()
    const ref = new TfjsEngine({model: cfg})
    ref.load(state)
    const [a, b] = [await evaluate(eng, text, 8, tc.batch), await evaluate(ref, text, 8, tc.batch)]
    assert.ok(Math.abs(a - b) <= 1e-5 * b, `webgpu ${a} vs tfjs ${b} on the same weights`)
    eng.dispose()
    ref.dispose()
  },
)
