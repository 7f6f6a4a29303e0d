// Where everything lives: the flat parameter buffer (every parameter at a 256-byte-aligned offset, the weight-decayed
// ones first so AdamW needs one bound, not a table) and the model's dimensions as the kernels see them.
import {ModelConfig} from '../../config.js'
import {paramSpecs} from '../../params.js'

export const ALIGN = 64 // floats: 256 bytes, the largest minStorageBufferOffsetAlignment WebGPU allows

export const align = (x: number, a = ALIGN) => Math.ceil(x / a) * a

export interface ParamSlot {
  name: string
  shape: number[]
  size: number
  offset: number
  decay: boolean
}

export interface ParamLayout {
  slots: ParamSlot[] // in paramSpecs order
  byName: Map<string, ParamSlot>
  total: number // floats, a multiple of ALIGN
  decayEnd: number // slots with offset < decayEnd are weight-decayed
}

export function paramLayout(cfg: ModelConfig): ParamLayout {
  const specs = paramSpecs(cfg)
  const slots: ParamSlot[] = specs.map((s) => ({
    name: s.name,
    shape: s.shape,
    size: s.shape.reduce((a, b) => a * b, 1),
    offset: 0,
    decay: s.decay,
  }))
  let off = 0
  for (const decay of [true, false])
    for (const s of slots)
      if (s.decay === decay) {
        s.offset = off
        off += align(Math.max(1, s.size))
      }

  const decayEnd = slots.filter((s) => s.decay).reduce((a, s) => Math.max(a, s.offset + align(Math.max(1, s.size))), 0)
  return {slots, byName: new Map(slots.map((s) => [s.name, s])), total: Math.max(off, ALIGN), decayEnd}
}

/** The model's sizes, as the kernels use them. */
export interface Dims {
  arch: ModelConfig['arch']
  B: number
  T: number
  N: number
  C: number
  H: number
  D: number
  F: number
  V: number
  L: number
  n: number // streams of the residual state (1 for the baseline)
  // Connection maps (hc/mhc): R rows per token of length K are projected to Q values each (P = R·Q = 2n + n²).
  R: number
  K: number
  Q: number
  P: number
  MS: number // map values per token: H_pre n | H_post n | H_res n²
  // Per-token state of a sublayer ("cst"): [H_pre | H_post | H_res | proj | rstd of each row | rstd of h]
  CS: number
  oPre: number
  oPost: number
  oRes: number
  oProj: number
  oRX: number
  oRH: number
  AB: number // α/b gradient values per connection: 3 α + n + n + n²
  iters: number
  eps: number
}

export function dims(cfg: ModelConfig, batch: number): Dims {
  const {seqLen: T, dModel: C, heads: H, vocabSize: V, layers: L, arch} = cfg
  if (C % H !== 0) throw new Error(`dModel ${C} is not a multiple of heads ${H}`)
  const n = arch === 'baseline' ? 1 : cfg.expansion
  if (arch !== 'baseline' && !(n >= 1 && n <= 8))
    throw new Error(`expansion ${n}: the WebGPU engine supports 1…8 streams`)
  const R = arch === 'hc' ? n : 1
  const K = arch === 'hc' ? C : n * C
  const Q = arch === 'hc' ? 2 + n : 2 * n + n * n
  const MS = arch === 'baseline' ? 0 : 2 * n + n * n
  const P = arch === 'baseline' ? 0 : R * Q
  const oPost = n
  const oPre = 0
  const oRes = 2 * n
  const oProj = MS
  const oRX = oProj + P
  const oRH = arch === 'baseline' ? 0 : oRX + R
  return {
    arch,
    B: batch,
    T,
    N: batch * T,
    C,
    H,
    D: C / H,
    F: cfg.mlpRatio * C,
    V,
    L,
    n,
    R,
    K,
    Q,
    P,
    MS,
    CS: oRH + 1,
    oPre,
    oPost,
    oRes,
    oProj,
    oRX,
    oRH,
    AB: 3 + 2 * n + n * n,
    iters: cfg.sinkhornIters,
    eps: cfg.normEps,
  }
}
