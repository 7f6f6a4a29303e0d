#!/usr/bin/env node
import {spawnSync} from 'node:child_process'
// Runs test files under node's built-in runner (TAP), so CI reads "# pass N / # fail N". Arguments are files or
// folders (default: test/, everything); folders are walked for *.test.ts. Node 20's --test takes no globs and dash
// drops top-level files from `test/**`, hence this walker.
//   npm test                      everything
//   npm run test:unit             test/model, test/profile (in-process, fast)
//   npm run test:commands         test/commands (the CLI as child processes, slow)
import {readdirSync, statSync} from 'node:fs'
import {join} from 'node:path'

const roots = process.argv.slice(2).length > 0 ? process.argv.slice(2) : ['test']
const files = roots.flatMap((r) =>
  statSync(r).isDirectory()
    ? readdirSync(r, {recursive: true})
        .map(String)
        .filter((f) => f.endsWith('.test.ts'))
        .sort()
        .map((f) => join(r, f))
    : [r],
)
if (files.length === 0) throw new Error(`no test files found under ${roots.join(', ')}`)

const r = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-reporter=tap', '--test-concurrency=2', ...files],
  {stdio: 'inherit', env: {...process.env, NODE_ENV: 'test'}},
)
process.exitCode = r.status ?? 1
