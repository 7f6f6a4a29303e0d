// Flags shared by the commands, defined once: one number parser (finite, checked, one-line error), the backend
// switch, and the flags that several commands take, so that the same name always means the same thing.
import {Flags} from '@oclif/core'
import {BACKEND_CHOICES, BACKEND_ENV, CONFIG_ENV} from '../model/backend-names.js'

const parseNumber = (check: (v: number) => boolean, rule: string) => async (s: string) => {
  const v = Number(s)
  if (s.trim() === '' || !Number.isFinite(v) || !check(v)) throw new Error(`Expected ${rule}, got ${s}`)
  return v
}

/** A real-valued flag; `check`/`rule` say what is allowed. Without `dflt` it is undefined unless given. */
export function numberFlag(o: {description: string; check: (v: number) => boolean; rule: string; default?: number; helpGroup?: string}) {
  return Flags.custom<number>({description: o.description, default: o.default, helpGroup: o.helpGroup, parse: parseNumber(o.check, o.rule)})()
}

export const positiveFlag = (description: string, dflt?: number, helpGroup?: string) =>
  numberFlag({description, check: (v) => v > 0, rule: 'a positive number', default: dflt, helpGroup})

/** No default here: an absent flag defers to $MHC_BACKEND, then the config file, then auto (BaseCommand.chooseBackend). */
export const backendFlag = (description = 'compute backend') =>
  Flags.option({options: BACKEND_CHOICES, description: `${description} [default: $${BACKEND_ENV}, else "backend" in $${CONFIG_ENV} or ~/.config/mhc/config.json, else auto]`})()

/** Validation tokens sampled for gain analyses: one default for every command. */
export const DEFAULT_GAIN_TOKENS = 4096
export const tokensFlag = () =>
  Flags.integer({min: 1, max: 1_000_000, default: DEFAULT_GAIN_TOKENS, description: 'validation tokens sampled for the gains (whole sequences of the model context)'})

/** Chart files are SVG (Vega-Lite rendered headlessly); nothing is written unless this is given. */
export const CHART_EXTENSIONS = ['.svg']
export const chartFlag = (what: string) => Flags.string({description: `write ${what} as an SVG file`})

/** The Amax-gain gates, identical in analyze-gain and check: each bounds forward and backward gains alike. */
export const gateFlags = (defaults: {maxGain?: number; maxCompositeGain?: number} = {}) => ({
  'max-gain': positiveFlag('gate: single-layer Amax gain of H_res, forward and backward', defaults.maxGain),
  'max-composite-gain': positiveFlag('gate: composite (layer l to the last) Amax gain, forward and backward', defaults.maxCompositeGain),
  'gate-on': Flags.option({options: ['mean', 'max'] as const, default: 'mean' as const, description: 'gate on the mean over tokens (as the paper) or the worst token'})(),
})

/** Pipeline and activation flags shared by profile-memory and profile-time. */
export const pipelineStagesFlag = () => Flags.integer({min: 1, description: 'pipeline stages PP [default: the preset layout]'})
export const microBatchesFlag = () => Flags.integer({min: 1, description: 'micro-batches per optimiser step and pipeline [default: the preset layout]'})
export const microBatchSizeFlag = () => Flags.integer({min: 1, description: 'sequences per micro-batch [default: the preset layout]'})
export const activationBytesFlag = () =>
  numberFlag({description: 'bytes per activation element (bf16: 2)', check: (v) => v > 0 && v <= 16, rule: 'a number in (0, 16]', default: 2})
