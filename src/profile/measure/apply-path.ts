// Calibration of the time model on this machine: the mHC apply path (F_pre = H_pre x_l, F_post,res = H_res x_l +
// H_post^T F) on the current TensorFlow.js backend, as separate ops and as one fused op, beside what the kernel model
// predicts for the same op sequences. A tfjs micro-benchmark by design: it measures tfjs's per-op cost.
import type {Tensor} from '@tensorflow/tfjs'

import {Hardware, KernelSpec, kernelSpecs, kernelTime} from '../cost-models/kernels.js'

export interface MeasureOptions {
  tokens: number
  expansion: number
  dModel: number
  reps: number
}
export interface ApplyTiming {
  fPre: number
  fPostRes: number
}
export interface MeasureResult {
  backend: string
  shape: MeasureOptions
  /** Median seconds: tfjs ops exactly as src/model/engines/tfjs/connections.ts applyConnection runs them. */
  separate: ApplyTiming & {ops: {fPre: number; fPostRes: number}}
  /**
   * Median seconds of one JS kernel per map on host memory, as a tfjs op: reading the inputs from the backend and
   * making the output a tensor included (null where the backend keeps tensors off the host).
   */
  fused: ApplyTiming | null
  /** The same JS kernel alone, on arrays already in JS memory. */
  fusedKernel: ApplyTiming | null
  measuredRatio: ApplyTiming | null
  kernelRatio: ApplyTiming | null
  /** The kernel model's ratio for the same op sequences on the selected hardware, and the pure byte ratio (fp32). */
  modelRatio: ApplyTiming
  byteRatio: ApplyTiming
  what: string
  maxAbsError: number | null
}

/** Element counts of the op sequences that are timed: tfjs's separate ops and the fused kernels. */
export function applyPathSpecs(
  n: number,
  C: number,
): Record<'separate' | 'fused', {fPre: KernelSpec[]; fPostRes: KernelSpec[]}> {
  const hc = kernelSpecs('hc', {expansion: n, dModel: C, sinkhornIters: 0})
  const fused = kernelSpecs('mhc-fused', {expansion: n, dModel: C, sinkhornIters: 0})
  const X = n * C
  const ew = (name: string, r: number, w: number): KernelSpec => ({
    name,
    pass: 'fwd',
    reads: [{what: 'in', elems: r, dtype: 'act'}],
    writes: [{what: 'out', elems: w, dtype: 'act'}],
    flops: r,
    flopUnit: 'vector',
  })
  return {
    // tfjs: tf.mul(xs, H_pre) materialises n·C, then tf.sum reduces the streams.
    separate: {fPre: [ew('mul', X + n, X), ew('sum', X, C)], fPostRes: hc.filter((k) => k.pass === 'fwd' && k.postRes)},
    fused: {
      fPre: fused.filter((k) => k.name.startsWith('F_pre =')),
      fPostRes: fused.filter((k) => k.pass === 'fwd' && k.postRes),
    },
  }
}

export async function measureApplyPath(o: MeasureOptions, hw: Hardware): Promise<MeasureResult> {
  const {tf} = await import('../../model/engines/tfjs/backend.js') // tfjs only when asked for: the model needs none of it
  const {hostBackend} = await import('../../model/engines/tfjs/sinkhorn.js')
  const {tokens: N, expansion: n, dModel: C, reps} = o
  const host = hostBackend()
  let seed = 12_345
  const rnd = () => {
    seed = (seed * 16_807) % 2_147_483_647
    return (seed / 2_147_483_647) * 2 - 1
  }

  const fill = (size: number, f = rnd) => Float32Array.from({length: size}, f)
  const xsData = fill(N * n * C)
  const yData = fill(N * C)
  const hPreData = fill(N * n, () => (rnd() + 1) / n)
  const hPostData = fill(N * n, () => rnd() + 1)
  const hResData = fill(N * n * n, () => (rnd() + 1) / n)
  const xs = tf.tensor3d(xsData, [N, n, C])
  const y = tf.tensor2d(yData, [N, C])
  const hPre = tf.tensor2d(hPreData, [N, n])
  const hPost = tf.tensor2d(hPostData, [N, n])
  const hRes = tf.tensor3d(hResData, [N, n, n])

  // As in applyConnection (src/model/engines/tfjs/connections.ts); the H_res product is the forward of its `mm` (a batched matMul).
  // tidy frees the intermediates (at 4096 tokens they would fill the wasm heap within a few repetitions).
  const sepPre = () => tf.tidy(() => tf.sum(tf.mul(xs, tf.expandDims(hPre, 2)), 1))
  const sepPostRes = () =>
    tf.tidy(() => tf.add(tf.matMul(hRes, xs), tf.mul(tf.expandDims(hPost, 2), tf.expandDims(y, 1))))
  // One pass over host memory per map, as a fused kernel would: read x_l (and F) once, write the result once.
  // n = 4 (the paper's) gets an unrolled loop, 2.5× faster in V8 than the generic one.
  const preKernel = (x: Float32Array, hp: Float32Array, out: Float32Array) => {
    for (let t = 0; t < N; t++) {
      const b = t * n * C
      const o = t * C
      if (n === 4) {
        const w0 = hp[t * 4]
        const w1 = hp[t * 4 + 1]
        const w2 = hp[t * 4 + 2]
        const w3 = hp[t * 4 + 3]
        for (let c = 0; c < C; c++)
          out[o + c] = w0 * x[b + c] + w1 * x[b + C + c] + w2 * x[b + 2 * C + c] + w3 * x[b + 3 * C + c]
      } else {
        for (let c = 0; c < C; c++) {
          let acc = 0
          for (let j = 0; j < n; j++) acc += hp[t * n + j] * x[b + j * C + c]
          out[o + c] = acc
        }
      }
    }
  }

  const postResKernel = (x: Float32Array, f: Float32Array, hr: Float32Array, hq: Float32Array, out: Float32Array) => {
    for (let t = 0; t < N; t++) {
      const b = t * n * C
      const fo = t * C
      for (let i = 0; i < n; i++) {
        const o = b + i * C
        const p = hq[t * n + i]
        const r = (t * n + i) * n
        if (n === 4) {
          const w0 = hr[r]
          const w1 = hr[r + 1]
          const w2 = hr[r + 2]
          const w3 = hr[r + 3]
          for (let c = 0; c < C; c++)
            out[o + c] =
              p * f[fo + c] + w0 * x[b + c] + w1 * x[b + C + c] + w2 * x[b + 2 * C + c] + w3 * x[b + 3 * C + c]
        } else {
          for (let c = 0; c < C; c++) {
            let acc = p * f[fo + c]
            for (let j = 0; j < n; j++) acc += hr[r + j] * x[b + j * C + c]
            out[o + c] = acc
          }
        }
      }
    }
  }

  // As tfjs ops: the inputs are read from the backend and the result becomes a tensor again.
  const fusedPre = () => {
    const out = new Float32Array(N * C)
    preKernel(xs.dataSync() as Float32Array, hPre.dataSync() as Float32Array, out)
    return tf.tensor2d(out, [N, C])
  }

  const fusedPostRes = () => {
    const out = new Float32Array(N * n * C)
    postResKernel(
      xs.dataSync() as Float32Array,
      y.dataSync() as Float32Array,
      hRes.dataSync() as Float32Array,
      hPost.dataSync() as Float32Array,
      out,
    )
    return tf.tensor3d(out, [N, n, C])
  }

  const timeSync = (fn: () => void): number => {
    const ts: number[] = []
    for (let r = 0; r <= reps; r++) {
      const t0 = performance.now()
      fn()
      if (r > 0) ts.push((performance.now() - t0) / 1e3)
    }

    return ts.sort((a, b) => a - b)[Math.floor(ts.length / 2)]
  }

  const time = async (fn: () => Tensor): Promise<number> => {
    const ts: number[] = []
    for (let r = 0; r <= reps; r++) {
      const t0 = performance.now()
      const out = fn()
      await out.data() // wait for the backend to finish
      const dt = (performance.now() - t0) / 1e3
      out.dispose()
      if (r > 0) ts.push(dt) // the first run warms up (kernel compilation, allocation)
    }

    ts.sort((a, b) => a - b)
    return ts[Math.floor(ts.length / 2)]
  }

  try {
    const separate = {fPre: await time(sepPre), fPostRes: await time(sepPostRes), ops: {fPre: 2, fPostRes: 3}}
    let fused: ApplyTiming | null = null
    let fusedKernel: ApplyTiming | null = null
    let maxAbsError: number | null = null
    if (host) {
      fused = {fPre: await time(fusedPre), fPostRes: await time(fusedPostRes)}
      const outPre = new Float32Array(N * C)
      const outPost = new Float32Array(N * n * C)
      fusedKernel = {
        fPre: timeSync(() => preKernel(xsData, hPreData, outPre)),
        fPostRes: timeSync(() => postResKernel(xsData, yData, hResData, hPostData, outPost)),
      }
      const diff = (a: () => Tensor, b: () => Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a(), b()))).dataSync()[0])
      maxAbsError = Math.max(diff(sepPre, fusedPre), diff(sepPostRes, fusedPostRes))
    }

    const specs = applyPathSpecs(n, C)
    const fp32 = {act: 4, coef: 4}
    const t = (ks: KernelSpec[]) => ks.reduce((s, k) => s + kernelTime(k, hw, fp32, N).time, 0)
    const b = (ks: KernelSpec[]) => ks.reduce((s, k) => s + kernelTime(k, {...hw, launch: 0}, fp32, N).bytes, 0)
    return {
      backend: tf.getBackend(),
      shape: o,
      separate,
      fused,
      fusedKernel,
      measuredRatio: fused ? {fPre: separate.fPre / fused.fPre, fPostRes: separate.fPostRes / fused.fPostRes} : null,
      kernelRatio: fusedKernel
        ? {fPre: separate.fPre / fusedKernel.fPre, fPostRes: separate.fPostRes / fusedKernel.fPostRes}
        : null,
      modelRatio: {
        fPre: t(specs.separate.fPre) / t(specs.fused.fPre),
        fPostRes: t(specs.separate.fPostRes) / t(specs.fused.fPostRes),
      },
      byteRatio: {
        fPre: b(specs.separate.fPre) / b(specs.fused.fPre),
        fPostRes: b(specs.separate.fPostRes) / b(specs.fused.fPostRes),
      },
      what: host
        ? `separate = tfjs ops on ${tf.getBackend()} (F_pre: mul + sum; F_post,res: batched matMul + mul + add, as applyConnection); ` +
          'fused op = one single-threaded JS loop per map over host memory (like the fused Sinkhorn-Knopp kernel), reading the inputs from the backend and creating the output tensor included; fused kernel = that loop alone; fp32 throughout'
        : `separate = tfjs ops on ${tf.getBackend()}; no fused op: this backend keeps tensors off the host, and a JS kernel would time the copies`,
      maxAbsError,
    }
  } finally {
    for (const x of [xs, y, hPre, hPost, hRes]) x.dispose()
  }
}
