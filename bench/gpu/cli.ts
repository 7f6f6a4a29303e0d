// The CLI for the GPU machine, where node_modules cannot travel (64 MiB): the commands bundled into one file with
// esbuild (scripts/bundle.mjs), run through oclif with an inline package description so nothing else is loaded.
// Usage there: node .bundle/cli.mjs train --backend webgpu ... (the same flags and output as ./bin/run.js)
import {Config} from '@oclif/core'

import AnalyzeGain from '../../src/commands/analyze-gain.js'
import Eval from '../../src/commands/eval.js'
import Export from '../../src/commands/export.js'
import Import from '../../src/commands/import.js'
import Train from '../../src/commands/train.js'

const COMMANDS: Record<string, typeof AnalyzeGain | typeof Eval | typeof Export | typeof Import | typeof Train> = {
  'analyze-gain': AnalyzeGain,
  eval: Eval,
  export: Export,
  import: Import,
  train: Train,
}
const [id, ...argv] = process.argv.slice(2)
const command = COMMANDS[id] as typeof Train | undefined
if (!command) throw new Error(`usage: cli.mjs ${Object.keys(COMMANDS).join('|')} [flags]`)
const config = await Config.load({
  root: process.cwd(),
  pjson: {name: 'mhc', version: '0.0.0', oclif: {bin: 'mhc', commands: './.no-commands', plugins: []}} as any,
})
try {
  await command.run(argv, config)
} catch (error) {
  // The command has printed its error already; oclif's EEXIT carries the exit code.
  const exit = (error as {oclif?: {exit?: number}})?.oclif?.exit
  if (exit === undefined) throw error
  process.exitCode = exit
}
