// One writer per run directory. Two `mhc train --out X` at once would interleave metrics and race on checkpoints, so
// a run holds <dir>/.lock (its PID, host and start time) from the first write to the end. A lock whose process is
// gone (kill -9, a crash) is stale: the next run takes it over. A lock from another host cannot be checked and holds.
import {closeSync, existsSync, openSync, readFileSync, renameSync, rmSync, writeSync} from 'node:fs'
import {hostname} from 'node:os'
import {join} from 'node:path'
import {tempName} from './atomic.js'
import {InputError} from './errors.js'

export const LOCK_FILE = '.lock'

export interface LockHolder { pid: number; host: string; started: string; command?: string }

export class RunLockedError extends InputError {}

export const isAlive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM' // exists, owned by someone else
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
  const h = readHolder(join(dir, LOCK_FILE))
  if (!h) return undefined
  if (h.host !== hostname()) return h // cannot tell whether it lives: assume it does
  return h.pid !== process.pid && isAlive(h.pid) ? h : undefined
}

const describe = (dir: string, h: LockHolder) =>
  `${dir} is in use by another mhc process (PID ${h.pid}${h.host !== hostname() ? ` on ${h.host}` : ''}, since ${h.started}); ` +
  `wait for it to finish or choose another --out${h.host !== hostname() ? ` (remove ${join(dir, LOCK_FILE)} if that process is gone)` : ''}`

/** Fails (exit 2) when another live process holds `dir`. For commands that check before they start work. */
export function assertUnlocked(dir: string): void {
  if (!existsSync(dir)) return
  const h = lockHolder(dir)
  if (h) throw new RunLockedError(describe(dir, h))
}

/**
 * Takes the lock of an existing directory, or fails naming the holder. Creation is atomic ('wx'); a stale lock is
 * renamed away first (two processes taking over the same stale lock: one rename wins, the other retries and finds
 * the winner's lock). Returns the release function; the lock is also released when the process exits normally.
 */
export function acquireRunLock(dir: string, command = process.argv.slice(2).join(' ')): () => void {
  const path = join(dir, LOCK_FILE)
  const me: LockHolder = {pid: process.pid, host: hostname(), started: new Date().toISOString(), command}
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      const fd = openSync(path, 'wx')
      try { writeSync(fd, JSON.stringify(me) + '\n') } finally { closeSync(fd) }
      const release = () => {
        process.removeListener('exit', release)
        const h = readHolder(path)
        if (h && h.pid === me.pid && h.started === me.started) rmSync(path, {force: true})
      }
      process.on('exit', release)
      return release
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
    }
    const h = lockHolder(dir)
    if (h) throw new RunLockedError(describe(dir, h))
    const aside = tempName(path) // stale: move it aside atomically, then remove it
    try {
      renameSync(path, aside)
      rmSync(aside, {force: true})
    } catch { /* another process moved it first */ }
  }
  throw new RunLockedError(`${dir}: could not take ${LOCK_FILE} (other processes keep replacing it)`)
}
