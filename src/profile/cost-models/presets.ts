// The paper's model configurations (mHC, arXiv 2512.24880, Appendix A.1, Table 5), shared by the profiling
// commands (profile-time and profile-memory). Values marked "Table 5" are the paper's; the rest are stated assumptions.
import {recomputeCurve} from './memory.js'

export interface PaperModel {
  name: string
  description: string
  /** Transformer blocks (Table 5 "Layers"); each is an attention and an FFN layer (the paper's Fig. 3 unrolls both). */
  layers: number
  /** Leading blocks with a dense FFN instead of MoE (Table 5). */
  denseLayers: number
  dModel: number
  /** Width of one expert's SwiGLU FFN (Table 5 "FFN Dimension"). */
  ffnDim: number
  routedExperts: number
  /** Routed experts per token (Table 5 "Active Experts"). */
  activeExperts: number
  sharedExperts: number
  heads: number
  /** Per-head query/key (non-RoPE part) and value width (Table 5 "Attention Dimension"). */
  headDim: number
  /** MLA latent KV rank (Table 5 "KV Rank"). */
  kvRank: number
  /** Decoupled RoPE key/query width (Table 5 "RoPE Dimension"). */
  ropeDim: number
  seqLen: number
  vocab: number
  /** Sequences per optimiser step (Table 5 "Batch Size"). */
  batch: number
  trainingSteps: number
  /** n: residual streams (Table 5 "mHC/HC Expansion Rate"). */
  expansion: number
  sinkhornIters: number
  gateInit: number
  normEps: number
  /** The paper's own parameter counts (Table 5), to check the modelled layer against. */
  paper: {vocabParams: number; activeParams: number; totalParams: number}
  /** Parallel layout (not in the paper): pipeline stages and micro-batches per optimiser step on each replica. */
  pipeline: {stages: number; microBatches: number; microBatchSize: number; why: string}
}

const common = {
  denseLayers: 1,
  activeExperts: 6,
  sharedExperts: 2,
  headDim: 128,
  kvRank: 512,
  ropeDim: 64,
  seqLen: 4096,
  vocab: 129_280,
  expansion: 4,
  sinkhornIters: 20,
  gateInit: 0.01,
  normEps: 1e-20,
}

export const PAPER_MODELS: Record<string, PaperModel> = {
  'paper-3b': {
    ...common,
    name: 'paper-3b',
    description: 'mHC Table 5 3B (MoE, MLA)',
    layers: 12,
    dModel: 1280,
    ffnDim: 896,
    routedExperts: 64,
    heads: 16,
    batch: 320,
    trainingSteps: 30_000,
    paper: {vocabParams: 331e6, activeParams: 612e6, totalParams: 2.97e9},
    pipeline: {
      stages: 4,
      microBatches: 10,
      microBatchSize: 1,
      why: 'L_r* = 3 blocks (Eq. 20, L = 12) → 4 stages; 320 = 10 × 32 replicas',
    },
  },
  'paper-9b': {
    ...common,
    name: 'paper-9b',
    description: 'mHC Table 5 9B (MoE, MLA)',
    layers: 18,
    dModel: 1920,
    ffnDim: 1280,
    routedExperts: 64,
    heads: 24,
    batch: 512,
    trainingSteps: 50_000,
    paper: {vocabParams: 496e6, activeParams: 1.66e9, totalParams: 9.18e9},
    pipeline: {
      stages: 6,
      microBatches: 16,
      microBatchSize: 1,
      why: 'L_r* = 3 blocks (Eq. 20, L = 18) → 6 stages; 512 = 16 × 32 replicas',
    },
  },
  'paper-27b': {
    ...common,
    name: 'paper-27b',
    description: "mHC Table 5 27B (MoE, MLA): the paper's system-level model",
    layers: 30,
    dModel: 2560,
    ffnDim: 1536,
    routedExperts: 72,
    heads: 32,
    batch: 1280,
    trainingSteps: 50_000,
    paper: {vocabParams: 662e6, activeParams: 4.14e9, totalParams: 27e9},
    pipeline: {
      stages: 6,
      microBatches: 20,
      microBatchSize: 1,
      why: 'L_r* = 5 blocks (Eq. 20, L = 30) → 6 stages of 5 blocks; 1280 = 20 × 64 replicas',
    },
  },
}

export const PAPER_MODEL_NAMES = Object.keys(PAPER_MODELS)

/**
 * Parameters of one block's layers, assuming DeepSeek-V2-Lite-style MLA without query compression (q: C → H·(d+d_rope);
 * kv_a: C → r_kv + d_rope; kv_b: r_kv → H·2d; o: H·d → C) and SwiGLU experts (3·C·ffnDim each). With 6 routed +
 * 2 shared experts active this reproduces Table 5's active parameters to ~1% when one copy of the vocabulary
 * (the output head) is counted, which is what makes these assumptions defensible.
 */
export function layerParams(
  m: Pick<
    PaperModel,
    | 'dModel'
    | 'heads'
    | 'headDim'
    | 'kvRank'
    | 'ropeDim'
    | 'ffnDim'
    | 'activeExperts'
    | 'sharedExperts'
    | 'routedExperts'
  >,
) {
  const {dModel: C, heads: H, headDim: d, kvRank: r, ropeDim: dr} = m
  const attention = C * H * (d + dr) + C * (r + dr) + r * H * 2 * d + H * d * C
  const expert = 3 * C * m.ffnDim
  const ffnActive = (m.activeExperts + m.sharedExperts) * expert + C * m.routedExperts // + router
  const ffnTotal = (m.routedExperts + m.sharedExperts) * expert + C * m.routedExperts
  return {attention, ffnActive, ffnTotal, expert}
}

/** Active parameters per token as Table 5 appears to count them: all blocks plus one vocabulary matrix. */
export function activeParams(m: PaperModel): number {
  const p = layerParams(m)
  return m.layers * (p.attention + p.ffnActive) + m.vocab * m.dModel
}

/** Eq. 20: L_r* = argmin nC·⌈L/L_r⌉ + (n+2)C·L_r; every minimiser (ties happen) in units of the given layers. */
export function optimalRecomputeBlock(layers: number, n: number): {best: number[]; approx: number} {
  const curve = recomputeCurve(layers, n, 1) // C scales every term alike: the argmin does not depend on it
  return {best: curve.argmin, approx: curve.closedForm}
}
