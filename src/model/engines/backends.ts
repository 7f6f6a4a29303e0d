// Where an engine runs: the backend names, where the default choice comes from (--backend, MHC_BACKEND, the config
// file), how the choice is reported, and how much memory a backend has. No TensorFlow.js here, so that commands can
// declare flags and read the user's default without loading it.
import {existsSync, readFileSync, statSync} from 'node:fs'
import {freemem} from 'node:os'

import {InputError} from '../errors.js'

/**
 * Where an engine runs. `webgpu` is the WebGPU engine (our own WGSL kernels through Dawn); the others are backends
 * of the tfjs engine: `tensorflow` (tfjs-node-gpu), `tfjs-webgpu` (TensorFlow.js's own WebGPU backend, slow: for
 * comparison), `wasm`, `cpu`.
 */
export const BACKENDS = ['webgpu', 'tensorflow', 'tfjs-webgpu', 'wasm', 'cpu'] as const
export type BackendName = (typeof BACKENDS)[number]
/** What `auto` tries, in order: a real GPU first, then TensorFlow's native build, then the CPU. */
export const AUTO_ORDER: readonly BackendName[] = ['webgpu', 'tensorflow', 'wasm', 'cpu']
export type BackendChoice = 'auto' | BackendName
export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', ...BACKENDS]

/** Where the backend choice came from, highest precedence first. */
export type ChoiceSource = 'flag' | 'env' | 'config' | 'default'
export interface ResolvedChoice {
  choice: BackendChoice
  source: ChoiceSource
  where?: string
}

export const BACKEND_ENV = 'MHC_BACKEND'
export const CONFIG_ENV = 'MHC_CONFIG'
/** Keys a user config file may hold (everything else is a typo, and a typo is bad input). */
const CONFIG_KEYS = ['backend']

function parseChoice(v: unknown, where: string): BackendChoice {
  if (typeof v !== 'string' || !(BACKEND_CHOICES as readonly string[]).includes(v)) {
    throw new InputError(`${where}: backend ${JSON.stringify(v)} is not one of ${BACKEND_CHOICES.join(', ')}`)
  }

  return v as BackendChoice
}

/**
 * The user's defaults file: $MHC_CONFIG, else <configDir>/config.json (oclif's configDir, ~/.config/mhc). A JSON
 * object such as {"backend": "wasm"}. A missing default file is no error; a named file that is missing, or any file
 * that does not parse, is.
 */
export function readUserConfig(
  configDir: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): {path?: string; backend?: BackendChoice} {
  const named = env[CONFIG_ENV]
  const path = named || (configDir ? `${configDir}/config.json` : undefined)
  if (!path) return {}
  if (!existsSync(path)) {
    if (named) throw new InputError(`${CONFIG_ENV}=${named}: no such file`)
    return {}
  }

  if (!statSync(path).isFile()) throw new InputError(`${path}: the config file is not a regular file`)
  let cfg: unknown
  try {
    cfg = JSON.parse(readFileSync(path, 'utf8'))
  } catch (error) {
    throw new InputError(`${path}: not valid JSON (${(error as Error).message})`)
  }

  if (typeof cfg !== 'object' || cfg === null || Array.isArray(cfg))
    throw new InputError(`${path}: expected a JSON object such as {"backend": "wasm"}`)
  const unknown = Object.keys(cfg).filter((k) => !CONFIG_KEYS.includes(k))
  if (unknown.length > 0)
    throw new InputError(`${path}: unknown key ${JSON.stringify(unknown[0])} (known: ${CONFIG_KEYS.join(', ')})`)
  const {backend} = cfg as {backend?: unknown}
  return {path, backend: backend === undefined ? undefined : parseChoice(backend, path)}
}

/** --backend if given, else $MHC_BACKEND, else the config file's `backend`, else auto. */
export function resolveBackendChoice(
  flag: string | undefined,
  configDir?: string,
  env: NodeJS.ProcessEnv = process.env,
): ResolvedChoice {
  if (flag !== undefined) return {choice: parseChoice(flag, '--backend'), source: 'flag'}
  const fromEnv = env[BACKEND_ENV]
  if (fromEnv !== undefined && fromEnv !== '')
    return {choice: parseChoice(fromEnv, BACKEND_ENV), source: 'env', where: BACKEND_ENV}
  const cfg = readUserConfig(configDir, env)
  if (cfg.backend) return {choice: cfg.backend, source: 'config', where: cfg.path}
  return {choice: 'auto', source: 'default'}
}

export interface BackendAttempt {
  backend: BackendName
  ok: boolean
  reason?: string
}
export interface BackendReport {
  backend: BackendName
  requested: BackendChoice
  source: ChoiceSource
  attempts: BackendAttempt[]
}

/** One line: the backend, how it was chosen, and why the candidates before it were skipped. */
export function describeBackend(r: BackendReport): string {
  const how =
    r.requested === 'auto'
      ? 'auto'
      : r.source === 'env'
        ? 'from MHC_BACKEND'
        : r.source === 'config'
          ? 'from the config file'
          : ''
  const skipped = r.attempts.filter((a) => !a.ok).map((a) => `${a.backend} unavailable: ${a.reason}`)
  return `backend: ${r.backend}${how ? ` (${how})` : ''}${skipped.length > 0 ? ` [${skipped.join('; ')}]` : ''}`
}

/** The backend as --json reports it. */
export function backendJson(r: BackendReport) {
  return {
    name: r.backend,
    requested: r.requested,
    source: r.source,
    skipped: r.attempts.filter((a) => !a.ok).map((a) => ({backend: a.backend, reason: a.reason})),
  }
}

/** The most memory a backend can use: wasm32's 4 GiB heap, else this machine's (or its cgroup's) memory. */
export function memoryBudget(backend: BackendName): {bytes: number; what: string} {
  // wasm32's heap stops at 4 GiB − 64 KiB (tfjs-backend-wasm's getHeapMax); past it tfjs aborts the process.
  if (backend === 'wasm') return {bytes: 4 * 2 ** 30 - 65_536, what: "the wasm backend's heap holds at most 4 GiB"}
  // Elsewhere: what the machine has free now, plus what this process already holds, within its cgroup's limit.
  const available = freemem() + process.memoryUsage().rss
  const constrained = (process as {constrainedMemory?: () => number | undefined}).constrainedMemory?.()
  const limited = constrained !== undefined && constrained > 0 && constrained < available
  const bytes = limited ? constrained : available
  return {
    bytes,
    what: `this machine has ${(bytes / 2 ** 30).toFixed(1)} GiB available${limited ? ' (its cgroup limit)' : ''}`,
  }
}

/** The requested backend cannot run here (exit 2: the user asked for something this machine lacks). */
export class BackendError extends InputError {}

/** The error when no candidate of a choice could start, naming how it was asked for and why each failed. */
export function noUsableBackend(resolved: ResolvedChoice, attempts: BackendAttempt[]): BackendError {
  const why = attempts.map((a) => `${a.backend}: ${a.reason}`).join('; ')
  const asked =
    resolved.source === 'env'
      ? `MHC_BACKEND=${resolved.choice}`
      : resolved.source === 'config'
        ? `backend ${resolved.choice} (${resolved.where})`
        : `--backend ${resolved.choice}`
  // Named backends fail where the machine lacks them; auto always ends at cpu, so only a named one needs the hint.
  const hint = resolved.choice === 'auto' ? '' : '; without a flag (auto) the best backend this machine has is used'
  return new BackendError(`no usable backend for ${asked} (${why})${hint}`)
}

export const oneLine = (e: unknown) =>
  String((e as Error)?.message ?? e)
    .split('\n')[0]
    .slice(0, 200)
