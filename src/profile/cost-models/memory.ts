// Memory of the n-stream residual path against the recompute block size L_r (paper §4.3.2, Table 3, Eq. 20), put in
// the context the usual estimators give (weights, gradients, optimizer states, the rest of the activations).
// All counts are per token in elements unless a name says bytes.
import type {ModelConfig} from '../../model/config.js'

import {connectionOf} from '../../model/connections/index.js'

export type LayerUnit = 'blocks' | 'sublayers'

export interface ResidualPathCounts {
  stored: number // kept from the forward pass to the backward pass
  transient: number // alive only while one block is recomputed
  total: number
}

/**
 * mHC residual path with recompute blocks of L_r layers (Table 3): the block input x_{l0} (nC) is stored once per
 * block and every layer's F output (C) is kept; while a block is recomputed, each of its layers holds x_l (nC),
 * H_pre x_l (C) and RMSNorm(H_pre x_l) (C).
 */
export function mhcPath(L: number, n: number, C: number, Lr: number): ResidualPathCounts {
  const stored = n * C * Math.ceil(L / Lr) + C * L
  const transient = (n + 2) * C * Lr
  return {stored, transient, total: stored + transient}
}

/** mHC without recompute: every layer keeps x_l, H_pre x_l, RMSNorm(H_pre x_l) and F's output. */
export function mhcPathNoRecompute(L: number, n: number, C: number): ResidualPathCounts {
  const stored = (n + 3) * C * L
  return {stored, transient: 0, total: stored}
}

/** Unfused HC keeps what its kernels write (paper Table 2: (3n+1)C + n² + 2n per layer). */
export function hcPath(L: number, n: number, C: number): ResidualPathCounts {
  const stored = ((3 * n + 1) * C + n * n + 2 * n) * L
  return {stored, transient: 0, total: stored}
}

/** A residual connection keeps each layer's input x_l (C): the stream itself is also F's input. */
export function residualPath(L: number, C: number): ResidualPathCounts {
  const stored = C * L
  return {stored, transient: 0, total: stored}
}

export interface RecomputeCurve {
  L: number
  points: {recomputeBlock: number; counts: ResidualPathCounts}[]
  argmin: number[] // every L_r reaching the minimum (ties are real: the objective is integer-valued)
  closedForm: number // √(nL/(n+2))
}

/** Eq. 20 over every L_r from 1 to L, with the exact integer argmin beside the closed form. */
export function recomputeCurve(L: number, n: number, C: number): RecomputeCurve {
  const points = Array.from({length: L}, (_, i) => ({recomputeBlock: i + 1, counts: mhcPath(L, n, C, i + 1)}))
  const min = Math.min(...points.map((p) => p.counts.total))
  return {
    L,
    points,
    argmin: points.filter((p) => p.counts.total === min).map((p) => p.recomputeBlock),
    closedForm: Math.sqrt((n * L) / (n + 2)),
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Context: the whole per-GPU picture, in the way Megatron's theoretical_memory_usage / DeepSpeed's estimators report.

export interface MemoryConfig {
  name: string
  layers: number // Transformer blocks
  dModel: number
  heads: number
  seqLen: number
  microBatchSize: number
  expansion: number
  totalParams: number // all parameters (MoE: every expert)
  pipelineStages: number
  microBatches: number // per optimiser step and pipeline; 1F1B keeps min(PP, M) in flight on the first stage
  tensorParallel: number
  layerUnit: LayerUnit // what L means in Eq. 20
  activationBytes: number // bf16 activations: 2
  weightBytes: number // per parameter: bf16 weights 2
  gradBytes: number // fp32 gradient accumulation 4
  optimizerBytes: number // fp32 master weights + Adam m + v: 12
  optimizerShards: number // ZeRO-1: optimizer states split over this many data-parallel ranks
  transformerRecompute: 'none' | 'selective' | 'full' // the rest of the activations (Korthikanti et al. 2022)
}

export interface MemoryRow {
  item: string
  bytes: number
  note: string
}

/**
 * Activations of the Transformer layer itself, per block and micro-batch (Korthikanti et al., "Reducing Activation
 * Recomputation in Large Transformer Models", 16-bit): s·b·h·(34 + 5·a·s/h) with no recompute, 34·s·b·h with
 * selective recompute (attention scores recomputed), 2·s·b·h with full recompute (block input only); divided by t.
 */
export function transformerActivationBytes(
  s: number,
  b: number,
  h: number,
  a: number,
  t: number,
  mode: MemoryConfig['transformerRecompute'],
): number {
  if (mode === 'full') return (2 * s * b * h) / t
  if (mode === 'selective') return (34 * s * b * h) / t
  return (s * b * h * (34 + (5 * a * s) / h)) / t
}

export interface MemoryReport {
  config: MemoryConfig
  L: number
  curve: RecomputeCurve
  rows: MemoryRow[] // per GPU, first pipeline stage, at L_r*
  perStage: {layers: number; params: number; inFlight: number}
  paths: {name: string; perTokenElements: number; perGpuBytes: number}[]
}

/** Per-GPU memory of the first pipeline stage (it holds the most micro-batches in flight under 1F1B). */
export function memoryReport(c: MemoryConfig): MemoryReport {
  const L = c.layerUnit === 'blocks' ? c.layers : 2 * c.layers
  const n = c.expansion
  const C = c.dModel
  const curve = recomputeCurve(L, n, C)
  const Lr = curve.argmin[0]
  const stageLayers = L / c.pipelineStages // Eq. 20's blocks align with stages (paper §4.3.2)
  const stageBlocks = c.layers / c.pipelineStages
  const inFlight = Math.min(c.pipelineStages, c.microBatches)
  const tokens = c.seqLen * c.microBatchSize
  const params = c.totalParams / c.pipelineStages / c.tensorParallel
  // Per-token counts for the stage: the recompute objective restricted to the stage's layers.
  const stagePath = (counts: (l: number) => ResidualPathCounts) => counts(stageLayers)
  const paths = [
    {name: `mHC, recompute L_r = ${Lr}`, counts: stagePath((l) => mhcPath(l, n, C, Math.min(Lr, l)))},
    {name: 'mHC, no recompute', counts: stagePath((l) => mhcPathNoRecompute(l, n, C))},
    {name: 'HC (unfused, no recompute)', counts: stagePath((l) => hcPath(l, n, C))},
    {name: 'residual', counts: stagePath((l) => residualPath(l, C))},
  ].map((p) => ({
    name: p.name,
    perTokenElements: p.counts.total,
    // Stored activations accumulate over the micro-batches in flight; only one block is recomputed at a time.
    perGpuBytes: ((p.counts.stored * inFlight + p.counts.transient) * tokens * c.activationBytes) / c.tensorParallel,
  }))
  const rest =
    transformerActivationBytes(c.seqLen, c.microBatchSize, C, c.heads, c.tensorParallel, c.transformerRecompute) *
    stageBlocks *
    inFlight
  const rows: MemoryRow[] = [
    {
      item: 'weights',
      bytes: params * c.weightBytes,
      note: `${fmtCount(params)} params on this GPU × ${c.weightBytes} B`,
    },
    {item: 'gradients', bytes: params * c.gradBytes, note: `× ${c.gradBytes} B`},
    {
      item: 'optimizer states',
      bytes: (params * c.optimizerBytes) / c.optimizerShards,
      note: `× ${c.optimizerBytes} B (fp32 master, Adam m, v)${c.optimizerShards > 1 ? ` / ${c.optimizerShards} ZeRO-1 shards` : ''}`,
    },
    {
      item: `Transformer activations (${c.transformerRecompute} recompute)`,
      bytes: rest,
      note: `Korthikanti et al.; ${stageBlocks} blocks × ${inFlight} micro-batches in flight`,
    },
    {
      item: paths[0].name,
      bytes: paths[0].perGpuBytes,
      note: `Eq. 20 residual path: stored × ${inFlight} micro-batches + one block's transient`,
    },
  ]
  rows.push({item: 'total', bytes: rows.reduce((s, r) => s + r.bytes, 0), note: 'first pipeline stage, per GPU'})
  return {config: c, L, curve, rows, perStage: {layers: stageLayers, params, inFlight}, paths}
}

export const GiB = 2 ** 30
const fmtCount = (v: number) =>
  v >= 1e9 ? `${(v / 1e9).toFixed(2)}B` : v >= 1e6 ? `${(v / 1e6).toFixed(1)}M` : String(Math.round(v))

// ---------------------------------------------------------------------------------------------------------------
// This implementation's own training memory (the tfjs engine, fp32), estimated before anything is allocated, so that a
// size that cannot fit is refused with the figure rather than ending in a wasm abort or the OOM killer. TensorFlow.js
// keeps every intermediate of the backward pass, about 8× what Korthikanti et al. count for a fused implementation,
// so the terms are this implementation's own: bytes per unit, fitted by least squares to tf.profile peaks of one
// training step at 27 shapes (bench/memory-estimate.ts → bench/results/memory-estimate-tfjs.json: within 14% at those
// small shapes, within 5% at the presets).

export interface TrainingShape extends Pick<
  ModelConfig,
  'arch' | 'layers' | 'dModel' | 'heads' | 'seqLen' | 'mlpRatio' | 'expansion' | 'vocabSize'
> {
  params: number
  batch: number
  recomputeBlock: number // L_r in sublayers; 0 = off
}

export interface TrainingEstimate {
  bytes: number
  state: number // weights and what the optimiser step holds per parameter (gradients, AdamW moments, temporaries)
  activations: number // per token: the sublayers' intermediates, the streams, the logits
  /** Bytes one more sequence of the batch adds: what a --batch suggestion divides by. */
  perSequence: number
}

/** Bytes per unit of the tfjs engine's peak during one training step (see above). */
export const TFJS_MEMORY = {
  perParam: 4 + 17.3, // the weights, plus gradients, AdamW moments and the update's temporaries
  perTokenSublayer: {dModel: 95.6, mlpHalf: 44.4, scoresHalf: 42.4, streams: 90.9, maps: 104.7}, // × C, mlpRatio·C/2, H·T/2, n·C, n²
  perToken: {vocab: 38.2, dModel: 273},
}

export function trainingMemoryEstimate(s: TrainingShape): TrainingEstimate {
  const L = 2 * s.layers // sublayers: each has its own connection
  const conn = connectionOf(s)
  const hyper = conn.coefficients !== 'none'
  const n = conn.streams(s)
  const c = TFJS_MEMORY.perTokenSublayer
  const C = s.dModel
  const perSublayer =
    c.dModel * C +
    (c.mlpHalf * s.mlpRatio * C) / 2 +
    (c.scoresHalf * s.heads * s.seqLen) / 2 +
    (hyper ? c.streams * n * C + c.maps * n * n : 0)
  // With recompute blocks of L_r sublayers only one block's intermediates live at a time, plus every block's input
  // (kept twice by tfjs: measure/memory.ts storedBlockBytes).
  const Lr = Math.min(s.recomputeBlock, L)
  const layerBytes = Lr > 0 ? perSublayer * Lr + 2 * 4 * n * C * Math.ceil(L / Lr) : perSublayer * L
  const perToken = layerBytes + TFJS_MEMORY.perToken.vocab * s.vocabSize + TFJS_MEMORY.perToken.dModel * C
  const state = TFJS_MEMORY.perParam * s.params
  const activations = perToken * s.batch * s.seqLen
  return {bytes: state + activations, state, activations, perSequence: perToken * s.seqLen}
}
