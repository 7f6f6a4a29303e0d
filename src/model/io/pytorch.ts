// Our model in PyTorch's layouts, both ways, so that a model trained here can be continued in PyTorch and one trained
// there can be analysed here. An export directory holds:
//
//   model.safetensors  every parameter under our name, F32; the `linear` matrices of paramSpecs (applied as y = x·W,
//                      stored [in, out] in our checkpoints) transposed to nn.Linear's [out, in]; the rest as they are
//   config.json        {format: "mhc-pytorch", version: 1, model: our ModelConfig, transposed: [names],
//                       checkpoint: {step, train, data, rng, metrics, …}}: what the weights are and where they came from
//
// Import reads the same (model.safetensors, or shards listed in model.safetensors.index.json) from F32, F16, BF16 or
// F64 tensors, optionally through a key map so that another implementation's names can be read:
//
//   {"<our name>": "<their name>" | {"name": "<their name>", "transpose": true | false}, …,
//    "$ignore": ["<regular expression of their names to skip>", …]}
//
// `transpose` says whether their tensor is nn.Linear's [out, in] transpose of ours; left out, it is what export writes.
// Every mismatch (missing, unexpected, shape, dtype, non-finite values, key-map entries) is collected and reported by
// name in one error, and nothing is written.
import {existsSync, lstatSync, mkdirSync, readdirSync, renameSync, rmdirSync, rmSync, statSync} from 'node:fs'
import {basename, dirname, join, resolve} from 'node:path'

import type {DataInfo} from './data.js'

import {configFromPreset, DEFAULT_PRESET, ModelConfig, modelConfig, trainConfigProblem} from '../config.js'
import {InputError} from '../errors.js'
import {HostTensors, modelProblem, ParamSpec, paramSpecs} from '../params.js'
import {fsyncDir, tempName, writeFileSynced} from './atomic.js'
import {CheckpointData, isDataInfo, isRngState, isStep, Manifest, MANIFEST, readSmallFile} from './checkpoint.js'
import {encodeSafetensors, NamedTensor, readSafetensorsFile} from './safetensors.js'

export const EXPORT_FORMAT = 'mhc-pytorch'
export const EXPORT_VERSION = 1
export const EXPORT_WEIGHTS = 'model.safetensors'
export const EXPORT_INDEX = 'model.safetensors.index.json'
export const EXPORT_CONFIG = 'config.json'
const IMPORT_DTYPES = new Set(['BF16', 'F16', 'F32', 'F64'])
const IGNORE_KEY = '$ignore'

export class TorchFormatError extends InputError {}

/** What config.json records besides the model: enough to rebuild the checkpoint's manifest on import. */
export interface ExportProvenance {
  source: string
  step: number
  train: Manifest['train']
  data: DataInfo
  rng: Manifest['rng']
  metrics: Manifest['metrics']
}

export interface ExportConfig {
  format: typeof EXPORT_FORMAT
  version: number
  model: ModelConfig
  layout: string
  transposed: string[]
  checkpoint?: ExportProvenance
}

/** [r, c] row-major → [c, r]. */
export function transpose2d(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length)
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c]
  return out
}

/** A parameter's shape in PyTorch's layout. */
export const torchShape = (s: ParamSpec, transposed = Boolean(s.linear)): number[] =>
  transposed ? [...s.shape].reverse() : s.shape

/** The export's tensors: our names, PyTorch layouts. */
export function torchTensors(model: ModelConfig, params: HostTensors): Record<string, NamedTensor> {
  return Object.fromEntries(
    paramSpecs(model).map((s) => [
      s.name,
      {
        dtype: 'F32' as const,
        shape: torchShape(s),
        data: s.linear ? transpose2d(params[s.name], s.shape[0], s.shape[1]) : params[s.name],
      },
    ]),
  )
}

/** A directory that may be created: absent, or empty (it is replaced). Anything else is refused, never overwritten. */
export function assertFreshDir(dir: string, flag: string): void {
  if (dir.trim() === '') throw new TorchFormatError(`${flag}: an empty path`)
  // The directory is built under a temp name made from this one (+ 24 characters) and renamed: both must be legal.
  if (Buffer.byteLength(basename(resolve(dir))) > 200)
    throw new TorchFormatError(`${flag} ${dir.slice(0, 60)}…: the name is longer than 200 bytes`)
  if (lstatSync(dir, {throwIfNoEntry: false})?.isSymbolicLink())
    throw new TorchFormatError(`${flag} ${dir}: a symbolic link; give the directory it points to`)
  if (!existsSync(dir)) return
  if (!statSync(dir).isDirectory()) throw new TorchFormatError(`${flag} ${dir}: exists and is not a directory`)
  if (readdirSync(dir).length > 0)
    throw new TorchFormatError(`${flag} ${dir}: exists and is not empty (nothing overwritten)`)
}

/** Writes `files` as the new directory `dir`: built under a temp name, fsynced, renamed into place. */
export function writeDirAtomic(dir: string, files: Record<string, Uint8Array | string>): void {
  assertFreshDir(dir, 'output')
  mkdirSync(dirname(resolve(dir)), {recursive: true})
  const tmp = tempName(dir)
  mkdirSync(tmp)
  try {
    for (const [name, data] of Object.entries(files)) writeFileSynced(join(tmp, name), data)
    fsyncDir(tmp)
    if (existsSync(dir)) rmdirSync(dir) // empty (checked above); rmdir refuses if something appeared since
    renameSync(tmp, dir)
  } catch (error) {
    rmSync(tmp, {recursive: true, force: true})
    throw error
  }
}

/** Writes a verified checkpoint as an export directory `dir`. Returns the config written. */
export function exportCheckpoint(ck: CheckpointData, dir: string): ExportConfig {
  const {model} = ck.manifest
  const specs = paramSpecs(model)
  const config: ExportConfig = {
    format: EXPORT_FORMAT,
    version: EXPORT_VERSION,
    model,
    layout: 'nn.Linear layout: the tensors named in `transposed` are [out, in] (y = x @ W.T); all others as in mhc',
    transposed: specs.filter((s) => s.linear).map((s) => s.name),
    checkpoint: {
      source: ck.dir,
      step: ck.manifest.step,
      train: ck.manifest.train,
      data: ck.manifest.data,
      rng: ck.manifest.rng,
      metrics: ck.manifest.metrics,
    },
  }
  const weights = encodeSafetensors(torchTensors(model, ck.params), {
    format: 'pt',
    producer: 'mhc export',
    layout: 'nn.Linear [out, in]',
  })
  writeDirAtomic(dir, {[EXPORT_WEIGHTS]: weights, [EXPORT_CONFIG]: JSON.stringify(config, null, 2) + '\n'})
  return config
}

// ---------------------------------------------------------------------------------------------------------------
// Import

export interface KeyMapEntry {
  name: string
  transpose?: boolean
}

export interface KeyMap {
  entries: Map<string, KeyMapEntry> // a Map: names such as "__proto__" are names like any other
  ignore: RegExp[]
}

const isEntry = (v: unknown): v is KeyMapEntry => {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false
  const e = v as Record<string, unknown>
  return (
    typeof e.name === 'string' &&
    e.name !== '' &&
    (e.transpose === undefined || typeof e.transpose === 'boolean') &&
    Object.keys(e).every((k) => k === 'name' || k === 'transpose')
  )
}

/** Parses a key-map file's JSON (see the file comment). */
export function parseKeyMap(text: string, where: string): KeyMap {
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (error) {
    throw new TorchFormatError(`${where}: not valid JSON (${(error as Error).message})`)
  }

  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new TorchFormatError(`${where}: expected an object {"<our name>": "<their name>" | {"name", "transpose"}}`)
  const entries = new Map<string, KeyMapEntry>()
  let ignore: RegExp[] = []
  for (const [ours, v] of Object.entries(raw)) {
    if (ours === IGNORE_KEY) {
      if (!Array.isArray(v) || v.some((p) => typeof p !== 'string'))
        throw new TorchFormatError(`${where}: "${IGNORE_KEY}" must be a list of regular expressions (strings)`)
      ignore = v.map((p: string) => {
        try {
          return new RegExp(`^(?:${p})$`)
        } catch (error) {
          throw new TorchFormatError(`${where}: "${IGNORE_KEY}": ${(error as Error).message}`)
        }
      })
    } else if (typeof v === 'string' && v !== '') entries.set(ours, {name: v})
    else if (isEntry(v)) entries.set(ours, {name: v.name, transpose: v.transpose})
    else
      throw new TorchFormatError(
        `${where}: entry ${JSON.stringify(short(ours))} must be a tensor name or {"name": string, "transpose"?: boolean}`,
      )
  }

  return {entries, ignore}
}

const MAX_LISTED = 24
// Names come from files: a fuzzed one can be megabytes, so each is cut short.
const short = (name: string) => (name.length > 120 ? `${name.slice(0, 120)}…` : name)
const F32_MAX = 3.402_823_466_385_288_6e38

/**
 * Our parameters from `tensors` (their names and layouts through `keyMap`), widened to f32 and back in our [in, out]
 * layout. Every mismatch is collected; any at all is one TorchFormatError naming each. `where` names the weights and
 * `configName` the file the model came from, for the message.
 */
export function paramsFromTorch(
  tensors: Record<string, NamedTensor>,
  model: ModelConfig,
  keyMap?: KeyMap,
  where = EXPORT_WEIGHTS,
  configName = EXPORT_CONFIG,
): HostTensors {
  const entries = keyMap?.entries ?? new Map<string, KeyMapEntry>()
  const specs = paramSpecs(model)
  const problems: string[] = []
  const ourNames = new Set(specs.map((s) => s.name))
  for (const ours of entries.keys())
    if (!ourNames.has(ours)) problems.push(`key map names ${short(ours)}, which this ${model.arch} model does not have`)
  const claimedBy = new Map<string, string>()
  const params: HostTensors = {}
  for (const s of specs) {
    const entry = entries.get(s.name)
    const theirs = entry?.name ?? s.name
    const label = theirs === s.name ? s.name : `${short(theirs)} (our ${s.name})`
    const other = claimedBy.get(theirs)
    if (other !== undefined) {
      problems.push(`${label}: also mapped to ${other}`)
      continue
    }

    claimedBy.set(theirs, s.name)
    const t = Object.hasOwn(tensors, theirs) ? tensors[theirs] : undefined
    if (!t) {
      problems.push(`missing ${label}`)
      continue
    }

    const transposed = entry?.transpose ?? Boolean(s.linear)
    if (transposed && s.shape.length !== 2) {
      problems.push(`${label}: transpose asked for a ${s.shape.length}-d parameter`)
      continue
    }

    const want = torchShape(s, transposed)
    const scalarAsOne = want.length === 0 && t.shape.length === 1 && t.shape[0] === 1 // torch.Size([1]) for a scalar
    if (t.shape.join(',') !== want.join(',') && !scalarAsOne) {
      problems.push(`${label}: shape [${t.shape.join(', ')}], expected [${want.join(', ')}]`)
      continue
    }

    if (!IMPORT_DTYPES.has(t.dtype)) {
      problems.push(`${label}: dtype ${t.dtype}, expected F32, F16, BF16 or F64`)
      continue
    }

    const wide = t.data as Float32Array | Float64Array
    const bad = wide.findIndex((v) => !Number.isFinite(v) || Math.abs(v) > F32_MAX)
    if (bad !== -1) {
      const v = wide[bad]
      problems.push(
        `${label}: ${Number.isFinite(v) ? `${v} overflows float32` : `non-finite value ${v}`} at flat index ${bad}`,
      )
      continue
    }

    const data = wide instanceof Float32Array ? wide : Float32Array.from(wide)
    params[s.name] = transposed ? transpose2d(data, want[0], want[1]) : data // decoded arrays are fresh copies
  }

  const unexpected = Object.keys(tensors).filter((k) => !claimedBy.has(k) && !keyMap?.ignore.some((re) => re.test(k)))
  if (unexpected.length > 0)
    problems.push(
      `unexpected ${unexpected.slice(0, MAX_LISTED).map(short).join(', ')}` +
        (unexpected.length > MAX_LISTED ? ` (+${unexpected.length - MAX_LISTED} more)` : ''),
    )
  if (problems.length > 0) {
    const listed = problems.slice(0, MAX_LISTED).join('; ')
    const more = problems.length > MAX_LISTED ? `; … (+${problems.length - MAX_LISTED} more)` : ''
    const count = `${problems.length} problem${problems.length === 1 ? '' : 's'}`
    // Longer than other one-line errors: every name is the point of this one.
    throw new TorchFormatError(
      `${where} does not match the ${model.arch} model of ${configName}: ${count}: ${listed}${more}`,
      8000,
    )
  }

  return params
}

/** Every tensor of an export directory: model.safetensors, or the shards its index lists (each where it says). */
export function readExportTensors(dir: string): Record<string, NamedTensor> {
  const read = (file: string) => {
    if (!existsSync(join(dir, file))) throw new TorchFormatError(`${dir}: ${file} is missing`)
    return readSafetensorsFile(join(dir, file)).tensors // its errors already name the file, one line
  }

  const index = join(dir, EXPORT_INDEX)
  if (!existsSync(index)) {
    if (!existsSync(join(dir, EXPORT_WEIGHTS))) {
      const checkpoint = existsSync(join(dir, MANIFEST))
      throw new TorchFormatError(
        checkpoint
          ? `${dir}: an mhc checkpoint, not an export: use it as it is, or write one with mhc export`
          : `${dir}: neither ${EXPORT_WEIGHTS} nor ${EXPORT_INDEX} is there`,
      )
    }

    return read(EXPORT_WEIGHTS)
  }

  const text = readSmallFile(index, 64 << 20).toString('utf8') // a directory or a device: one error naming it
  let weightMap: unknown
  try {
    weightMap = JSON.parse(text).weight_map
  } catch (error) {
    throw new TorchFormatError(`${index}: not valid JSON (${(error as Error).message})`)
  }

  if (
    typeof weightMap !== 'object' ||
    weightMap === null ||
    Array.isArray(weightMap) ||
    Object.values(weightMap).some((f) => typeof f !== 'string')
  )
    throw new TorchFormatError(`${index}: no "weight_map" object of tensor name → file name`)
  const where = new Map(Object.entries(weightMap as Record<string, string>))
  const out: Record<string, NamedTensor> = {}
  for (const file of new Set(where.values())) {
    if (file.includes('/') || file.includes('\\') || file.startsWith('.'))
      throw new TorchFormatError(`${index}: shard ${JSON.stringify(short(file))} is not a file name in ${dir}`)
    for (const [name, t] of Object.entries(read(file))) {
      if (Object.hasOwn(out, name))
        throw new TorchFormatError(`${dir}: tensor ${short(name)} is in more than one shard`)
      if (where.get(name) !== file)
        throw new TorchFormatError(
          `${join(dir, file)} holds ${short(name)}, which ${EXPORT_INDEX} ${where.has(name) ? `puts in ${where.get(name)}` : 'does not list'}`,
        )
      out[name] = t
    }
  }

  const absent = [...where.keys()].filter((name) => !Object.hasOwn(out, name))
  if (absent.length > 0)
    throw new TorchFormatError(`${index} lists ${absent.slice(0, 5).map(short).join(', ')}, which no shard holds`)
  return out
}

export interface ImportedModel {
  model: ModelConfig
  params: HostTensors
  provenance: Partial<ExportProvenance>
  /** What was filled in because config.json did not say it. */
  defaulted: string[]
}

const MODEL_KEYS = new Set(Object.keys(modelConfig('mhc')))

/**
 * Reads config.json (or `configPath`): the model config, every field known and valid, and the provenance block,
 * whose fields are each optional but never wrong.
 */
export function readExportConfig(
  dir: string,
  configPath = join(dir, EXPORT_CONFIG),
): {model: ModelConfig; provenance: Partial<ExportProvenance>} {
  if (!existsSync(configPath))
    throw new TorchFormatError(`${configPath} is missing (it names the model: see mhc export)`)
  const fail = (why: string): never => {
    throw new TorchFormatError(`${configPath}: ${why}`)
  }

  let raw: any
  try {
    raw = JSON.parse(readSmallFile(configPath, 16 << 20).toString('utf8'))
  } catch (error) {
    if (error instanceof InputError) throw error
    fail(`not valid JSON (${(error as Error).message})`)
  }

  if (raw?.format !== undefined && raw.format !== EXPORT_FORMAT)
    fail(`format ${JSON.stringify(raw.format)}, expected "${EXPORT_FORMAT}"`)
  if (raw?.version !== undefined && raw.version !== EXPORT_VERSION)
    fail(`version ${JSON.stringify(raw.version)} (this mhc reads ${EXPORT_VERSION})`)
  if (typeof raw?.model !== 'object' || raw.model === null || Array.isArray(raw.model))
    fail('no "model" object (our ModelConfig: arch, vocabSize, seqLen, layers, …)')
  const unknown = Object.keys(raw.model).filter((k) => !MODEL_KEYS.has(k))
  if (unknown.length > 0) fail(`model has unknown fields ${unknown.slice(0, 5).map(short).join(', ')}`)
  const problem = modelProblem(raw.model)
  if (problem) fail(`invalid model config: ${problem}`)
  // Our exports list what they transposed; a list that says otherwise describes another layout (use --key-map).
  if (raw.transposed !== undefined) {
    const listed = new Set(Array.isArray(raw.transposed) ? raw.transposed : [])
    const linear = paramSpecs(raw.model)
      .filter((s) => s.linear)
      .map((s) => s.name)
    if (!Array.isArray(raw.transposed) || listed.size !== linear.length || linear.some((n) => !listed.has(n)))
      fail(
        '"transposed" is not the list mhc export writes (every nn.Linear-shaped matrix); for another layout, use --key-map',
      )
  }

  const c = raw.checkpoint ?? {}
  if (typeof c !== 'object' || Array.isArray(c)) fail('"checkpoint" must be an object')
  const provenance: Partial<ExportProvenance> = {}
  if (c.source !== undefined) provenance.source = String(c.source)
  if (c.step !== undefined) {
    if (!isStep(c.step)) fail(`checkpoint.step ${JSON.stringify(c.step)} is not a step`)
    provenance.step = c.step
  }

  if (c.train !== undefined) {
    const why = trainConfigProblem(c.train)
    if (why) fail(`invalid checkpoint.train: ${why}`)
    provenance.train = c.train
  }

  if (c.data !== undefined) {
    if (!isDataInfo(c.data)) fail('checkpoint.data needs source, sha256 (64 hex digits) and bytes')
    provenance.data = {source: c.data.source, sha256: c.data.sha256, bytes: c.data.bytes}
  }

  if (c.rng !== undefined) {
    if (!isRngState(c.rng?.data)) fail('checkpoint.rng.data must be a uint32')
    provenance.rng = {data: c.rng.data}
  }

  if (typeof c.metrics === 'object' && c.metrics !== null) {
    const m: Manifest['metrics'] = {}
    for (const k of ['trainLoss', 'valLoss'] as const) if (typeof c.metrics[k] === 'number') m[k] = c.metrics[k]
    provenance.metrics = m
  }

  return {model: raw.model as ModelConfig, provenance}
}

/** Reads an export directory (ours, or another implementation's through `keyMap`) into our layout. */
export function importExport(dir: string, opts: {configPath?: string; keyMap?: KeyMap} = {}): ImportedModel {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new TorchFormatError(`${dir}: not a directory`)
  const configPath = opts.configPath ?? join(dir, EXPORT_CONFIG)
  const {model, provenance} = readExportConfig(dir, configPath)
  const params = paramsFromTorch(readExportTensors(dir), model, opts.keyMap, join(dir, EXPORT_WEIGHTS), configPath)
  const defaulted = (['step', 'train', 'data', 'rng'] as const).filter((k) => provenance[k] === undefined)
  return {model, params, provenance, defaulted}
}

/** The training config an imported model's checkpoint records when config.json has none: the default preset's. */
export const defaultImportTrain = (model: ModelConfig, step: number): Manifest['train'] => {
  const {train} = configFromPreset(DEFAULT_PRESET, model.arch)
  return {...train, steps: step, scheduleSteps: Math.max(step, 1)}
}
