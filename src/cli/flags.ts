// Flags shared by the commands, defined once: one number parser (finite, checked, one-line error), the backend
// switch, and the flags that several commands take, so that the same name always means the same thing.
import {Flags} from '@oclif/core'

import {ARCHS, LIMITS, ModelConfig, NONFINITE_POLICIES, TrainConfig} from '../model/config.js'
import {BACKEND_CHOICES, BACKEND_ENV, CONFIG_ENV} from '../model/engines/backends.js'

const parseNumber = (check: (v: number) => boolean, rule: string) => async (s: string) => {
  const v = Number(s)
  if (s.trim() === '' || !Number.isFinite(v) || !check(v)) throw new Error(`Expected ${rule}, got ${s}`)
  return v
}

/** A real-valued flag; `check`/`rule` say what is allowed. Without `dflt` it is undefined unless given. */
export function numberFlag(o: {
  description: string
  check: (v: number) => boolean
  rule: string
  default?: number
  helpGroup?: string
}) {
  return Flags.custom<number>({
    description: o.description,
    default: o.default,
    helpGroup: o.helpGroup,
    parse: parseNumber(o.check, o.rule),
  })()
}

export const positiveFlag = (description: string, dflt?: number, helpGroup?: string) =>
  numberFlag({description, check: (v) => v > 0, rule: 'a positive number', default: dflt, helpGroup})

/** No default here: an absent flag defers to $MHC_BACKEND, then the config file, then auto (BaseCommand.chooseBackend). */
export const backendFlag = (description = 'compute backend') =>
  Flags.option({
    options: BACKEND_CHOICES,
    description: `${description} [default: $${BACKEND_ENV}, else "backend" in $${CONFIG_ENV} or ~/.config/mhc/config.json, else auto]`,
  })()

/** Validation tokens sampled for gain analyses: one default for every command. */
export const DEFAULT_GAIN_TOKENS = 4096
export const tokensFlag = () =>
  Flags.integer({
    min: 1,
    max: 1_000_000,
    default: DEFAULT_GAIN_TOKENS,
    description: 'validation tokens sampled for the gains (whole sequences of the model context)',
  })

/** Chart files are SVG (Vega-Lite rendered headlessly); nothing is written unless this is given. */
export const CHART_EXTENSIONS = ['.svg']
export const chartFlag = (what: string) => Flags.string({description: `write ${what} as an SVG file`})

/** The Amax-gain gates, identical in analyze-gain and check: each bounds forward and backward gains alike. */
export const gateFlags = (defaults: {maxGain?: number; maxCompositeGain?: number} = {}) => ({
  'max-gain': positiveFlag('gate: single-layer Amax gain of H_res, forward and backward', defaults.maxGain),
  'max-composite-gain': positiveFlag(
    'gate: composite (layer l to the last) Amax gain, forward and backward',
    defaults.maxCompositeGain,
  ),
  'gate-on': Flags.option({
    options: ['mean', 'max'] as const,
    default: 'mean' as const,
    description: 'gate on the mean over tokens (as the paper) or the worst token',
  })(),
})

/** Pipeline and activation flags shared by profile-memory and profile-time. */
export const pipelineStagesFlag = () =>
  Flags.integer({min: 1, description: 'pipeline stages PP [default: the preset layout]'})
export const microBatchesFlag = () =>
  Flags.integer({min: 1, description: 'micro-batches per optimiser step and pipeline [default: the preset layout]'})
export const microBatchSizeFlag = () =>
  Flags.integer({min: 1, description: 'sequences per micro-batch [default: the preset layout]'})
export const activationBytesFlag = () =>
  numberFlag({
    description: 'bytes per activation element (bf16: 2)',
    check: (v) => v > 0 && v <= 16,
    rule: 'a number in (0, 16]',
    default: 2,
  })

// ---------------------------------------------------------------------------------------------------------------
// The model and training flags: one definition each, bounded by the same LIMITS that checkpoints are validated
// against (so every run saves a checkpoint it can load). No defaults here: an absent flag means "the preset's" (or,
// in the profilers, the paper preset's), so each command states its own fallback.

const int = (description: string, min: number, max: number) => Flags.integer({description, min, max})
const num = (description: string, check: (v: number) => boolean, rule: string) => numberFlag({description, check, rule})

export const MODEL_FLAGS = {
  layers: int('Transformer blocks (each = attention + MLP layer)', 1, LIMITS.layers),
  'd-model': int('model width C', 1, LIMITS.dModel),
  heads: int('attention heads', 1, LIMITS.heads),
  'seq-len': int('context length (tokens per sequence)', 1, LIMITS.seqLen),
  'mlp-ratio': int('MLP hidden width / C', 1, LIMITS.mlpRatio),
  expansion: int('residual streams n (hc/mhc)', 1, LIMITS.expansion),
  'sinkhorn-iters': int('Sinkhorn-Knopp iterations t_max (mhc)', 0, LIMITS.sinkhornIters),
}

export const TRAIN_FLAGS = {
  steps: int('total optimiser steps (with --resume: the checkpoint step itself only evaluates)', 0, LIMITS.steps),
  batch: int('sequences per step', 1, LIMITS.batch),
  lr: num('peak learning rate', (v) => v > 0 && v < 10, 'a number in (0, 10)'),
  warmup: int('linear warm-up steps', 0, LIMITS.steps),
  'min-lr-ratio': num('final lr / peak lr (cosine)', (v) => v >= 0 && v <= 1, 'a number in [0, 1]'),
  'weight-decay': num('AdamW decoupled weight decay', (v) => v >= 0, 'a number >= 0'),
  'grad-clip': num('max global gradient norm; 0 = no clipping', (v) => v >= 0, 'a number >= 0'),
  'eval-every': int('validate every N steps (0 = only at the end)', 0, LIMITS.steps),
  'eval-windows': int('validation windows per evaluation', 1, LIMITS.evalWindows),
  'save-every': int('checkpoint every N steps (0 = only at the end)', 0, LIMITS.steps),
  seed: int('seed for initialisation and data order', 0, LIMITS.seed),
  'recompute-block': int(
    'recompute blocks of L_r layers in the backward pass, keeping only block inputs (0 = off)',
    0,
    LIMITS.recomputeBlock,
  ),
  'on-nonfinite': Flags.option({
    options: NONFINITE_POLICIES,
    description:
      'on a NaN/Inf loss or gradient: stop (exit 3), skip the update, or roll back to the last checkpoint with a lower lr [default: stop]',
  })(),
  'rollback-lr-factor': num(
    'rollback: multiply the lr by this at every rollback [default: 0.5]',
    (v) => v > 0 && v < 1,
    'a number in (0, 1)',
  ),
  'max-nonfinite': int(
    'skip: most consecutive skipped steps; rollback: most rollbacks; then stop with exit 3 [default: 10]',
    1,
    1e9,
  ),
}

export const archFlag = (dflt?: ModelConfig['arch']) =>
  Flags.option({
    options: ARCHS,
    ...(dflt ? {default: dflt} : {}),
    description: 'residual connection: baseline (x + F(x)), hc (Hyper-Connections) or mhc (manifold-constrained)',
  })()

/** The config field each model/training flag sets. */
export const FLAG_KEYS: Record<string, keyof ModelConfig | keyof TrainConfig> = {
  layers: 'layers',
  'd-model': 'dModel',
  heads: 'heads',
  'seq-len': 'seqLen',
  'mlp-ratio': 'mlpRatio',
  expansion: 'expansion',
  'sinkhorn-iters': 'sinkhornIters',
  steps: 'steps',
  batch: 'batch',
  lr: 'lr',
  warmup: 'warmup',
  'min-lr-ratio': 'minLrRatio',
  'weight-decay': 'weightDecay',
  'grad-clip': 'gradClip',
  'eval-every': 'evalEvery',
  'eval-windows': 'evalWindows',
  'save-every': 'saveEvery',
  seed: 'seed',
  'recompute-block': 'recomputeBlock',
  'on-nonfinite': 'onNonFinite',
  'rollback-lr-factor': 'rollbackLrFactor',
  'max-nonfinite': 'maxNonFinite',
}

/** Some of the shared flags, e.g. pick(MODEL_FLAGS, 'layers', 'd-model'), optionally in a help group. */
export function pick<F extends Record<string, any>, K extends keyof F>(
  from: F,
  keys: K[],
  helpGroup?: string,
): Pick<F, K> {
  return Object.fromEntries(keys.map((k) => [k, helpGroup ? {...from[k], helpGroup} : from[k]])) as Pick<F, K>
}

/** Config overrides from the given flags (undefined = not given), keyed as the configs name them. */
export function overridesFrom(flags: Record<string, unknown>, names: string[]): Record<string, unknown> {
  return Object.fromEntries(names.map((f) => [FLAG_KEYS[f], flags[f]]))
}
