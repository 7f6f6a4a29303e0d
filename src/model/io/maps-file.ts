// Maps files: per-token connection maps (H_res, and optionally H_pre and H_post) of every layer, from any framework,
// so that `analyze-gain --maps` and `check --maps` analyse a model trained elsewhere (PyTorch, a distributed run)
// exactly as they analyse one of our checkpoints. A safetensors file:
//
//   h_res.{l}   [tokens, n, n]   required for every layer l = 0 … L−1 (attention and MLP counted separately)
//   h_pre.{l}   [tokens, n]      optional; when present, for every layer
//   h_post.{l}  [tokens, n]      optional; when present, for every layer
//   dtypes F32, F16, BF16 or F64 (widened to f32 on read); row-major, rows i = output stream, columns j = input stream
//   metadata (strings): format = "mhc-maps", version = "1", n, layers (L), and optionally
//     h_res_constraint = "sinkhorn" | "none" (whether the doubly-stochastic rule applies), arch, layer_kinds
//     ("attn,mlp,…"), source (free text: the framework, the checkpoint)
//
// Reading validates everything and fails with one line naming what is wrong (InputError, exit 2). H_res that is not
// doubly stochastic is analysed, not rejected: measuring that is the point.
import {type NamedTensor, readSafetensorsFile, SafetensorsError, writeSafetensorsFile} from './safetensors.js'

export const MAPS_FORMAT = 'mhc-maps'
export const MAPS_VERSION = '1'
const MAX_EXPANSION = 64
// The format's own metadata names (snake_case, as Python writes them).
const KEY = {constraint: 'h_res_constraint', layerKinds: 'layer_kinds'} as const
const MAX_LAYERS = 10_000

export class MapsFileError extends SafetensorsError {}

export interface MapsFile {
  path: string
  n: number
  /** Per layer: H_res [tokens·n·n], H_pre and H_post [tokens·n] when the file has them. */
  hRes: Float32Array[]
  hPre?: Float32Array[]
  hPost?: Float32Array[]
  tokens: number
  constraint?: 'none' | 'sinkhorn'
  arch?: string
  layerKinds?: string[]
  source?: string
}

/** Reads and validates a maps file. */
export function readMapsFile(path: string): MapsFile {
  const fail = (why: string): never => {
    throw new MapsFileError(`${path}: ${why}`)
  }

  const {tensors, metadata: meta} = readSafetensorsFile(path)
  if (meta.format !== MAPS_FORMAT)
    fail(`not a maps file (metadata format is ${JSON.stringify(meta.format ?? null)}, expected "${MAPS_FORMAT}")`)
  if (meta.version !== MAPS_VERSION) fail(`maps file version ${JSON.stringify(meta.version)} (this reads "1")`)
  const int = (key: string, max: number): number => {
    const v = /^\d+$/.test(meta[key] ?? '') ? Number(meta[key]) : Number.NaN
    if (!(v >= 1 && v <= max))
      fail(`metadata ${key} must be an integer in [1, ${max}], got ${JSON.stringify(meta[key])}`)
    return v
  }

  const n = int('n', MAX_EXPANSION)
  const L = int('layers', MAX_LAYERS)
  const constraint = meta[KEY.constraint]
  if (constraint !== undefined && constraint !== 'none' && constraint !== 'sinkhorn')
    fail(`metadata h_res_constraint must be "none" or "sinkhorn", got ${JSON.stringify(constraint)}`)
  const layerKinds = meta[KEY.layerKinds]?.split(',').map((s) => s.trim())
  if (layerKinds && layerKinds.length !== L) fail(`metadata layer_kinds names ${layerKinds.length} layers, not ${L}`)

  // Every name accounted for: unknown or out-of-range ones are listed together.
  const expected = new Set<string>()
  for (let l = 0; l < L; l++) for (const k of ['h_res', 'h_pre', 'h_post']) expected.add(`${k}.${l}`)
  const unexpected = Object.keys(tensors).filter((k) => !expected.has(k))
  if (unexpected.length > 0)
    fail(
      `unexpected tensors ${unexpected.slice(0, 5).join(', ')}${unexpected.length > 5 ? ` (+${unexpected.length - 5} more)` : ''} (layers are 0…${L - 1})`,
    )

  let tokens = -1
  const take = (name: string, tail: number[]): Float32Array => {
    const t: NamedTensor = tensors[name]
    if (!['F32', 'F16', 'BF16', 'F64'].includes(t.dtype)) fail(`${name}: dtype ${t.dtype} (F32, F16, BF16 or F64)`)
    const want = `[tokens, ${tail.join(', ')}]`
    if (t.shape.length !== tail.length + 1 || tail.some((d, i) => t.shape[i + 1] !== d))
      fail(`${name}: shape [${t.shape.join(', ')}], expected ${want} with n = ${n}`)
    if (tokens === -1) tokens = t.shape[0]
    else if (t.shape[0] !== tokens) fail(`${name}: ${t.shape[0]} tokens, the other maps have ${tokens}`)
    const data = t.data instanceof Float32Array ? t.data : Float32Array.from(t.data as Float64Array)
    const bad = data.findIndex((v) => !Number.isFinite(v))
    if (bad !== -1)
      fail(`${name}: a non-finite value (${data[bad]}) at token ${Math.floor(bad / (data.length / tokens))}`)
    return data
  }

  const layers = (kind: string, tail: number[], required: boolean): Float32Array[] | undefined => {
    const present = Array.from({length: L}, (_, l) => `${kind}.${l}` in tensors)
    if (!required && !present.some(Boolean)) return undefined
    const missing = present.flatMap((p, l) => (p ? [] : [`${kind}.${l}`]))
    if (missing.length > 0)
      fail(`missing ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ` (+${missing.length - 5} more)` : ''}`)
    return Array.from({length: L}, (_, l) => take(`${kind}.${l}`, tail))
  }

  const hRes = layers('h_res', [n, n], true)!
  if (tokens === 0) fail('the maps hold no tokens')
  return {
    path,
    n,
    hRes,
    hPre: layers('h_pre', [n], false),
    hPost: layers('h_post', [n], false),
    tokens,
    constraint: constraint as MapsFile['constraint'],
    arch: meta.arch,
    layerKinds,
    source: meta.source,
  }
}

/** Writes maps as a maps file (f32), atomically. */
export function writeMapsFile(
  path: string,
  maps: {hRes: Float32Array[]; hPre?: Float32Array[]; hPost?: Float32Array[]; tokens: number},
  meta: {n: number; constraint?: 'none' | 'sinkhorn'; arch?: string; layerKinds?: string[]; source?: string},
): void {
  const {n} = meta
  const tensors: Record<string, NamedTensor> = {}
  for (const [l, h] of maps.hRes.entries()) {
    tensors[`h_res.${l}`] = {dtype: 'F32', shape: [maps.tokens, n, n], data: h}
    if (maps.hPre) tensors[`h_pre.${l}`] = {dtype: 'F32', shape: [maps.tokens, n], data: maps.hPre[l]}
    if (maps.hPost) tensors[`h_post.${l}`] = {dtype: 'F32', shape: [maps.tokens, n], data: maps.hPost[l]}
  }

  const metadata: Record<string, string> = {
    format: MAPS_FORMAT,
    version: MAPS_VERSION,
    n: String(n),
    layers: String(maps.hRes.length),
  }
  if (meta.constraint) metadata[KEY.constraint] = meta.constraint
  if (meta.arch) metadata.arch = meta.arch
  if (meta.layerKinds) metadata[KEY.layerKinds] = meta.layerKinds.join(',')
  if (meta.source) metadata.source = meta.source
  writeSafetensorsFile(path, tensors, metadata)
}
