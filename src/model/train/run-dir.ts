// The run directory, owned here alone:
//   <run>/metrics.jsonl   one JSON record per step, evaluation and non-finite event
//   <run>/ckpt-NNNNNN/    checkpoints (src/model/io/checkpoint.ts writes one)
//   <run>/latest          the name of the newest complete checkpoint, rewritten after each save
//   <run>/.lock           the PID, host and start time of the process writing the run
// and the policies around it: where a new run goes, what a resume may overwrite, how a killed run is cleaned up.
import {
  appendFileSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmdirSync,
  rmSync,
  statSync,
  utimesSync,
  writeSync,
} from 'node:fs'
import {hostname} from 'node:os'
import {basename, dirname, join, resolve} from 'node:path'

import type {ModelConfig, TrainConfig} from '../config.js'

import {InputError} from '../errors.js'
import {fsyncDir, tempName, writeFileAtomic} from '../io/atomic.js'
import {
  CheckpointData,
  CheckpointError,
  MANIFEST,
  readCheckpointDir,
  readSmallFile,
  SaveInfo,
  TrainingState,
  writeCheckpoint,
} from '../io/checkpoint.js'

export const METRICS_FILE = 'metrics.jsonl'
export const LATEST = 'latest'
export const BEST = 'best'
export const LOCK_FILE = '.lock'

export const checkpointName = (step: number) => `ckpt-${String(step).padStart(6, '0')}`
export const isCheckpointName = (dir: string) => /^ckpt-\d+$/.test(basename(dir))
/** The step a checkpoint directory name encodes (ckpt-000400 → 400). */
export const stepOfCheckpoint = (dir: string) => Number(basename(dir).slice('ckpt-'.length))
/** Orders checkpoint names by step (as numbers: ckpt-1000000 comes after ckpt-999999). */
export const byStep = (a: string, b: string) => stepOfCheckpoint(a) - stepOfCheckpoint(b)

// ---------------------------------------------------------------------------------------------------------------
// Checkpoints in a run

/** Saves `state` as <runDir>/ckpt-<step>/ and points <runDir>/latest at it (last: it only ever names a whole one). */
export function saveCheckpoint(
  runDir: string,
  state: TrainingState,
  model: ModelConfig,
  train: TrainConfig,
  info: SaveInfo,
): string {
  mkdirSync(runDir, {recursive: true})
  const name = checkpointName(state.step)
  writeCheckpoint(join(runDir, name), state, model, train, info)
  fsyncDir(runDir)
  writeFileAtomic(join(runDir, LATEST), name + '\n')
  return join(runDir, name)
}

/** A checkpoint directory, or a run directory whose `latest` names one. */
export function resolveCheckpoint(path: string): string {
  if (!existsSync(path)) throw new CheckpointError(`${path}: no such checkpoint or run directory`)
  // RUN/latest, as a shell completes it: the pointer file stands for its run.
  if (basename(path) === LATEST && statSync(path).isFile()) return resolveCheckpoint(dirname(path))
  // RUN/best (--keep-best): the checkpoint it names, which must be there.
  if (basename(path) === BEST && statSync(path).isFile()) {
    const name = readSmallFile(path, 1024).toString('utf8').trim()
    if (!isCheckpointName(name) || !existsSync(join(dirname(path), name, MANIFEST)))
      throw new CheckpointError(`${path}: does not name a complete checkpoint ("${name.slice(0, 40)}")`)
    return join(dirname(path), name)
  }

  if (!statSync(path).isDirectory())
    throw new CheckpointError(`${path}: not a directory (expected a checkpoint or run directory)`)
  if (existsSync(join(path, MANIFEST))) return path
  if (existsSync(join(path, LATEST))) {
    const name = readSmallFile(join(path, LATEST), 1024).toString('utf8').trim()
    if (!isCheckpointName(name))
      throw new CheckpointError(`${join(path, LATEST)}: does not name a checkpoint ("${name.slice(0, 40)}")`)
    const dir = join(path, name)
    if (existsSync(join(dir, MANIFEST))) return dir
  }

  // No `latest` (killed between rename and pointer), or it names a checkpoint that a kill mid-overwrite removed:
  // take the newest complete checkpoint.
  const newest = completeCheckpoints(path).pop()
  if (newest) return join(path, newest)
  if (existsSync(join(path, LATEST)))
    throw new CheckpointError(
      `${path}: the checkpoint named by latest has no ${MANIFEST}, and no other checkpoint is complete`,
    )
  throw new CheckpointError(`${path}: no ${MANIFEST} (not a checkpoint) and no checkpoints (not a run directory)`)
}

/** Reads and verifies a checkpoint, given its directory or its run's. */
export function readCheckpoint(
  path: string,
  opts: {optimizer?: boolean; allowNonFinite?: boolean} = {},
): CheckpointData {
  return readCheckpointDir(resolveCheckpoint(path), opts)
}

/**
 * After a save (--keep-best, --keep-last): names the checkpoint with the lowest validation loss in <run>/best, then
 * removes all but the newest `keepLast` checkpoints, never the one `latest` or `best` names. A checkpoint without a
 * validation loss is never the best. Returns the best name and the names removed.
 */
export function pruneCheckpoints(
  runDir: string,
  o: {keepLast?: number; keepBest: boolean},
): {best?: string; removed: string[]} {
  const names = completeCheckpoints(runDir)
  let best: string | undefined
  if (o.keepBest) {
    let bestLoss = Infinity
    for (const name of names) {
      let valLoss: unknown
      try {
        valLoss = JSON.parse(readFileSync(join(runDir, name, MANIFEST), 'utf8')).metrics?.valLoss
      } catch {
        continue // unreadable: not a candidate (and kept: it is not ours to judge)
      }

      if (typeof valLoss === 'number' && valLoss < bestLoss) [best, bestLoss] = [name, valLoss]
    }

    if (best) writeFileAtomic(join(runDir, BEST), best + '\n')
  }

  const removed: string[] = []
  if (o.keepLast) {
    // Never what `latest` or `best` names, even in a run that does not keep a best itself (a resume without --keep-best).
    const named = [LATEST, BEST].map((f) => readPointer(join(runDir, f)))
    const keep = new Set([best, ...named, ...names.slice(-o.keepLast)])
    for (const name of names)
      if (!keep.has(name)) {
        rmSync(join(runDir, name), {recursive: true, force: true})
        removed.push(name)
      }
  }

  return {best, removed}
}

const readPointer = (p: string): string | undefined => {
  try {
    return readFileSync(p, 'utf8').trim()
  } catch {
    return undefined
  }
}

/** The names of a run's complete checkpoints (with a manifest), oldest first. */
export const completeCheckpoints = (runDir: string) =>
  readdirSync(runDir)
    .filter((f) => isCheckpointName(f) && existsSync(join(runDir, f, MANIFEST)))
    .sort(byStep)

/**
 * After a rollback to `step`: the run's checkpoints beyond it belong to the abandoned path. `latest` moves first (to
 * the restored checkpoint, or goes when the run restarted from its initial state), then each abandoned checkpoint is
 * renamed to a temp name (atomic) and deleted, so a crash midway leaves only whole checkpoints and stale temps.
 */
export function rewindRun(runDir: string, step: number, latest?: string): void {
  if (latest) writeFileAtomic(join(runDir, LATEST), latest + '\n')
  else rmSync(join(runDir, LATEST), {force: true})
  // `best` (--keep-best) must not name an abandoned checkpoint: the next save names the best of what is left.
  const best = readPointer(join(runDir, BEST))
  if (best && isCheckpointName(best) && stepOfCheckpoint(best) > step) rmSync(join(runDir, BEST), {force: true})
  for (const f of readdirSync(runDir)) {
    if (!isCheckpointName(f) || stepOfCheckpoint(f) <= step) continue
    const doomed = tempName(join(runDir, f))
    renameSync(join(runDir, f), doomed)
    rmSync(doomed, {recursive: true, force: true})
  }

  fsyncDir(runDir)
}

/** The checkpoints a resumed run descends from: the resume one and, resumed in place, the earlier ones beside it. */
export function ancestors(resume: CheckpointData, outDir: string): {step: number; dir: string}[] {
  const {step} = resume.manifest
  const runDir = dirname(resume.dir)
  if (resolve(runDir) !== resolve(outDir)) return [{step, dir: resume.dir}]
  const earlier = readdirSync(runDir)
    .filter((f) => isCheckpointName(f) && stepOfCheckpoint(f) < step)
    .sort(byStep)
  return [...earlier.map((f) => ({step: stepOfCheckpoint(f), dir: join(runDir, f)})), {step, dir: resume.dir}]
}

// ---------------------------------------------------------------------------------------------------------------
// Where a run goes: a new one never lands on another run; a resume never overwrites checkpoints it did not make.

/** A directory with checkpoints or metrics belongs to a run. */
export function holdsRun(dir: string): boolean {
  if (!existsSync(dir)) return false
  if (!statSync(dir).isDirectory()) throw new InputError(`--out ${dir} is not a directory`)
  return readdirSync(dir).some((f) => f === LATEST || f === METRICS_FILE || f.startsWith('ckpt-'))
}

/** runs/<arch>, or the first runs/<arch>-N that holds no run yet. */
export function freeRunDir(base: string): string {
  if (!holdsRun(base)) return base
  for (let i = 2; ; i++) if (!holdsRun(`${base}-${i}`)) return `${base}-${i}`
}

/** The directory of a new run: `out`, or the first free runs/<arch>[-N]; never one that holds a run or is in use. */
export function newRunDir(out: string | undefined, arch: string): string {
  const dir = out ?? freeRunDir(`runs/${arch}`)
  assertUnlocked(dir)
  if (holdsRun(dir)) {
    const hasCheckpoint = readdirSync(dir).some((f) => f === LATEST || f.startsWith('ckpt-'))
    throw new InputError(
      hasCheckpoint
        ? `${dir} already holds a run; continue it with --resume ${dir} or choose another --out`
        : `${dir} holds the metrics of a run that saved no checkpoint; choose another --out or remove it`,
    )
  }

  return dir
}

/**
 * The directory a resumed run writes to (`out`, or the checkpoint's own run) and a note for the user, or bad input:
 * resuming from an older checkpoint into its own run would overwrite the later ones; another run's directory is not
 * ours to write. `given` is what the user named (a run directory follows `latest`; a checkpoint newer than `latest`
 * is one whose save was cut off before the pointer moved, so it may be written again).
 */
export function resumeRunDir(
  ck: CheckpointData,
  given: string,
  out: string | undefined,
  steps: number,
): {outDir: string; note?: string} {
  const runDir = dirname(ck.dir)
  const outDir = out ?? runDir
  assertUnlocked(outDir)
  if (steps < ck.manifest.step)
    throw new InputError(
      `--steps ${steps} is behind the checkpoint (step ${ck.manifest.step}); use \`mhc eval\` to evaluate it`,
    )
  if (resolve(outDir) !== resolve(runDir)) {
    if (holdsRun(outDir))
      throw new InputError(
        `${outDir} already holds another run; resume into the checkpoint's own run directory or an empty --out`,
      )
    return {outDir}
  }

  const later = readdirSync(runDir)
    .filter((f) => isCheckpointName(f) && stepOfCheckpoint(f) > ck.manifest.step)
    .sort(byStep)
  // Only the run directory (or RUN/latest) goes through `latest`; RUN/best or a checkpoint is a choice of the user's.
  const viaLatest =
    resolve(given) === resolve(runDir) || (basename(given) === LATEST && resolve(dirname(given)) === resolve(runDir))
  if (later.length > 0 && viaLatest) {
    return {
      outDir,
      note: `${later.join(', ')} ${later.length === 1 ? 'is' : 'are'} newer than ${join(runDir, LATEST)} (a save was interrupted); resuming from ${ck.dir}`,
    }
  }

  if (later.length > 0 && steps > ck.manifest.step) {
    throw new InputError(
      `${runDir} already has later checkpoints (${later.join(', ')}); resuming from step ${ck.manifest.step} would overwrite them: pass an empty --out`,
    )
  }

  return {outDir}
}

// ---------------------------------------------------------------------------------------------------------------
// metrics.jsonl

export const appendMetric = (runDir: string, rec: object) =>
  appendFileSync(join(runDir, METRICS_FILE), JSON.stringify(rec) + '\n')

/**
 * Keeps the records of steps ≤ `step` (a resumed or rolled-back run rewrites what came after its checkpoint), and
 * every non-finite event, which stays part of the run's history. A torn last line from a crash goes too.
 */
export function truncateMetrics(runDir: string, step: number): void {
  const path = join(runDir, METRICS_FILE)
  if (!existsSync(path)) return
  const keep = readFileSync(path, 'utf8')
    .split('\n')
    .filter((line) => {
      if (!line.trim()) return false
      try {
        const rec = JSON.parse(line)
        return rec.type === 'nonfinite' || rec.step <= step
      } catch {
        return false
      }
    })
  writeFileAtomic(path, keep.map((l) => l + '\n').join(''))
}

/** A fresh run starts with an empty metrics file. */
export function clearMetrics(runDir: string): void {
  if (existsSync(join(runDir, METRICS_FILE))) writeFileAtomic(join(runDir, METRICS_FILE), '')
}

export interface StepRecord {
  step: number
  loss: number
  gradNorm: number
  lr?: number
}

export interface EvalRecord {
  step: number
  valLoss: number
}

/**
 * The step records of a metrics.jsonl. A line that is not a JSON object, or a step record without an integer step
 * and numeric (or null: JSON has no NaN) loss and gradNorm, is bad input naming the line: a gate must never turn a
 * corrupt file into "rule failed". The one exception is the signature of a torn write (kill -9 mid-append): after
 * whole records, a last line that begins like one (`{`) but has no newline; it is skipped and reported.
 */
export function readStepRecords(path: string): {steps: StepRecord[]; evals: EvalRecord[]; tornLastLine: boolean} {
  if (!statSync(path).isFile()) throw new InputError(`${path}: not a regular file`)
  const lines = readFileSync(path, 'utf8').split('\n')
  const steps: StepRecord[] = []
  const evals: EvalRecord[] = []
  let tornLastLine = false
  let records = 0
  const isNum = (v: unknown) => v === null || typeof v === 'number'
  for (const [i, line] of lines.entries()) {
    if (!line.trim()) continue
    let rec: any
    try {
      rec = JSON.parse(line)
    } catch {
      if (i === lines.length - 1 && records > 0 && line.startsWith('{')) {
        tornLastLine = true
        continue
      }

      throw new InputError(
        `${path}:${i + 1}: not a JSON record (${JSON.stringify(line.slice(0, 60))}${line.length > 60 ? '…' : ''})`,
      )
    }

    if (typeof rec !== 'object' || rec === null || Array.isArray(rec) || typeof rec.type !== 'string')
      throw new InputError(`${path}:${i + 1}: not a metrics record (no "type")`)
    records++
    if (rec.type === 'eval') {
      if (!Number.isSafeInteger(rec.step) || rec.step < 0 || !isNum(rec.valLoss))
        throw new InputError(`${path}:${i + 1}: an eval record needs an integer step and a numeric valLoss`)
      evals.push({step: rec.step, valLoss: rec.valLoss ?? Number.NaN})
    }

    if (rec.type !== 'step') continue
    if (!Number.isSafeInteger(rec.step) || rec.step < 1 || !isNum(rec.loss) || !isNum(rec.gradNorm)) {
      throw new InputError(`${path}:${i + 1}: a step record needs an integer step and numeric loss and gradNorm`)
    }

    const lr = typeof rec.lr === 'number' ? {lr: rec.lr} : {}
    steps.push({step: rec.step, loss: rec.loss ?? Number.NaN, gradNorm: rec.gradNorm ?? Number.NaN, ...lr})
  }

  return {steps, evals, tornLastLine}
}

/** The step records of a run directory's metrics.jsonl; a directory without one is not a run (bad input). */
export function readRunSteps(runDir: string): {
  steps: StepRecord[]
  evals: EvalRecord[]
  tornLastLine: boolean
  path: string
} {
  const path = join(runDir, METRICS_FILE)
  if (!existsSync(path)) throw new InputError(`${runDir}: no ${METRICS_FILE} (not a run directory)`)
  return {...readStepRecords(path), path}
}

/** Refuses a directory that holds a run or is being written: a new run must not mix with it. */
export function assertNoRun(dir: string, hint: string): void {
  assertUnlocked(dir)
  if (existsSync(join(dir, METRICS_FILE))) throw new InputError(`${dir} already holds a run; ${hint}`)
}

// ---------------------------------------------------------------------------------------------------------------
// Opening a run directory for writing

export interface OpenRunDir {
  /** Releases the lock (also done at process exit). */
  release(): void
  /**
   * After a failure before anything was logged: removes what opening created (the run folder, then each parent it
   * created, each only while empty), so a failed first step leaves nothing. Never a recursive delete: another run
   * may have started in a parent meanwhile.
   */
  discardIfUnused(): void
}

/** Creates `dir` (and its parents) as needed and takes its lock, or fails naming the holder. */
export function openRunDir(dir: string): OpenRunDir {
  const created: string[] = [] // the folders this call creates, deepest first
  for (let d = resolve(dir); !existsSync(d); d = dirname(d)) created.push(d)
  mkdirSync(dir, {recursive: true})
  const release = acquireRunLock(dir)
  return {
    release,
    discardIfUnused() {
      if (created.length === 0) return
      const metrics = join(dir, METRICS_FILE)
      if (existsSync(metrics) && statSync(metrics).size > 0) return
      if (!readdirSync(dir).every((f) => f === LOCK_FILE || f === METRICS_FILE)) return
      release()
      rmSync(metrics, {force: true})
      for (const d of created) {
        try {
          rmdirSync(d) // only succeeds while empty
        } catch {
          return
        }
      }
    },
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Crash leftovers

// Our temp names (io/atomic.ts tempName): <target>.tmp-<pid>-<12 hex digits>, for checkpoints, `latest` and metrics.
const TEMP_NAME = /^(?:ckpt-\d+|latest|best|metrics\.jsonl|\.lock)\.tmp-(\d+)-[0-9a-f]{12}$/

export const isAlive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM' // exists, owned by someone else
  }
}

/**
 * Removes what killed saves left in a run directory: our own temp names only, and only those of processes that are
 * gone (or of this process, which has no write in flight when this runs; containers reuse pids). Returns the names.
 */
export function removeStaleTemps(runDir: string): string[] {
  if (!existsSync(runDir)) return []
  const stale = readdirSync(runDir).filter((f) => {
    const m = TEMP_NAME.exec(f)
    return m !== null && (Number(m[1]) === process.pid || !isAlive(Number(m[1])))
  })
  for (const f of stale) rmSync(join(runDir, f), {recursive: true, force: true})
  return stale
}

// ---------------------------------------------------------------------------------------------------------------
// One writer per run directory. Two `mhc train --out X` at once would interleave metrics and race on checkpoints, so a
// run holds <dir>/.lock from its first write to its end, touching it every minute. A lock is stale when its process is
// gone (kill -9, a crash), when its PID now belongs to another process (containers reuse PIDs: the lock records the
// process's start time), or, for a lock written on another host (a shared filesystem, a restored CI cache), when it
// has not been touched for ten minutes. The next run takes a stale lock over.

export interface LockHolder {
  pid: number
  host: string
  started: string
  startTicks?: number
  command?: string
}

export class RunLockedError extends InputError {}

const HEARTBEAT_MS = 60_000
const OTHER_HOST_STALE_MS = 30 * 60_000 // a JS timer: a long synchronous step (minutes on cpu) delays the heartbeat

/** A process's start time in clock ticks since boot (Linux /proc), or undefined where that cannot be read. */
function startTicks(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ') // after "pid (comm) ": field 3 onwards
    const v = Number(fields[19]) // field 22: starttime
    return Number.isFinite(v) ? v : undefined
  } catch {
    return undefined
  }
}

function readHolder(path: string): LockHolder | undefined {
  try {
    const h = JSON.parse(readFileSync(path, 'utf8'))
    return Number.isSafeInteger(h?.pid) && typeof h?.host === 'string' ? h : undefined
  } catch {
    return undefined // torn or foreign: treated as stale
  }
}

/** The live process holding `dir`, if any (not this process: a process never waits for itself). */
export function lockHolder(dir: string): LockHolder | undefined {
  const path = join(dir, LOCK_FILE)
  const h = readHolder(path)
  if (!h) return undefined
  if (h.host !== hostname()) {
    try {
      return Date.now() - statSync(path).mtimeMs < OTHER_HOST_STALE_MS ? h : undefined
    } catch {
      return undefined
    }
  }

  if (h.pid === process.pid || !isAlive(h.pid)) return undefined
  const ticks = startTicks(h.pid)
  if (h.startTicks !== undefined && ticks !== undefined && ticks !== h.startTicks) return undefined // the PID was reused
  return h
}

const inUse = (dir: string, h: LockHolder) =>
  new RunLockedError(
    `${dir} is in use by another mhc process (PID ${h.pid}${h.host === hostname() ? '' : ` on ${h.host}`}, since ${h.started}); ` +
      `wait for it to finish or choose another --out${h.host === hostname() ? '' : ` (the lock goes stale ${OTHER_HOST_STALE_MS / 60_000} minutes after its last heartbeat; remove ${join(dir, LOCK_FILE)} if that process is gone)`}`,
  )

/** Fails (exit 2) when another live process holds `dir`: for commands that check before they start work. */
export function assertUnlocked(dir: string): void {
  if (!existsSync(dir)) return
  const h = lockHolder(dir)
  if (h) throw inUse(dir, h)
}

/**
 * Takes the lock of an existing directory, or fails naming the holder. Creation is atomic ('wx'); a stale lock is
 * renamed away first (two processes taking over the same stale lock: one rename wins, the other retries and finds
 * the winner's lock). Returns the release function; the lock is also released when the process exits normally.
 */
export function acquireRunLock(dir: string, command = process.argv.slice(2).join(' ')): () => void {
  const path = join(dir, LOCK_FILE)
  const me: LockHolder = {
    pid: process.pid,
    host: hostname(),
    started: new Date().toISOString(),
    startTicks: startTicks(process.pid),
    command,
  }
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      const fd = openSync(path, 'wx')
      try {
        writeSync(fd, JSON.stringify(me) + '\n')
      } finally {
        closeSync(fd)
      }

      const heartbeat = setInterval(() => {
        try {
          utimesSync(path, new Date(), new Date())
        } catch {
          /* the run directory went away: nothing to hold */
        }
      }, HEARTBEAT_MS)
      heartbeat.unref()
      const release = () => {
        clearInterval(heartbeat)
        process.removeListener('exit', release)
        const h = readHolder(path)
        if (h && h.pid === me.pid && h.started === me.started) rmSync(path, {force: true})
      }

      process.on('exit', release)
      return release
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
    }

    const h = lockHolder(dir)
    if (h) throw inUse(dir, h)
    const aside = tempName(path) // stale: move it aside atomically, then remove it
    try {
      renameSync(path, aside)
      rmSync(aside, {force: true})
    } catch {
      /* another process moved it first */
    }
  }

  throw new RunLockedError(`${dir}: could not take ${LOCK_FILE} (other processes keep replacing it)`)
}
