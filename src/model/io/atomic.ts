import {randomBytes} from 'node:crypto'
// Crash-safe file writes: a reader (or a resumed run after kill -9) sees the old file or the complete new one.
import {closeSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync} from 'node:fs'
import {dirname} from 'node:path'

/** A fresh name beside `path` that no other writer uses. */
export const tempName = (path: string) => `${path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`

/** Write all bytes to a new file and fsync it. */
export function writeFileSynced(path: string, data: Uint8Array | string): void {
  const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data
  const fd = openSync(path, 'wx') // 'wx': never clobber someone else's file
  try {
    // writeSync may write less than asked; loop until everything is out.
    for (let done = 0; done < bytes.length;) done += writeSync(fd, bytes, done, bytes.length - done)
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}

/** Best effort: fsync a directory so a rename inside it is durable (not supported on every platform). */
export function fsyncDir(dir: string): void {
  try {
    const fd = openSync(dir, 'r')
    try {
      fsyncSync(fd)
    } finally {
      closeSync(fd)
    }
  } catch {
    /* durability nicety only */
  }
}

/** Write to a temp file beside `path`, fsync, rename over `path`. */
export function writeFileAtomic(path: string, data: Uint8Array | string): void {
  const tmp = tempName(path)
  try {
    writeFileSynced(tmp, data)
    renameSync(tmp, path)
  } catch (error) {
    try {
      unlinkSync(tmp)
    } catch {
      /* never created or already renamed; the original error matters more */
    }

    throw error
  }

  fsyncDir(dirname(path))
}
