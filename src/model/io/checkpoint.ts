// One checkpoint directory: manifest.json, model.safetensors (weights) and optimizer.safetensors (AdamW m, v).
// Safetensors so that PyTorch users can read the weights (matrices are stored [in, out]: y = x·W). Host data only:
// any engine saves what it reads back and loads what this returns. Where checkpoints sit in a run directory (names,
// `latest`, resume) is src/model/train/run-dir.ts.
import {createHash} from 'node:crypto'
import {existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync} from 'node:fs'
import {join} from 'node:path'

import type {DataInfo} from './data.js'

import {ModelConfig, TrainConfig, trainConfigProblem} from '../config.js'
import {InputError} from '../errors.js'
import {HostTensors, modelProblem, paramSpecs} from '../params.js'
import {fsyncDir, tempName, writeFileSynced} from './atomic.js'
import {toolVersion} from './provenance.js'
import {decodeSafetensors, encodeSafetensors, NamedTensor} from './safetensors.js'

export const CHECKPOINT_FORMAT = 'mhc-checkpoint'
export const CHECKPOINT_VERSION = 1
export const MODEL_FILE = 'model.safetensors'
export const OPTIM_FILE = 'optimizer.safetensors'
export const MANIFEST = 'manifest.json'

export interface Manifest {
  format: typeof CHECKPOINT_FORMAT
  version: number
  created: string
  arch: ModelConfig['arch']
  model: ModelConfig
  train: TrainConfig
  step: number
  data: DataInfo
  rng: {data: number}
  metrics: {trainLoss?: number; valLoss?: number}
  backend: string
  /** The mhc that wrote it: package version and, from a git checkout, the commit (`+dirty` with local changes). */
  mhc?: {version: string; commit?: string}
  /** A run started with --init-from: the weights it started from. */
  initFrom?: {checkpoint: string; step: number}
  /** The run's checkpoint retention (--keep-last, --keep-best): a resume goes on with it unless its flags change it. */
  keep?: Keep
  tensors: {file: string; name: string; shape: number[]; dtype: 'F32'}[]
  files: Record<string, {sha256: string; bytes: number}>
}

export interface Keep {
  last?: number // the newest N checkpoints (0 or absent: all)
  best?: boolean // and the one with the lowest validation loss, named in <run>/best
}

export class CheckpointError extends InputError {}

/** What a checkpoint holds besides its config: the step, weights, AdamW moments and the data-order RNG state. */
export interface TrainingState {
  step: number
  params: HostTensors
  m: HostTensors
  v: HostTensors
  dataRng: number
}

export interface SaveInfo {
  data: DataInfo
  metrics: Manifest['metrics']
  backend: string
  initFrom?: Manifest['initFrom']
  keep?: Keep
}

/** A verified checkpoint in host memory (`m`, `v` only when asked for). */
export interface CheckpointData {
  dir: string
  manifest: Manifest
  params: HostTensors
  m?: HostTensors
  v?: HostTensors
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')

function named(model: ModelConfig, group: HostTensors, prefix: string): Record<string, NamedTensor> {
  return Object.fromEntries(
    paramSpecs(model).map((s) => [prefix + s.name, {dtype: 'F32' as const, shape: s.shape, data: group[s.name]}]),
  )
}

/**
 * Writes `state` as the checkpoint directory `final`, atomically: built under a temp name, fsynced, renamed into
 * place. The same step saved again with the same tensors (a run recovering a checkpoint newer than `latest` after a
 * kill) keeps the one on disk, so there is never a moment without it.
 */
export function writeCheckpoint(
  final: string,
  state: TrainingState,
  model: ModelConfig,
  train: TrainConfig,
  info: SaveInfo,
): void {
  const groups = [
    [MODEL_FILE, named(model, state.params, '')],
    [OPTIM_FILE, {...named(model, state.m, 'm.'), ...named(model, state.v, 'v.')}],
  ] as const
  const encoded = groups.map(([file, group]) => ({
    file,
    group,
    bytes: encodeSafetensors(group, {format: 'pt', producer: 'mhc', layout: 'matrices are [in, out]'}),
  }))
  if (existsSync(join(final, MANIFEST))) {
    try {
      const old = JSON.parse(readFileSync(join(final, MANIFEST), 'utf8')) as Manifest
      if (encoded.every((e) => old.files?.[e.file]?.sha256 === sha256(e.bytes))) return
    } catch {
      /* unreadable: replace it below */
    }
  }

  const tmp = tempName(final)
  mkdirSync(tmp)
  try {
    const files: Manifest['files'] = {}
    const tensors: Manifest['tensors'] = []
    for (const {file, group, bytes} of encoded) {
      writeFileSynced(join(tmp, file), bytes)
      files[file] = {sha256: sha256(bytes), bytes: bytes.length}
      for (const [n, t] of Object.entries(group)) tensors.push({file, name: n, shape: t.shape, dtype: 'F32'})
    }

    const manifest: Manifest = {
      format: CHECKPOINT_FORMAT,
      version: CHECKPOINT_VERSION,
      created: new Date().toISOString(),
      arch: model.arch,
      model,
      train,
      step: state.step,
      data: info.data,
      rng: {data: state.dataRng},
      metrics: info.metrics,
      backend: info.backend,
      mhc: toolVersion(),
      ...(info.initFrom ? {initFrom: info.initFrom} : {}),
      ...(info.keep?.last || info.keep?.best ? {keep: info.keep} : {}),
      tensors,
      files,
    }
    writeFileSynced(join(tmp, MANIFEST), JSON.stringify(manifest, null, 2) + '\n')
    fsyncDir(tmp)
    // Different tensors at the same step (only a deliberate overwrite): swap directories. A kill between the two
    // renames leaves this step missing but every earlier checkpoint intact.
    if (existsSync(final)) {
      const old = tempName(final)
      renameSync(final, old)
      renameSync(tmp, final)
      rmSync(old, {recursive: true, force: true})
    } else {
      renameSync(tmp, final)
    }
  } catch (error) {
    rmSync(tmp, {recursive: true, force: true})
    throw error
  }
}

/** A small file read whole; a directory, an unreadable or an oversized file is one CheckpointError line. */
export function readSmallFile(p: string, limit: number): Buffer {
  try {
    const st = statSync(p)
    if (!st.isFile()) throw new CheckpointError(`${p}: not a regular file`)
    if (st.size > limit) throw new CheckpointError(`${p}: ${st.size} bytes, more than the ${limit} expected`)
    return readFileSync(p)
  } catch (error) {
    if (error instanceof CheckpointError) throw error
    throw new CheckpointError(`${p}: cannot be read (${(error as Error).message})`)
  }
}

const isInt = (v: unknown, min: number, max = Number.MAX_SAFE_INTEGER) =>
  Number.isSafeInteger(v) && (v as number) >= min && (v as number) <= max

// The manifest fields besides the configs, checked the same way wherever a manifest's record is read (checkpoints,
// and the provenance an export carries: io/pytorch.ts).
export const isStep = (v: unknown): v is number => isInt(v, 0)
export const isRngState = (v: unknown): v is number => isInt(v, 0, 0xff_ff_ff_ff)
export const isDataInfo = (d: any): d is DataInfo =>
  typeof d?.source === 'string' && /^[0-9a-f]{64}$/.test(String(d.sha256)) && isInt(d.bytes, 0)
const isKeep = (k: any): k is Keep =>
  typeof k === 'object' &&
  k !== null &&
  !Array.isArray(k) &&
  Object.keys(k).every((f) => f === 'last' || f === 'best') &&
  (k.last === undefined || isInt(k.last, 0)) &&
  (k.best === undefined || typeof k.best === 'boolean')

/** Checks a model config read from disk, so a hand-edited manifest fails here and not deep inside an engine. */
export function validateModelConfig(m: any, where: string): ModelConfig {
  const problem = modelProblem(m)
  if (problem) throw new CheckpointError(`${where}: invalid model config: ${problem}`)
  return m as ModelConfig
}

/** Checks a training config read from disk (eval and resume use its batch, windows and optimiser settings). */
export function validateTrainConfig(t: any, where: string): TrainConfig {
  const problem = trainConfigProblem(t)
  if (problem) throw new CheckpointError(`${where}: invalid training config: ${problem}`)
  return t as TrainConfig
}

/**
 * Reads and verifies the checkpoint directory `dir`: manifest format and version, file checksums, every expected
 * tensor present with the shape the config implies, nothing extra, all values finite (unless `allowNonFinite`: `mhc
 * check` reads diverged checkpoints on purpose). Any failure is one CheckpointError line.
 */
export function readCheckpointDir(
  dir: string,
  opts: {optimizer?: boolean; allowNonFinite?: boolean} = {},
): CheckpointData {
  const where = dir
  let manifest: Manifest
  const text = readSmallFile(join(dir, MANIFEST), 16 << 20).toString('utf8')
  try {
    manifest = JSON.parse(text)
  } catch (error) {
    throw new CheckpointError(`${where}: ${MANIFEST} is not valid JSON (${(error as Error).message})`)
  }

  if (manifest?.format !== CHECKPOINT_FORMAT)
    throw new CheckpointError(`${where}: not an mhc checkpoint (format ${JSON.stringify(manifest?.format)})`)
  if (manifest.version !== CHECKPOINT_VERSION)
    throw new CheckpointError(
      `${where}: checkpoint format version ${manifest.version} is not supported (this mhc reads ${CHECKPOINT_VERSION})`,
    )
  const model = validateModelConfig(manifest.model, where)
  if (!isStep(manifest.step)) throw new CheckpointError(`${where}: invalid step ${manifest.step}`)
  const train = validateTrainConfig(manifest.train, where)
  if (!isDataInfo(manifest.data)) throw new CheckpointError(`${where}: invalid corpus record (source, sha256, bytes)`)
  if (!isRngState(manifest.rng?.data)) throw new CheckpointError(`${where}: invalid data RNG state`)
  if (manifest.keep !== undefined && !isKeep(manifest.keep))
    throw new CheckpointError(`${where}: invalid checkpoint retention record "keep" (last: integer ≥ 0, best: boolean)`)

  const specs = paramSpecs(model)
  const read = (file: string, prefixes: string[]): HostTensors[] => {
    const meta = manifest.files?.[file]
    if (!meta) throw new CheckpointError(`${where}: manifest lists no ${file}`)
    const p = join(dir, file)
    if (!existsSync(p)) throw new CheckpointError(`${where}: ${file} is missing`)
    if (!isInt(meta.bytes, 0) || typeof meta.sha256 !== 'string')
      throw new CheckpointError(`${where}: manifest has no valid size and sha256 for ${file}`)
    // The size is compared before reading, so an oversized file is never read.
    const {size} = statSync(p)
    if (size !== meta.bytes)
      throw new CheckpointError(`${where}: ${file} is corrupt (${size} bytes, the manifest says ${meta.bytes})`)
    const bytes = readSmallFile(p, meta.bytes)
    if (bytes.length !== meta.bytes || sha256(bytes) !== meta.sha256)
      throw new CheckpointError(`${where}: ${file} is corrupt (checksum mismatch)`)
    let tensors: Record<string, NamedTensor>
    try {
      tensors = decodeSafetensors(bytes).tensors
    } catch (error) {
      throw new CheckpointError(`${where}: ${file}: ${(error as Error).message}`)
    }

    const expected = new Set(prefixes.flatMap((pre) => specs.map((s) => pre + s.name)))
    const groups = prefixes.map((pre) =>
      Object.fromEntries(
        specs.map((s) => {
          const name = pre + s.name
          const t = tensors[name]
          if (!t) throw new CheckpointError(`${where}: ${file} lacks tensor ${name}`)
          if (t.dtype !== 'F32')
            throw new CheckpointError(`${where}: ${file}: ${name} has dtype ${t.dtype}, expected F32`)
          if (t.shape.join(',') !== s.shape.join(','))
            throw new CheckpointError(
              `${where}: ${file}: ${name} has shape [${t.shape}], the config implies [${s.shape}]`,
            )
          const values = t.data as Float32Array
          if (!opts.allowNonFinite)
            for (let i = 0; i < values.length; i++)
              if (!Number.isFinite(values[i]))
                throw new CheckpointError(`${where}: ${file}: ${name} contains non-finite values`)
          return [s.name, values]
        }),
      ),
    )
    const extra = Object.keys(tensors).filter((k) => !expected.has(k))
    if (extra.length > 0)
      throw new CheckpointError(`${where}: ${file} has unexpected tensors (${extra.slice(0, 3).join(', ')})`)
    return groups
  }

  const [params] = read(MODEL_FILE, [''])
  const [m, v] = opts.optimizer ? read(OPTIM_FILE, ['m.', 'v.']) : [undefined, undefined]
  return {dir, manifest: {...manifest, model, train}, params, m, v}
}

/** The training state a checkpoint holds; it must have been read with its optimizer state. */
export function stateOf(ck: CheckpointData): TrainingState {
  if (!ck.m || !ck.v) throw new CheckpointError(`${ck.dir}: read without optimizer state`)
  return {step: ck.manifest.step, params: ck.params, m: ck.m, v: ck.v, dataRng: ck.manifest.rng.data >>> 0}
}
