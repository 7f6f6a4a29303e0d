// The architecture as rules a change can break (ARCHITECTURE.md): no import cycles, layers that only import
// downwards, TensorFlow.js only inside the tfjs engine, and commands that need no engine start without it.
import assert from 'node:assert/strict'
import {mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {dirname, join, relative, resolve} from 'node:path'
import {after, before, describe, it} from 'node:test'
import {pathToFileURL} from 'node:url'

import {repo, runCli, showRun} from './helpers.js'

interface Edge {
  from: string
  to: string
  typeOnly: boolean
  dynamic: boolean
}

/** Every import of every source file: static (`import … from`, `export … from`) and dynamic (`import('…')`). */
function importGraph(): {files: string[]; edges: Edge[]} {
  const src = join(repo, 'src')
  const files = readdirSync(src, {recursive: true})
    .map(String)
    .filter((f) => f.endsWith('.ts'))
    .map((f) => join('src', f))
  const edges: Edge[] = []
  for (const f of files) {
    const text = readFileSync(join(repo, f), 'utf8')
    const add = (spec: string, typeOnly: boolean, dynamic: boolean) => {
      const to = spec.startsWith('.') ? relative(repo, resolve(repo, dirname(f), spec)).replace(/\.js$/, '.ts') : spec
      edges.push({from: f, to, typeOnly, dynamic})
    }

    for (const m of text.matchAll(/^(?:import|export)\s+(type\s+)?(?:[^'"]*?\sfrom\s+)?['"]([^'"]+)['"]/gm))
      add(m[2], Boolean(m[1]), false)
    for (const m of text.matchAll(/import\(\s*['"]([^'"]+)['"]\s*\)/g)) add(m[1], false, true)
  }

  return {files, edges}
}

describe('the import graph', () => {
  const {files, edges} = importGraph()
  const local = edges.filter((e) => e.to.startsWith('src/'))

  it('every relative import names a file that exists (the scan itself works)', () => {
    assert.ok(files.length > 30 && local.length > 100, `${files.length} files, ${local.length} imports`)
    for (const e of local) assert.ok(files.includes(e.to), `${e.from} imports ${e.to}, which is not a source file`)
  })

  it('has no cycles, type imports included', () => {
    const next = new Map(files.map((f) => [f, local.filter((e) => e.from === f && !e.dynamic).map((e) => e.to)]))
    const state = new Map<string, 'open' | 'done'>()
    const stack: string[] = []
    const visit = (f: string) => {
      if (state.get(f) === 'done') return
      if (state.get(f) === 'open') assert.fail(`import cycle: ${[...stack.slice(stack.indexOf(f)), f].join(' → ')}`)
      state.set(f, 'open')
      stack.push(f)
      for (const t of next.get(f) ?? []) visit(t)
      stack.pop()
      state.set(f, 'done')
    }

    for (const f of files) visit(f)
  })

  it('imports only downwards: config at the bottom; model below profile; profile below cli and commands', () => {
    const rank = (f: string) =>
      f.startsWith('src/commands/') ? 4 : f.startsWith('src/cli/') ? 3 : f.startsWith('src/profile/') ? 2 : 1
    for (const e of local) assert.ok(rank(e.to) <= rank(e.from), `${e.from} imports ${e.to}, a layer above it`)
    assert.deepEqual(
      local.filter((e) => e.from === 'src/model/config.ts'),
      [],
      'config.ts is the ground floor',
    )
    // Within the model: io and the connections know nothing of engines or training; the loop sits above the run directory.
    for (const e of local) {
      if (/^src\/model\/(io|connections)\//.test(e.from))
        assert.ok(!/^src\/model\/(engines|train)\//.test(e.to), `${e.from} imports ${e.to}`)
      if (e.from === 'src/model/train/run-dir.ts') assert.notEqual(e.to, 'src/model/train/loop.ts')
    }
  })

  it('TensorFlow.js is loaded only by the tfjs engine; everything else reaches it through src/model/engines', () => {
    for (const e of edges.filter((x) => x.to.startsWith('@tensorflow/') && !x.typeOnly && !x.dynamic)) {
      assert.ok(e.from.startsWith('src/model/engines/tfjs/'), `${e.from} imports ${e.to}`)
    }

    for (const e of local.filter((x) => x.to.startsWith('src/model/engines/tfjs/') && !x.typeOnly && !x.dynamic)) {
      assert.ok(e.from.startsWith('src/model/engines/tfjs/'), `${e.from} imports ${e.to} statically`)
    }

    // Every other way in, dynamic and type-only included, is listed here with its reason.
    const allowed: Record<string, string> = {
      'src/model/engines/index.ts': 'opens the engine a command asked for (dynamic import)',
      'src/profile/measure/apply-path.ts': "profile-time --measure times tfjs's own ops (dynamic import, types)",
    }
    for (const e of edges.filter(
      (x) =>
        (x.to.startsWith('@tensorflow/') || x.to.startsWith('src/model/engines/tfjs/')) &&
        !x.from.startsWith('src/model/engines/tfjs/'),
    )) {
      assert.ok(allowed[e.from], `${e.from} reaches TensorFlow.js (${e.to}) and is not listed`)
    }

    for (const e of local.filter(
      (x) => x.to.startsWith('src/model/engines/webgpu/') && !x.from.startsWith('src/model/engines/webgpu/'),
    )) {
      assert.equal(e.from, 'src/model/engines/index.ts', `${e.from} reaches the webgpu engine (${e.to})`)
      assert.ok(e.dynamic, 'the webgpu engine (and Dawn) is loaded only when opened')
    }

    const commandsUsingTf = edges.filter(
      (e) => e.from.startsWith('src/commands/') && (e.to.startsWith('@tensorflow/') || e.to.includes('/engines/tfjs/')),
    )
    assert.deepEqual(commandsUsingTf, [], 'commands talk to an engine, never to tf')
  })
})

describe('commands that need no engine start without TensorFlow.js', () => {
  let dir = ''
  let hook = ''
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'mhc-notf-'))
    // A module hook that refuses to resolve any @tensorflow/* package: a command that loads one fails loudly.
    const loader = join(dir, 'no-tfjs-loader.mjs')
    writeFileSync(
      loader,
      `export async function resolve(specifier, context, next) {
  if (specifier.startsWith('@tensorflow/')) throw new Error('TFJS_LOADED: ' + specifier)
  return next(specifier, context)
}
`,
    )
    hook = join(dir, 'register.mjs')
    writeFileSync(
      hook,
      `import {register} from 'node:module'\nregister(${JSON.stringify(pathToFileURL(loader).href)})\n`,
    )
  })
  after(() => rmSync(dir, {recursive: true, force: true}))

  const cases: [string, string[]][] = [
    ['--help', ['--help']],
    ['train --help', ['train', '--help']],
    ['profile-time (model)', ['profile-time', '--json']],
    ['profile-memory (model)', ['profile-memory', '--json']],
    [
      'profile-memory --checkpoint (model)',
      ['profile-memory', '--checkpoint', join(repo, 'fixtures', 'mhc'), '--json'],
    ],
  ]
  for (const [name, args] of cases) {
    it(name, async () => {
      const r = await runCli(args, {nodeArgs: ['--import', hook]})
      assert.equal(r.status, 0, showRun(r))
      assert.doesNotMatch(r.stderr + r.stdout, /TFJS_LOADED/)
    })
  }

  it('the hook does catch a command that loads TensorFlow.js (eval), so the cases above can fail', async () => {
    const r = await runCli(['eval', join(repo, 'fixtures', 'baseline'), '--eval-windows', '2'], {
      nodeArgs: ['--import', hook],
    })
    assert.notEqual(r.status, 0, showRun(r))
    assert.match(r.stderr + r.stdout, /TFJS_LOADED: @tensorflow\//)
  })
})
