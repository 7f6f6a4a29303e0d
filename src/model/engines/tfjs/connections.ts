// The connections' maths in TensorFlow.js (definitions: src/model/connections). For the residual stream xs [N, n, C]:
//   coefficients  H_pre [N, n], H_post [N, n] and the logits H̃_res [N, n, n], by HC's Eq. 5 or mHC's Eq. 7–8;
//   constraint    H_res = H̃_res (HC) or Sinkhorn-Knopp(H̃_res) (mHC): injected by name, so a new projection of
//                 H_res is one entry in RES_CONSTRAINTS;
//   apply         x_{l+1} = H_res x_l + H_post^T F(H_pre x_l).
import type {ModelConfig} from '../../config.js'
import type {Connection, ResConstraint} from '../../connections/index.js'

import {tf} from './backend.js'
import {hostBackend, sinkhornKnopp, sinkhornKnoppFused} from './sinkhorn.js'

type T = tf.Tensor
export type Params = Record<string, tf.Variable | tf.Tensor>
export interface LayerMaps {
  hPre: tf.Tensor2D
  hPost: tf.Tensor2D
  hRes: tf.Tensor3D
} // [N,n], [N,n], [N,n,n]

/**
 * matMul whose backward pass uses explicit transposes. tfjs-wasm only sends non-transposed, unbatched matmuls to
 * XNNPACK; the default gradient (matMul with transposeA/B) takes a scalar loop that is 10–60× slower.
 */
export const mm = tf.customGrad(((a: T, b: T, save: tf.GradSaveFunc) => {
  save([a, b])
  return {
    value: tf.matMul(a, b),
    gradFunc(dy: T, [sa, sb]: T[]) {
      const r = sa.rank
      const perm = [...Array.from({length: r - 2}).keys(), r - 1, r - 2]
      return [tf.matMul(dy, tf.transpose(sb, perm)), tf.matMul(tf.transpose(sa, perm), dy)]
    },
  }
}) as any) as (a: T, b: T) => T

/** RMSNorm over the last axis, optionally with a learned gain. */
export function rmsNorm(x: T, eps: number, weight?: T): T {
  const scaled = tf.mul(x, tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), eps)))
  return weight ? tf.mul(scaled, weight) : scaled
}

/** What H_res is projected onto (connections/connection.ts ResConstraint). */
export const RES_CONSTRAINTS: Record<ResConstraint, (logits: T, cfg: ModelConfig) => T> = {
  none: (logits) => logits,
  // Same maths either way; the fused kernel is one host kernel on wasm/cpu.
  sinkhorn: (logits, cfg) => (hostBackend() ? sinkhornKnoppFused : sinkhornKnopp)(logits, cfg.sinkhornIters),
}

interface Coefficients {
  hPre: T
  hPost: T
  resLogits: T
}

/** HC (Eq. 5): per-stream RMSNorm, then θ_pre, θ_post (1×C) and θ_res (n×C) applied to every stream x̃_j. */
function hcCoefficients(p: Params, q: string, cfg: ModelConfig, xs: T): Coefficients {
  const [N, n, C] = xs.shape
  const proj = tf.reshape(mm(tf.reshape(rmsNorm(xs, cfg.normEps), [N * n, C]), p[`${q}.theta`]), [N, n, 2 + n])
  const [pre, post, res] = tf.split(proj, [1, 1, n], 2)
  const hPre = tf.add(tf.mul(p[`${q}.alpha_pre`], tf.tanh(tf.reshape(pre, [N, n]))), p[`${q}.b_pre`])
  const hPost = tf.add(tf.mul(p[`${q}.alpha_post`], tf.tanh(tf.reshape(post, [N, n]))), p[`${q}.b_post`])
  // res[N, j, i] = θ_res_i · x̃_j, and H_res[i, j] = θ_res_i · x̃_j, hence the transpose.
  const resLogits = tf.add(tf.mul(p[`${q}.alpha_res`], tf.tanh(tf.transpose(res, [0, 2, 1]))), p[`${q}.b_res`])
  return {hPre, hPost, resLogits}
}

/** mHC (Eq. 7–8): one RMSNorm over the flattened n·C stream, one projection φ = [φ_pre | φ_post | φ_res]. */
function mhcCoefficients(p: Params, q: string, cfg: ModelConfig, xs: T): Coefficients {
  const [N, n, C] = xs.shape
  const proj = mm(rmsNorm(tf.reshape(xs, [N, n * C]), cfg.normEps), p[`${q}.phi`])
  const [pre, post, res] = tf.split(proj, [n, n, n * n], 1)
  const hPre = tf.sigmoid(tf.add(tf.mul(p[`${q}.alpha_pre`], pre), p[`${q}.b_pre`]))
  const hPost = tf.mul(2, tf.sigmoid(tf.add(tf.mul(p[`${q}.alpha_post`], post), p[`${q}.b_post`])))
  const resLogits = tf.add(tf.mul(p[`${q}.alpha_res`], tf.reshape(res, [N, n, n])), p[`${q}.b_res`])
  return {hPre, hPost, resLogits}
}

const COEFFICIENTS = {hc: hcCoefficients, mhc: mhcCoefficients}

/** H_pre [N,n], H_post [N,n], H_res [N,n,n] of connection l for the residual stream xs [N,n,C]. */
export function connectionMaps(conn: Connection, p: Params, l: number, cfg: ModelConfig, xs: T): LayerMaps {
  if (conn.coefficients === 'none') throw new Error(`the ${conn.arch} connection has no maps`)
  const {hPre, hPost, resLogits} = COEFFICIENTS[conn.coefficients](p, `conn.${l}`, cfg, xs)
  const hRes = RES_CONSTRAINTS[conn.resConstraint](resLogits, cfg)
  return {hPre: hPre as tf.Tensor2D, hPost: hPost as tf.Tensor2D, hRes: hRes as tf.Tensor3D}
}

/** x_{l+1} = H_res x_l + H_post^T F(H_pre x_l) on the stream xs [N,n,C]. */
export function applyConnection(maps: LayerMaps, xs: T, F: (h: T) => T): T {
  const h = tf.sum(tf.mul(xs, tf.expandDims(maps.hPre, 2)), 1) // H_pre x_l: [N, C]
  const y = F(h)
  return tf.add(mm(maps.hRes, xs), tf.mul(tf.expandDims(maps.hPost, 2), tf.expandDims(y, 1)))
}
