// Same flag, same meaning: a flag name shared by several commands has one definition (default, bounds, options),
// and the names that once meant different things in different commands are gone.
import assert from 'node:assert/strict'
import {test} from 'node:test'

import AnalyzeGain from '../../src/commands/analyze-gain.js'
import Check from '../../src/commands/check.js'
import Eval from '../../src/commands/eval.js'
import ProfileMemory from '../../src/commands/profile-memory.js'
import ProfileTime from '../../src/commands/profile-time.js'
import Train from '../../src/commands/train.js'

const commands = {
  train: Train,
  eval: Eval,
  'analyze-gain': AnalyzeGain,
  check: Check,
  'profile-memory': ProfileMemory,
  'profile-time': ProfileTime,
}
type FlagDef = {
  default?: unknown
  min?: number
  max?: number
  options?: readonly string[]
  type: string
  description?: string
}
const flagsOf = (name: keyof typeof commands) => commands[name].flags as unknown as Record<string, FlagDef>

// Defaults that may differ on purpose: check gates by default, analyze-gain only when asked; check trains mhc unless told.
const OWN_DEFAULTS = new Set(['arch', 'max-composite-gain', 'max-gain'])

test('a flag shared by several commands has the same type, bounds, options and default everywhere', () => {
  const seen = new Map<string, {cmd: string; def: FlagDef}>()
  const shared = new Set<string>()
  for (const cmd of Object.keys(commands) as (keyof typeof commands)[]) {
    for (const [name, def] of Object.entries(flagsOf(cmd))) {
      const first = seen.get(name)
      if (!first) {
        seen.set(name, {cmd, def})
        continue
      }

      // `preset` names a model preset in train/check and a paper configuration in the profilers: two catalogs.
      if (name === 'preset') continue
      shared.add(name)
      const a = first.def
      assert.equal(def.type, a.type, `--${name}: type in ${cmd} vs ${first.cmd}`)
      assert.deepEqual(def.options, a.options, `--${name}: options in ${cmd} vs ${first.cmd}`)
      assert.equal(def.min, a.min, `--${name}: min in ${cmd} vs ${first.cmd}`)
      assert.equal(def.max, a.max, `--${name}: max in ${cmd} vs ${first.cmd}`)
      if (!OWN_DEFAULTS.has(name))
        assert.deepEqual(def.default, a.default, `--${name}: default in ${cmd} vs ${first.cmd}`)
    }
  }

  for (const name of [
    'layers',
    'd-model',
    'expansion',
    'batch',
    'steps',
    'recompute-block',
    'tokens',
    'max-gain',
    'max-composite-gain',
    'gate-on',
    'backend',
    'activation-bytes',
    'pipeline-stages',
    'micro-batches',
    'chart',
  ]) {
    assert.ok(shared.has(name), `--${name} is shared and was compared`)
  }
})

test('the renamed flags: one name each; no chart file and no backend unless asked', () => {
  assert.equal(flagsOf('analyze-gain').tokens.default, flagsOf('check').tokens.default)
  assert.ok(
    'heatmap-layers' in flagsOf('analyze-gain') && !('layers' in flagsOf('analyze-gain')),
    'heatmap indices have their own name',
  )
  for (const gone of ['max-backward-gain', 'max-composite-backward-gain'])
    assert.ok(!(gone in flagsOf('analyze-gain')), `--${gone}`)
  assert.ok(!('act-bytes' in flagsOf('profile-time')) && !('stages' in flagsOf('profile-time')))
  for (const cmd of Object.keys(commands) as (keyof typeof commands)[]) {
    const f = flagsOf(cmd)
    if (f.chart) assert.equal(f.chart.default, undefined, `${cmd} --chart writes nothing by default`)
    if (f.backend)
      assert.equal(f.backend.default, undefined, `${cmd} --backend defers to MHC_BACKEND and the config file`)
  }
})
