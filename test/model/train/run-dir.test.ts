// The run directory's lock (one writer, a named holder, stale locks taken over) and checkpoint retention.
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
  pruneCheckpoints,
  resumeRunDir,
  rewindRun,
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

describe('checkpoint retention (--keep-last, --keep-best)', () => {
  /** A run directory with checkpoints at `steps` whose manifests record these validation losses (undefined: none). */
  function run(losses: Record<number, number | undefined>, latest: number): string {
    const dir = tmpPath('keep')
    for (const [step, valLoss] of Object.entries(losses)) {
      const ck = join(dir, `ckpt-${String(step).padStart(6, '0')}`)
      mkdirSync(ck, {recursive: true})
      writeFileSync(join(ck, 'manifest.json'), JSON.stringify({metrics: valLoss === undefined ? {} : {valLoss}}))
    }

    writeFileSync(join(dir, 'latest'), `ckpt-${String(latest).padStart(6, '0')}\n`)
    return dir
  }

  const ckpts = (dir: string) =>
    readdirSync(dir)
      .filter((f) => f.startsWith('ckpt-'))
      .sort()

  it('keeps the newest N, the best by validation loss and whatever latest names; a checkpoint without a loss is never best', () => {
    const dir = run({2: 3.1, 4: 2.5, 6: undefined, 8: 2.9, 10: 2.7}, 8)
    const r = pruneCheckpoints(dir, {keepLast: 1, keepBest: true})
    assert.equal(r.best, 'ckpt-000004')
    assert.deepEqual(r.removed, ['ckpt-000002', 'ckpt-000006'])
    assert.deepEqual(ckpts(dir), ['ckpt-000004', 'ckpt-000008', 'ckpt-000010'])
    assert.equal(readFileSync(join(dir, 'best'), 'utf8').trim(), 'ckpt-000004')
    // Without --keep-best, only the newest (and latest's) stay; no best pointer is written.
    const plain = run({2: 1, 4: 2, 6: 3}, 6)
    pruneCheckpoints(plain, {keepLast: 2, keepBest: false})
    assert.deepEqual(ckpts(plain), ['ckpt-000004', 'ckpt-000006'])
    assert.ok(!existsSync(join(plain, 'best')))
  })

  it('--keep-last without --keep-best (a resumed run) still keeps what best names', () => {
    const dir = run({2: 1, 4: 2, 6: 3}, 6)
    writeFileSync(join(dir, 'best'), 'ckpt-000002\n')
    pruneCheckpoints(dir, {keepLast: 1, keepBest: false})
    assert.deepEqual(ckpts(dir), ['ckpt-000002', 'ckpt-000006'])
  })

  it('resuming from <run>/best behind later checkpoints is refused; through latest, a newer one is an interrupted save', () => {
    const dir = run({2: 1, 4: 2, 6: 3}, 6)
    writeFileSync(join(dir, 'best'), 'ckpt-000002\n')
    const at = (step: number) => ({dir: join(dir, `ckpt-${String(step).padStart(6, '0')}`), manifest: {step}}) as any
    assert.throws(() => resumeRunDir(at(2), join(dir, 'best'), undefined, 10), /already has later checkpoints/)
    writeFileSync(join(dir, 'latest'), 'ckpt-000004\n') // a save of ckpt-000006 that never moved latest
    assert.match(resumeRunDir(at(4), dir, undefined, 10).note ?? '', /newer than .*latest \(a save was interrupted\)/)
  })

  it('a rollback past the best checkpoint drops the best pointer; one before it keeps it', () => {
    const dir = run({2: 2, 4: 1.5, 6: 1.7}, 6)
    pruneCheckpoints(dir, {keepBest: true})
    assert.equal(readFileSync(join(dir, 'best'), 'utf8').trim(), 'ckpt-000004')
    rewindRun(dir, 4, 'ckpt-000004')
    assert.equal(readFileSync(join(dir, 'best'), 'utf8').trim(), 'ckpt-000004', 'ckpt-000004 survives the rewind')
    rewindRun(dir, 2, 'ckpt-000002')
    assert.ok(!existsSync(join(dir, 'best')), 'best named an abandoned checkpoint')
    assert.deepEqual(ckpts(dir), ['ckpt-000002'])
  })
})
