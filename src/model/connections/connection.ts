// What a residual connection is, independent of the engine that computes it. Around every sublayer F (attention or
// MLP), a connection keeps `streams` copies of the residual stream and mixes them:
//   x_{l+1} = H_res x_l + H_post^T F(H_pre x_l)          (HC, paper Eq. 3; the plain residual is n = 1, H = 1)
// A definition gives the learned parts of connection l (names, shapes, initial values) and the constraint put on
// H_res. The maths of each kind lives in each engine (src/model/engines/tfjs/connections.ts, …/webgpu/).
import type {Arch, ModelConfig} from '../config.js'
import type {Rng} from '../rng.js'

export interface ParamSpec {
  name: string
  shape: number[]
  init: (rng: Rng, i: number) => number
  decay: boolean
  /**
   * A matrix the model applies as y = x·W, stored [in, out] here. PyTorch's nn.Linear stores the same matrix [out, in],
   * so `mhc export` / `mhc import` transpose exactly these (the one list of transposes; src/model/io/pytorch.ts).
   */
  linear?: true
}

export const normal = (std: number) => (rng: Rng) => std * rng.normal()
export const constant = (v: number) => () => v

/** What H_res is projected onto: nothing (HC), or the doubly stochastic matrices by Sinkhorn-Knopp (mHC Eq. 9). */
export type ResConstraint = 'none' | 'sinkhorn'

export interface Connection {
  arch: Arch
  description: string
  /** n: copies of the residual stream (1 for the plain residual, which has no maps to analyse). */
  streams(cfg: Pick<ModelConfig, 'expansion'>): number
  /** How H_pre, H_post and H̃_res come from the stream: none (residual), HC's Eq. 5 or mHC's Eq. 7–8. */
  coefficients: 'none' | 'hc' | 'mhc'
  resConstraint: ResConstraint
  /** The learned parts of connection l, in the order checkpoints list them. */
  paramSpecs(cfg: ModelConfig, l: number): ParamSpec[]
  /** Why this connection cannot be built with `cfg`, or undefined. */
  problem(cfg: ModelConfig): string | undefined
}
