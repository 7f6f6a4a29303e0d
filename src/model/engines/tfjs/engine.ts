// The TensorFlow.js engine: the network of ./network.ts on whichever tfjs backend ./backend.ts selected, with AdamW
// written out (a dozen lines, so its state can be saved and restored exactly) and a diagnosis of non-finite steps.
import type {ModelConfig} from '../../config.js'
import type {NonFiniteOrigin} from '../../errors.js'
import type {Batch} from '../../io/data.js'
import type {Engine, EngineOptions, EngineState, LayerMapsData, StepHyper, StepResult} from '../engine.js'

import {decayNames, HostTensors, layerName, layerOfParam, paramSpecs} from '../../params.js'
import {tf} from './backend.js'
import {crossEntropy, forward, gradients, LayerMaps, loss, Params, toVariables} from './network.js'

type Vars = Record<string, tf.Variable>

const tensors = (b: Batch) => ({
  x: tf.tensor2d(b.x, [b.size, b.seqLen], 'int32'),
  y: tf.tensor2d(b.y, [b.size, b.seqLen], 'int32'),
})

/** A scalar that is NaN exactly when t holds a NaN/Inf: x·0 is 0 for every finite x. */
const nonFiniteProbe = (t: tf.Tensor) => tf.sum(tf.mul(t, 0))
// Asynchronous reads throughout: GPU backends have no synchronous read-back in Node.
const readScalar = async (t: tf.Tensor) => (await t.data())[0]

export class TfjsEngine implements Engine {
  readonly name = 'tfjs'
  readonly backend: string
  readonly model: ModelConfig
  private params: Vars = {}
  private m: Vars = {}
  private v: Vars = {}
  private readonly shapes: Record<string, number[]>
  private readonly decay: Set<string>
  private readonly recomputeBlock: number

  constructor(o: EngineOptions) {
    this.model = o.model
    this.backend = tf.getBackend() === 'webgpu' ? 'tfjs-webgpu' : tf.getBackend()
    this.recomputeBlock = o.recomputeBlock ?? 0
    this.shapes = Object.fromEntries(paramSpecs(o.model).map((s) => [s.name, s.shape]))
    this.decay = decayNames(o.model)
  }

  load(state: {params: HostTensors; m?: HostTensors; v?: HostTensors}): void {
    this.disposeVars()
    this.params = toVariables(state.params, this.shapes, true)
    const zeros = () =>
      Object.fromEntries(
        Object.entries(this.params).map(([k, p]) => [k, tf.tidy(() => tf.variable(tf.zerosLike(p), false))]),
      )
    this.m = state.m ? toVariables(state.m, this.shapes, false) : zeros()
    this.v = state.v ? toVariables(state.v, this.shapes, false) : zeros()
  }

  async trainStep(batch: Batch, hp: StepHyper): Promise<StepResult> {
    const {x, y} = tensors(batch)
    // Gradients and their global norm stay on the device; only two scalars come back.
    const {value, norm, grads} = tf.tidy(() => {
      const {loss: l, grads: g} = gradients(this.params, this.model, x, y, this.recomputeBlock)
      // A chain of adds, not addN: WebGPU's AddN binds one storage buffer per input and fails past 8 of them.
      const sq = Object.values(g).map((v) => tf.sum(tf.square(v)))
      return {value: l, norm: tf.sqrt(sq.reduce((acc, v) => tf.add(acc, v))), grads: g}
    })
    try {
      const [lossV, normV] = [await readScalar(value), await readScalar(norm)]
      // A NaN/Inf step changes nothing (weights, moments): the caller stops, skips or rolls back.
      if (!Number.isFinite(lossV) || !Number.isFinite(normV)) {
        return {loss: lossV, gradNorm: normV, clipped: false, nonFinite: await this.locateNonFinite(x, y, grads)}
      }

      const clipped = hp.gradClip > 0 && normV > hp.gradClip
      const scale = clipped ? hp.gradClip / normV : 1
      const bc1 = 1 - hp.beta1 ** hp.t
      const bc2 = 1 - hp.beta2 ** hp.t
      tf.tidy(() => {
        for (const [name, g0] of Object.entries(grads)) {
          const g = scale === 1 ? g0 : tf.mul(g0, scale)
          const p = this.params[name]
          const m = tf.add(tf.mul(this.m[name], hp.beta1), tf.mul(g, 1 - hp.beta1))
          const v = tf.add(tf.mul(this.v[name], hp.beta2), tf.mul(tf.square(g), 1 - hp.beta2))
          const update = tf.div(tf.div(m, bc1), tf.add(tf.sqrt(tf.div(v, bc2)), hp.adamEps))
          // Decoupled weight decay (AdamW): shrink the weight itself, not the gradient.
          const decayed = this.decay.has(name) ? tf.mul(p, 1 - hp.lr * hp.weightDecay) : p
          p.assign(tf.sub(decayed, tf.mul(update, hp.lr)))
          this.m[name].assign(m)
          this.v[name].assign(v)
        }
      })
      return {loss: lossV, gradNorm: normV, clipped}
    } finally {
      tf.dispose([value, norm, x, y, ...Object.values(grads)])
    }
  }

  /**
   * Diagnoses a non-finite step. Forward first: the first layer whose output holds a NaN/Inf. If the forward pass is
   * finite, the blow-up happened in the backward pass, which runs from the head down, so it started at the deepest
   * layer with non-finite gradients (or, if every gradient is finite and only the global norm overflowed, at the
   * layer with the largest one).
   */
  async locateNonFinite(x: tf.Tensor2D, y: tf.Tensor2D, grads: Record<string, tf.Tensor>): Promise<NonFiniteOrigin> {
    const layers: {layer: number; probe: tf.Tensor}[] = []
    const {head, lossT} = tf.tidy(() => {
      const {logits} = forward(this.params, this.model, x, {
        onLayer: (l, out) => layers.push({layer: l, probe: tf.keep(nonFiniteProbe(out))}),
      })
      return {head: nonFiniteProbe(logits), lossT: crossEntropy(logits, y, this.model.vocabSize)}
    })
    const rows = Object.entries(grads).map(([name, g]) => ({
      name,
      layer: layerOfParam(name),
      ...tf.tidy(() => ({bad: nonFiniteProbe(g), sq: tf.sum(tf.square(g))})),
    }))
    try {
      let first: number | undefined
      for (const l of layers) if (first === undefined && !Number.isFinite(await readScalar(l.probe))) first = l.layer
      if (first === undefined && !Number.isFinite(await readScalar(head))) first = Infinity
      if (first !== undefined)
        return {
          pass: 'forward',
          layer: Number.isFinite(first) && first >= 0 ? first : null,
          where: `the output of ${layerName(first)}`,
        }
      if (!Number.isFinite(await readScalar(lossT)))
        return {pass: 'forward', layer: null, where: 'the loss (finite logits)'}
      const read = await Promise.all(
        rows.map(async (r) => ({
          name: r.name,
          layer: r.layer,
          bad: !Number.isFinite(await readScalar(r.bad)),
          sq: await readScalar(r.sq),
        })),
      )
      const bad = read.filter((r) => r.bad)
      const pick =
        bad.length > 0
          ? bad.reduce((a, b) => (b.layer > a.layer ? b : a))
          : read.reduce((a, b) => (b.sq > a.sq || (b.sq === a.sq && b.layer > a.layer) ? b : a))
      return {
        pass: 'backward',
        layer: Number.isFinite(pick.layer) && pick.layer >= 0 ? pick.layer : null,
        where: `the gradient of ${pick.name}, ${layerName(pick.layer)}${bad.length > 0 ? '' : ' (all finite, the largest; their global norm overflowed)'}`,
      }
    } finally {
      tf.dispose([head, lossT, ...layers.map((l) => l.probe), ...rows.flatMap((r) => [r.bad, r.sq])])
    }
  }

  async loss(batch: Batch): Promise<number> {
    const {x, y} = tensors(batch)
    const l = tf.tidy(() => crossEntropy(forward(this.params, this.model, x).logits, y, this.model.vocabSize))
    try {
      return await readScalar(l)
    } finally {
      tf.dispose([l, x, y])
    }
  }

  async logits(batch: Batch): Promise<Float32Array> {
    const {x, y} = tensors(batch)
    const logits = tf.tidy(() => forward(this.params, this.model, x).logits)
    try {
      return (await logits.data()) as Float32Array
    } finally {
      tf.dispose([logits, x, y])
    }
  }

  async maps(batch: Batch): Promise<LayerMapsData> {
    const {x, y} = tensors(batch)
    // forward keeps the captured maps alive past the tidy; everything else it made is freed here.
    let maps: LayerMaps[] = []
    tf.tidy(() => {
      maps = forward(this.params, this.model, x, {captureMaps: true}).maps
    })
    try {
      const read = (k: keyof LayerMaps) => Promise.all(maps.map(async (m) => (await m[k].data()) as Float32Array))
      return {
        hRes: await read('hRes'),
        hPre: await read('hPre'),
        hPost: await read('hPost'),
        tokens: batch.size * batch.seqLen,
      }
    } finally {
      for (const m of maps) tf.dispose([m.hRes, m.hPre, m.hPost])
      tf.dispose([x, y])
    }
  }

  async readState(): Promise<EngineState> {
    const read = async (g: Vars) =>
      Object.fromEntries(
        await Promise.all(Object.entries(g).map(async ([k, v]) => [k, (await v.data()) as Float32Array] as const)),
      )
    return {params: await read(this.params), m: await read(this.m), v: await read(this.v)}
  }

  /** Peak bytes above what was alive before (the weights) of one gradient computation, by tfjs's own accounting. */
  async peakMemory(batch: Batch, recomputeBlock: number): Promise<number> {
    const {x, y} = tensors(batch)
    try {
      const before = tf.memory().numBytes
      const info = await tf.profile(() => {
        tf.tidy(() => {
          const {value, grads} = tf.variableGrads(
            () => loss(this.params, this.model, x, y, recomputeBlock),
            Object.values(this.params),
          )
          value.dataSync()
          for (const g of Object.values(grads)) g.dataSync()
        })
      })
      return info.peakBytes - before
    } finally {
      tf.dispose([x, y])
    }
  }

  /** The variables themselves, for tests and tools that work at the tensor level. */
  get variables(): {params: Params; m: Params; v: Params} {
    return {params: this.params, m: this.m, v: this.v}
  }

  private disposeVars(): void {
    for (const g of [this.params, this.m, this.v]) for (const v of Object.values(g)) v.dispose()
    this.params = {}
    this.m = {}
    this.v = {}
  }

  dispose(): void {
    this.disposeVars()
  }
}
