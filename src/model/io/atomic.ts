// Crash-safe file writes: a reader (or a resumed run after kill -9) sees the old file or the complete new one.
import {randomBytes} from 'node:crypto'
import {
  closeSync,
  existsSync,
  fsyncSync,
  lstatSync,
  openSync,
  readlinkSync,
  realpathSync,
  renameSync,
  statSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs'
import {dirname, resolve} from 'node:path'

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

/** Where a write to `path` lands: through a symbolic link to its target (a link is never replaced by a file). */
function writeTarget(path: string): string {
  try {
    if (!lstatSync(path).isSymbolicLink()) return path
  } catch {
    return path // does not exist yet
  }

  try {
    return realpathSync(path)
  } catch {
    return resolve(dirname(path), readlinkSync(path)) // a dangling link: create what it points to
  }
}

/**
 * Write to a temp file beside `path`, fsync, rename over `path`. A path that is not a regular file (/dev/stdout, a
 * FIFO, a device: what CI jobs name) is written to directly, never replaced.
 */
export function writeFileAtomic(path: string, data: Uint8Array | string): void {
  path = writeTarget(path)
  if (existsSync(path) && !statSync(path).isFile()) {
    writeFileSync(path, data)
    return
  }

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
