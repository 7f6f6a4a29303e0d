// Crash-safe writes never replace what the user named: a symbolic link is written through, a device is written to.
import assert from 'node:assert/strict'
import {lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, it} from 'node:test'

import {writeFileAtomic} from '../../../src/model/io/atomic.js'

let root = ''
before(() => {
  root = mkdtempSync(join(tmpdir(), 'mhc-atomic-'))
})
after(() => rmSync(root, {recursive: true, force: true}))

it('replaces a regular file whole, leaving no temp file', () => {
  const f = join(root, 'a.txt')
  writeFileSync(f, 'old')
  writeFileAtomic(f, 'new')
  assert.equal(readFileSync(f, 'utf8'), 'new')
  assert.deepEqual(
    readdirSync(root).filter((x) => x.startsWith('a.txt')),
    ['a.txt'],
  )
})

it('writes through a symbolic link (also a dangling one) and keeps the link', () => {
  const target = join(root, 'target.xml')
  const link = join(root, 'link.xml')
  writeFileSync(target, 'old')
  symlinkSync(target, link)
  writeFileAtomic(link, 'new')
  assert.ok(lstatSync(link).isSymbolicLink(), 'the link is still a link')
  assert.equal(readFileSync(target, 'utf8'), 'new')
  const dangling = join(root, 'dangling.xml')
  symlinkSync(join(root, 'not-yet.xml'), dangling)
  writeFileAtomic(dangling, 'created')
  assert.ok(lstatSync(dangling).isSymbolicLink())
  assert.equal(readFileSync(join(root, 'not-yet.xml'), 'utf8'), 'created')
})

it('writes to a device (what --junit /dev/stdout names) without replacing it', () => {
  writeFileAtomic('/dev/null', 'anything')
  assert.ok(statSync('/dev/null').isCharacterDevice(), '/dev/null is still the device')
})
