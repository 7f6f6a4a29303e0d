// The ground floor: what a model and a training run are, the named presets, and the bounds every config obeys.
// Nothing here computes; everything else imports it. The paper's quantities keep the paper's names: expansion (n),
// sinkhornIters (t_max), recomputeBlock (L_r).

export type Arch = 'baseline' | 'hc' | 'mhc'
export const ARCHS: readonly Arch[] = ['baseline', 'hc', 'mhc']

export interface ModelConfig {
  arch: Arch // the residual connection around every sublayer (src/model/connections)
  vocabSize: number
  seqLen: number
  layers: number // Transformer blocks; each has an attention and an MLP sublayer
  dModel: number // C
  heads: number
  mlpRatio: number
  expansion: number // n, residual streams (hc/mhc)
  sinkhornIters: number // t_max
  gateInit: number // α init (paper: 0.01)
  normEps: number
}

export type NonFinitePolicy = 'stop' | 'skip' | 'rollback'
export const NONFINITE_POLICIES: readonly NonFinitePolicy[] = ['stop', 'skip', 'rollback']
export const DEFAULT_MAX_NONFINITE = 10
export const DEFAULT_ROLLBACK_LR_FACTOR = 0.5

export interface TrainConfig {
  steps: number // total optimiser steps of the run (a resumed run continues to this step)
  scheduleSteps?: number // horizon of the cosine decay; fixed at the first run's --steps so that resuming further does not re-warm the lr
  batch: number
  lr: number // peak learning rate
  minLrRatio: number // cosine decays to lr·minLrRatio
  warmup: number // linear warm-up steps
  weightDecay: number
  beta1: number
  beta2: number
  adamEps: number
  gradClip: number // max global grad norm; 0 turns clipping off (so instability stays observable)
  evalEvery: number
  evalWindows: number // validation windows of seqLen bytes per evaluation
  saveEvery: number // 0: only at the end
  seed: number
  recomputeBlock?: number // L_r: recompute blocks of this many layers in the backward pass (paper §4.3.2); 0/absent = off
  onNonFinite?: NonFinitePolicy // a NaN/Inf loss or gradient: stop (default), skip the update, or roll back
  rollbackLrFactor?: number // each rollback multiplies lrScale by this (default 0.5)
  maxNonFinite?: number // skip: most consecutive skipped steps; rollback: most rollbacks per invocation (default 10)
  lrScale?: number // product of the rollback factors so far (absent = 1); part of the optimisation path, so checkpoints carry it
}

/** Attention and MLP are separate layers (the paper's Fig. 3), each with its own connection: l = 0 … 2·layers−1. */
export const numConnections = (cfg: Pick<ModelConfig, 'layers'>) => 2 * cfg.layers

// ---------------------------------------------------------------------------------------------------------------
// Presets: named model + training configurations. Flags override individual fields.

export interface Preset {
  description: string
  model: Omit<ModelConfig, 'arch'>
  train: TrainConfig
}

const model = (o: Partial<ModelConfig>): Omit<ModelConfig, 'arch'> => ({
  vocabSize: 256,
  seqLen: 64,
  layers: 4,
  dModel: 128,
  heads: 4,
  mlpRatio: 4,
  expansion: 4,
  sinkhornIters: 20,
  gateInit: 0.01,
  normEps: 1e-20,
  ...o, // ε = 1e−20 as in the paper's Table 5
})

/** A model config of `arch`: the small preset's sizes and the paper's settings, with `o` overriding any of them. */
export const modelConfig = (arch: Arch, o: Partial<Omit<ModelConfig, 'arch'>> = {}): ModelConfig => ({
  arch,
  ...model(o),
})
const train = (o: Partial<TrainConfig>): TrainConfig => ({
  steps: 400,
  batch: 16,
  lr: 3e-3,
  minLrRatio: 0.1,
  warmup: 30,
  weightDecay: 0.1,
  beta1: 0.9,
  beta2: 0.95,
  adamEps: 1e-8,
  gradClip: 1,
  evalEvery: 100,
  evalWindows: 256,
  saveEvery: 200,
  seed: 1337,
  ...o,
})

export const PRESETS: Record<string, Preset> = {
  tiny: {
    description: '1 block, C=32, T=32: seconds on a CPU (tests, fixtures)',
    model: model({layers: 1, dModel: 32, heads: 2, seqLen: 32}),
    train: train({steps: 40, batch: 8, evalEvery: 20, evalWindows: 32, saveEvery: 20, warmup: 5}),
  },
  small: {
    description: '4 blocks, C=128, T=64: the default, 4 to 14 minutes on 2 CPU cores (531-1,864 tokens/s)',
    model: model({}),
    train: train({}),
  },
  deep: {
    description: '12 blocks, C=64: many H_res products, for stability experiments',
    model: model({layers: 12, dModel: 64, heads: 4, seqLen: 64}),
    train: train({steps: 300, evalEvery: 100, saveEvery: 0}),
  },
  medium: {
    description: '6 blocks, C=256, T=128: for a GPU backend',
    model: model({layers: 6, dModel: 256, heads: 8, seqLen: 128}),
    train: train({steps: 2000, batch: 32, lr: 2e-3, warmup: 100, evalEvery: 250, saveEvery: 500}),
  },
}

export const DEFAULT_PRESET = 'small'
export const DEFAULT_ARCH: Arch = 'mhc'

/**
 * A preset's model and training config with some fields overridden (flags; undefined means "the preset's"). Keys of
 * the preset's model config go to the model, every other key to the training config.
 */
export function configFromPreset(
  preset: string,
  arch: Arch,
  overrides: Partial<Omit<ModelConfig, 'arch'>> & Partial<TrainConfig> = {},
): {model: ModelConfig; train: TrainConfig} {
  const p = PRESETS[preset]
  const given = Object.entries(overrides).filter(([, v]) => v !== undefined)
  const isModelKey = (k: string) => k in p.model
  const model = {arch, ...p.model, ...Object.fromEntries(given.filter(([k]) => isModelKey(k)))} as ModelConfig
  const train = {...p.train, ...Object.fromEntries(given.filter(([k]) => !isModelKey(k)))} as TrainConfig
  return {model, train: {...train, scheduleSteps: train.steps}}
}

// ---------------------------------------------------------------------------------------------------------------
// Bounds. Far above any real config: a corrupt manifest must not make us list millions of tensors or allocate
// terabytes before the shape checks can say it is wrong. The flags use the same bounds, so every run saves
// checkpoints it can load.

const MODEL_LIMITS = {
  vocabSize: 1 << 20,
  seqLen: 1 << 20,
  layers: 4096,
  dModel: 1 << 16,
  heads: 1 << 16,
  mlpRatio: 64,
  expansion: 64,
}
export const LIMITS = {
  ...MODEL_LIMITS,
  sinkhornIters: 10_000,
  steps: 1e12,
  batch: 1 << 20,
  evalWindows: 1 << 24,
  seed: 2 ** 32 - 1,
  recomputeBlock: 1 << 20,
}

const isInt = (v: unknown, min: number, max = Number.MAX_SAFE_INTEGER) =>
  Number.isSafeInteger(v) && (v as number) >= min && (v as number) <= max
const isNum = (v: unknown, min: number, max: number) =>
  typeof v === 'number' && Number.isFinite(v) && v >= min && v <= max

/** Why a model config (from flags or a manifest) cannot be built, or undefined. Shape rules only; no I/O. */
export function modelConfigProblem(m: any): string | undefined {
  if (typeof m !== 'object' || m === null) return 'missing'
  if (!ARCHS.includes(m.arch)) return `arch ${JSON.stringify(m.arch)} is not one of ${ARCHS.join(', ')}`
  for (const [k, max] of Object.entries(MODEL_LIMITS))
    if (!isInt(m[k], 1, max)) return `${k} must be an integer in [1, ${max}]`
  if (!isInt(m.sinkhornIters, 0, LIMITS.sinkhornIters))
    return `sinkhornIters must be an integer in [0, ${LIMITS.sinkhornIters}]`
  if (m.dModel % m.heads !== 0) return `dModel ${m.dModel} is not divisible by heads ${m.heads}`
  if (m.arch !== 'baseline' && m.expansion < 2) return 'expansion must be at least 2 for hc/mhc'
  for (const k of ['gateInit', 'normEps'])
    if (typeof m[k] !== 'number' || !Number.isFinite(m[k])) return `${k} must be a finite number`
  if (m.normEps < 0) return 'normEps must be at least 0 (RMSNorm divides by √(mean x² + ε))'
  return undefined
}

/** Why a training config (from a manifest) is unusable, or undefined. */
export function trainConfigProblem(t: any): string | undefined {
  if (typeof t !== 'object' || t === null || Array.isArray(t)) return 'missing'
  const ints: [string, number, number][] = [
    ['steps', 0, LIMITS.steps],
    ['batch', 1, LIMITS.batch],
    ['warmup', 0, Number.MAX_SAFE_INTEGER],
    ['evalEvery', 0, Number.MAX_SAFE_INTEGER],
    ['evalWindows', 1, LIMITS.evalWindows],
    ['saveEvery', 0, Number.MAX_SAFE_INTEGER],
    ['seed', 0, LIMITS.seed],
  ]
  for (const [k, min, max] of ints) if (!isInt(t[k], min, max)) return `${k} must be an integer in [${min}, ${max}]`
  const nums: [string, number, number][] = [
    ['lr', Number.MIN_VALUE, 1e6],
    ['minLrRatio', 0, 1],
    ['weightDecay', 0, Number.MAX_VALUE],
    ['beta1', 0, 1],
    ['beta2', 0, 1],
    ['adamEps', 0, 1],
    ['gradClip', 0, Number.MAX_VALUE],
  ]
  for (const [k, min, max] of nums) if (!isNum(t[k], min, max)) return `${k} must be a number in [${min}, ${max}]`
  // Optional fields, added over time.
  if (t.scheduleSteps !== undefined && !isInt(t.scheduleSteps, 0, 1e12))
    return 'scheduleSteps must be a non-negative integer'
  if (t.recomputeBlock !== undefined && !isInt(t.recomputeBlock, 0, LIMITS.recomputeBlock))
    return 'recomputeBlock must be a non-negative integer'
  if (t.onNonFinite !== undefined && !NONFINITE_POLICIES.includes(t.onNonFinite))
    return `onNonFinite ${JSON.stringify(t.onNonFinite)} is not stop, skip or rollback`
  if (t.rollbackLrFactor !== undefined && !isNum(t.rollbackLrFactor, Number.MIN_VALUE, 1))
    return 'rollbackLrFactor must be a number in (0, 1]'
  if (t.maxNonFinite !== undefined && !isInt(t.maxNonFinite, 1, 1e9)) return 'maxNonFinite must be a positive integer'
  if (t.lrScale !== undefined && !isNum(t.lrScale, Number.MIN_VALUE, 1)) return 'lrScale must be a number in (0, 1]'
  return undefined
}
