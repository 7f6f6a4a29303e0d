// `mhc train --config FILE`: every training flag from a YAML or JSON file, so that a run's settings can be kept,
// diffed and shared. Keys are the flag names (`d-model: 128`, `lr: 3e-3`), and `model:` / `train:` blocks with the
// config's own camelCase fields (as `--print-config` writes them) are read too; a checkpoint's manifest.json is a
// config file as it is (its model, training config and corpus). Every value goes through the flag's own parser and bounds, so a file is exactly as strict as the
// command line. Precedence: preset < file < flags.
import {readFileSync, statSync} from 'node:fs'
import {extname} from 'node:path'
import YAML from 'yaml'

import {didYouMean, UsageError} from './base.js'
import {FLAG_KEYS} from './flags.js'

/** The camelCase config field → its flag name (inverse of FLAG_KEYS). */
const FLAG_OF: Record<string, string> = Object.fromEntries(Object.entries(FLAG_KEYS).map(([f, k]) => [k, f]))
// Fields of a manifest's `model`/`train` blocks that are not flags: fixed by the architecture or derived.
const DERIVED = new Set([
  'adamEps',
  'arch',
  'beta1',
  'beta2',
  'gateInit',
  'lrScale',
  'normEps',
  'scheduleSteps',
  'vocabSize',
])

type FlagDef = {
  type: 'boolean' | 'option'
  options?: readonly string[]
  parse?: (input: string, ctx: any, opts: any) => Promise<unknown>
}

/** Reads a config file into flag values, each checked by the flag definition in `defs`. One line per problem. */
export async function readRunConfig(path: string, defs: Record<string, FlagDef>): Promise<Record<string, unknown>> {
  let text: string
  try {
    if (!statSync(path).isFile()) throw new Error('not a regular file')
    text = readFileSync(path, 'utf8')
  } catch (error) {
    throw new UsageError(`--config ${path}: cannot be read (${(error as Error).message})`)
  }

  let raw: unknown
  try {
    raw = extname(path).toLowerCase() === '.json' ? JSON.parse(text) : YAML.parse(text, {uniqueKeys: true})
  } catch (error) {
    throw new UsageError(
      `--config ${path}: not valid ${extname(path) === '.json' ? 'JSON' : 'YAML'} (${(error as Error).message})`,
    )
  }

  if (raw === null || raw === undefined) return {}
  if (typeof raw !== 'object' || Array.isArray(raw))
    throw new UsageError(`--config ${path}: expected a mapping of flag names to values`)
  // A checkpoint's manifest.json: its model, training config and corpus, nothing else (step, tensors, … are its own).
  const m = raw as Record<string, any>
  if (m.format === 'mhc-checkpoint')
    raw = {model: m.model, train: m.train, ...(typeof m.data?.source === 'string' ? {data: m.data.source} : {})}

  // Flatten: top-level flag names, then the camelCase fields of `model:` and `train:` blocks.
  const entries: [string, unknown, string][] = []
  for (const [key, value] of Object.entries(raw as Record<string, unknown>)) {
    if ((key === 'model' || key === 'train') && typeof value === 'object' && value !== null && !Array.isArray(value)) {
      for (const [field, v] of Object.entries(value)) {
        if (field === 'arch' && key === 'model') entries.push(['arch', v, 'model.arch'])
        else if (FLAG_OF[field]) entries.push([FLAG_OF[field], v, `${key}.${field}`])
        else if (!DERIVED.has(field)) entries.push([field, v, `${key}.${field}`])
        else if (!isDefault(field, v))
          throw new UsageError(`--config ${path}: ${key}.${field} cannot be set (it is fixed for every run)`)
      }
    } else {
      entries.push([key, value, key])
    }
  }

  const out: Record<string, unknown> = {}
  for (const [flag, value, where] of entries) {
    const def = defs[flag]
    if (!def) {
      const near = didYouMean(flag, Object.keys(defs))
      throw new UsageError(`--config ${path}: unknown setting "${where}"${near ? ` (did you mean "${near}"?)` : ''}`)
    }

    if (flag in out) throw new UsageError(`--config ${path}: "${flag}" is set twice (as ${where} too)`)
    out[flag] = await parseValue(def, value, `--config ${path}: ${where}`)
  }

  return out
}

// The fixed fields: what every preset has. A manifest carries them; only a different value is an error.
function isDefault(field: string, v: unknown): boolean {
  const fixed: Record<string, unknown> = {
    vocabSize: 256,
    gateInit: 0.01,
    normEps: 1e-20,
    beta1: 0.9,
    beta2: 0.95,
    adamEps: 1e-8,
  }
  return !(field in fixed) || fixed[field] === v
}

async function parseValue(def: FlagDef, value: unknown, where: string): Promise<unknown> {
  if (def.type === 'boolean') {
    if (typeof value !== 'boolean')
      throw new UsageError(`${where}: expected true or false, got ${JSON.stringify(value)}`)
    return value
  }

  if (typeof value !== 'string' && typeof value !== 'number')
    throw new UsageError(`${where}: expected a number or a string, got ${JSON.stringify(value)}`)
  const text = String(value)
  if (def.options && !def.options.includes(text))
    throw new UsageError(`${where}: expected one of ${def.options.join(', ')}, got ${JSON.stringify(value)}`)
  try {
    return def.parse ? await def.parse(text, {}, def) : text
  } catch (error) {
    throw new UsageError(`${where}: ${(error as Error).message}`)
  }
}

const without = (o: object, key: string) => Object.fromEntries(Object.entries(o).filter(([k]) => k !== key))

/**
 * A resolved run as a config file that `--config` reads back: the architecture, the corpus, the run's other settings
 * that were given (out, backend, init-from, keep-last, keep-best), then the model and training blocks.
 */
export function runConfigDoc(c: {
  arch: string
  data?: string
  model: object
  settings?: Record<string, unknown>
  train: object
}): Record<string, unknown> {
  const given = Object.fromEntries(Object.entries(c.settings ?? {}).filter(([, v]) => v !== undefined))
  // arch is said once, at the top; scheduleSteps follows from steps
  return {
    arch: c.arch,
    ...(c.data ? {data: c.data} : {}),
    ...given,
    model: without(c.model, 'arch'),
    train: without(c.train, 'scheduleSteps'),
  }
}

export const runConfigYaml = (c: Parameters<typeof runConfigDoc>[0]): string => YAML.stringify(runConfigDoc(c))
