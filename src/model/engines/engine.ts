// The seam between the training loop, the analyses and the maths. An engine holds one model's weights and AdamW
// moments on some device and does the numeric work; everything it takes and returns is host data, so a run trained
// by one engine is evaluated, resumed or analysed by another. Engines: `tfjs` (TensorFlow.js: wasm, cpu, tfjs-node-gpu,
// its own webgpu backend) and `webgpu` (our WGSL kernels through Dawn). Data order, the lr schedule, checkpoints and
// policies stay outside, in src/model/train.
import type {ModelConfig} from '../config.js'
import type {NonFiniteOrigin} from '../errors.js'
import type {Batch} from '../io/data.js'
import type {HostTensors} from '../params.js'

export type {Batch} from '../io/data.js'
export type {HostTensors} from '../params.js'

/** AdamW's settings for one step (the lr comes from the schedule on the host; t is the 1-based step). */
export interface StepHyper {
  lr: number
  t: number
  beta1: number
  beta2: number
  adamEps: number
  weightDecay: number
  gradClip: number
}

export interface StepResult {
  loss: number
  gradNorm: number // global L2 norm of the gradients, before clipping
  clipped: boolean
  /** Set when the loss or the gradient norm was NaN/Inf: then nothing was updated (weights, moments). */
  nonFinite?: NonFiniteOrigin
}

/** Per-token connection maps of every layer, row-major: H_pre and H_post [tokens, n], H_res [tokens, n, n]. */
export interface LayerMapsData {
  hPre: Float32Array[]
  hPost: Float32Array[]
  hRes: Float32Array[]
  tokens: number
}

export interface EngineState {
  params: HostTensors
  m: HostTensors
  v: HostTensors
}

export interface Engine {
  readonly name: string // 'tfjs'
  readonly backend: string // where it runs: 'wasm', 'cpu', 'tensorflow', 'webgpu'
  readonly model: ModelConfig
  /** Replaces the weights and, when given, the AdamW moments (zeros otherwise). */
  load(state: {params: HostTensors; m?: HostTensors; v?: HostTensors}): void
  /** One AdamW step on one batch, unless the loss or gradient norm is not finite (then nothing changes). */
  trainStep(batch: Batch, hp: StepHyper): Promise<StepResult>
  /** Mean next-byte cross-entropy (nats) of the batch, forward only. */
  loss(batch: Batch): Promise<number>
  /** Next-byte logits [size·seqLen, vocab], forward only (sampling). Engines without it are skipped by `needs.logits`. */
  logits?(batch: Batch): Promise<Float32Array>
  /** Every layer's H maps for every token of the batch (hc/mhc). */
  maps(batch: Batch): Promise<LayerMapsData>
  /** Weights and moments read back to the host (checkpoints). */
  readState(): Promise<EngineState>
  /** Peak bytes one gradient computation needs above the weights, with recompute blocks of `recomputeBlock` layers. */
  peakMemory?(batch: Batch, recomputeBlock: number): Promise<number>
  dispose(): void
}

export interface EngineOptions {
  model: ModelConfig
  /** Sequences per training batch (engines that size their buffers once, like webgpu, need it; default 16). */
  batch?: number
  /** L_r: recompute blocks of this many layers in the backward pass (paper §4.3.2); 0 = off. Memory, not maths. */
  recomputeBlock?: number
  /** The command reads logits (engine.logits): only engines that return them will do. */
  logits?: boolean
}
