// The run directory's lock: one writer, a named holder, stale locks taken over.
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync} from 'node:fs'
import {hostname, tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'

import {
  acquireRunLock,
  assertUnlocked,
  LOCK_FILE,
  lockHolder,
  METRICS_FILE,
  openRunDir,
} from '../../../src/model/train/run-dir.js'

let root = ''
before(() => {
  root = mkdtempSync(join(tmpdir(), 'mhc-lock-'))
})
after(() => rmSync(root, {recursive: true, force: true}))
let counter = 0
const tmpPath = (name: string) => join(root, `${name}-${++counter}`)

describe('a run directory has one writer', () => {
  it('acquire, refuse while held (naming the PID), release; a stale lock from a dead process is taken over', () => {
    const dir = tmpPath('lock')
    mkdirSync(dir)
    const release = acquireRunLock(dir, 'test')
    assert.equal(JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8')).pid, process.pid)
    assert.equal(lockHolder(dir), undefined, 'a process never waits for itself')
    release()
    assert.equal(existsSync(join(dir, LOCK_FILE)), false)
    // A live holder: another process (this test's parent is alive for sure).
    writeFileSync(
      join(dir, LOCK_FILE),
      JSON.stringify({pid: process.ppid, host: hostname(), started: '2026-01-01T00:00:00Z'}),
    )
    assert.throws(() => assertUnlocked(dir), new RegExp(`in use by another mhc process \\(PID ${process.ppid}`))
    assert.throws(() => acquireRunLock(dir), new RegExp(`PID ${process.ppid}`))
    // A dead holder: a child that has exited.
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], {encoding: 'utf8'})
    writeFileSync(
      join(dir, LOCK_FILE),
      JSON.stringify({pid: Number(dead.stdout), host: hostname(), started: '2026-01-01T00:00:00Z'}),
    )
    assertUnlocked(dir)
    const again = acquireRunLock(dir)
    assert.equal(JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8')).pid, process.pid)
    again()
    assert.deepEqual(readdirSync(dir), [], 'no lock or temp file left')
  })
})

describe('stale locks', () => {
  it('a PID that now belongs to another process (containers reuse PIDs) is stale: the start time does not match', () => {
    const dir = tmpPath('reused')
    mkdirSync(dir)
    // The parent is alive, but it started at another time than this lock says.
    writeFileSync(
      join(dir, LOCK_FILE),
      JSON.stringify({pid: process.ppid, host: hostname(), started: '2026-01-01T00:00:00Z', startTicks: 1}),
    )
    assert.equal(lockHolder(dir), undefined)
    acquireRunLock(dir)()
    // Recorded with its real start time, the same holder is live.
    const release = acquireRunLock(dir)
    const mine = JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8'))
    release()
    assert.ok(Number.isInteger(mine.startTicks), `start time recorded: ${JSON.stringify(mine)}`)
  })

  it('a lock from another host holds while it is fresh and goes stale thirty minutes after its last heartbeat', () => {
    const dir = tmpPath('other-host')
    mkdirSync(dir)
    const lock = join(dir, LOCK_FILE)
    writeFileSync(lock, JSON.stringify({pid: 1, host: 'another-host', started: '2026-01-01T00:00:00Z'}))
    assert.throws(() => assertUnlocked(dir), /PID 1 on another-host.*goes stale 30 minutes after its last heartbeat/)
    const recent = new Date(Date.now() - 29 * 60_000) // a long synchronous step can delay the heartbeat this much
    utimesSync(lock, recent, recent)
    assert.ok(lockHolder(dir), 'still held 29 minutes after the last heartbeat')
    const old = new Date(Date.now() - 31 * 60_000)
    utimesSync(lock, old, old)
    assert.equal(lockHolder(dir), undefined)
    acquireRunLock(dir)()
    assert.deepEqual(readdirSync(dir), [])
  })
})

describe('a failed run removes only what it created, and only while empty', () => {
  it('a/b/run created for a run that fails: a concurrent run started in a/ survives, the empty folders go', () => {
    const a = tmpPath('parents')
    const run = openRunDir(join(a, 'b', 'run'))
    // Meanwhile another run starts beside it, under the same new parent.
    mkdirSync(join(a, 'other'))
    writeFileSync(join(a, 'other', METRICS_FILE), '{"type":"step","step":1,"loss":5,"gradNorm":1}\n')
    run.discardIfUnused()
    assert.ok(existsSync(join(a, 'other', METRICS_FILE)), 'the other run survives')
    assert.deepEqual(readdirSync(a), ['other'], 'b/run went, a stays because it is not empty')
  })

  it('alone, every folder it created goes; a run that logged a step keeps everything', () => {
    const a = tmpPath('alone')
    openRunDir(join(a, 'b', 'run')).discardIfUnused()
    assert.equal(existsSync(a), false)
    const kept = join(tmpPath('logged'), 'run')
    const run = openRunDir(kept)
    writeFileSync(join(kept, METRICS_FILE), '{"type":"step","step":1,"loss":5,"gradNorm":1}\n')
    run.discardIfUnused()
    run.release()
    assert.deepEqual(readdirSync(kept), [METRICS_FILE])
  })
})
