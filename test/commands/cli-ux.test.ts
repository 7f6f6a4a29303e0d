// The CLI's manners: shell completion (oclif's autocomplete plugin, exercised in a real bash), "did you mean" for
// commands (oclif's not-found plugin) and for flags.
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, it} from 'node:test'
import {stripVTControlCharacters} from 'node:util'

import {runCli, showRun} from '../helpers.js'

let home = ''
before(() => {
  home = mkdtempSync(join(tmpdir(), 'mhc-home-'))
})
after(() => rmSync(home, {recursive: true, force: true}))

it('bash completion completes commands and their flags', async () => {
  const env = {HOME: home, XDG_CACHE_HOME: join(home, '.cache')}
  const r = await runCli(['autocomplete', '--refresh-cache'], {env})
  assert.equal(r.status, 0, showRun(r))
  const complete = (words: string[]) => {
    const script = [
      `source ${join(home, '.cache', 'mhc', 'autocomplete', 'functions', 'bash', 'mhc.bash')}`,
      `COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}`,
      // eslint-disable-next-line no-template-curly-in-string -- bash's array expansion, not a template
      '_mhc_autocomplete; printf "%s\\n" "${COMPREPLY[@]}"',
    ].join('\n')
    const out = spawnSync('bash', ['-c', script], {encoding: 'utf8'})
    assert.equal(out.status, 0, out.stderr)
    return out.stdout.trim().split('\n').filter(Boolean).sort()
  }

  assert.deepEqual(complete(['mhc', 'tr']), ['train'])
  assert.deepEqual(complete(['mhc', 'p']), ['plot', 'profile-memory', 'profile-time'])
  assert.deepEqual(complete(['mhc', 'train', '--kee']), ['--keep-best', '--keep-last'])
  assert.deepEqual(complete(['mhc', 'sample', '--te']), ['--temperature'])
})

it('an unknown command names itself and exits 127; a mistyped flag gets a suggestion and exits 2', async () => {
  const r = await runCli(['trian'])
  assert.equal(r.status, 127, showRun(r))
  // The plugin colours its message wherever its colour library detects support, which includes CI runners that have
  // no terminal (GitHub Actions and others set CI variables it trusts), so compare the text without escapes.
  assert.match(stripVTControlCharacters(r.stderr), /trian is not a mhc command/)
  const f = await runCli(['train', '--stpes', '3', '--kep-best'])
  assert.equal(f.status, 2, showRun(f))
  assert.match(
    stripVTControlCharacters(f.stderr),
    /^Error: Nonexistent flags: --stpes, --kep-best \(did you mean --steps, --keep-best\?\)$/m,
  )
})
