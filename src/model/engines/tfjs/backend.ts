// One place that loads TensorFlow.js and picks its backend (the tfjs engine's device).
// `@tensorflow/tfjs` (the union package) is the only unbundled way to get every gradient registered in Node.
import * as tf from '@tensorflow/tfjs'
import {setWasmPaths} from '@tensorflow/tfjs-backend-wasm'
import {existsSync} from 'node:fs'
import {dirname, join} from 'node:path'

import {
  BackendAttempt,
  BackendChoice,
  BackendName,
  BackendReport,
  noUsableBackend,
  oneLine,
  ResolvedChoice,
} from '../backends.js'
import {probeWebgpu} from '../webgpu-probe.js'

export {backendJson, BACKENDS, describeBackend} from '../backends.js'
export type {BackendAttempt, BackendChoice, BackendName, BackendReport, ResolvedChoice} from '../backends.js'
export {BackendError} from '../backends.js'

// PROD silences tfjs's console advice to install tfjs-node (which cannot install here) and skips debug checks.
tf.env().set('PROD', true)

export * as tf from '@tensorflow/tfjs'

// tfjs-node-gpu is an optionalDependency that cannot install on machines without access to its binary host.
// The specifier is a variable so the TypeScript build does not need the package to exist.
async function tryTensorflow(): Promise<void> {
  if (process.env.MHC_NO_TFJS_NODE === '1') throw new Error('disabled by MHC_NO_TFJS_NODE=1')
  process.env.TF_CPP_MIN_LOG_LEVEL ??= '2' // TensorFlow's native start-up chatter would reach stderr
  const spec = '@tensorflow/tfjs-node-gpu'
  try {
    await import(spec)
  } catch (error) {
    const msg = oneLine(error)
    throw new Error(/Cannot find (package|module)/.test(msg) ? `${spec} is not installed` : msg)
  }

  if (!tf.findBackend('tensorflow')) throw new Error('loaded but registered no "tensorflow" backend')
}

async function tryWebgpu(): Promise<void> {
  // Asked in a child process first, so that no native warning reaches the terminal and a software adapter
  // (llvmpipe, lavapipe, SwiftShader) is never chosen.
  const probe = await probeWebgpu()
  if (!probe.ok) throw new Error(probe.reason)
  // A real GPU is there. Keep the software Vulkan drivers out of this process: loading them prints native warnings.
  process.env.VK_LOADER_DRIVERS_DISABLE ??= '*lvp*,*swiftshader*'
  const spec = 'webgpu'
  const dawn = (await import(spec)) as {create: (o: string[]) => any; globals: object}
  Object.assign(globalThis, dawn.globals)
  const gpu = dawn.create([])
  const adapter = await gpu.requestAdapter({powerPreference: 'high-performance'})
  if (!adapter) throw new Error('Dawn found no GPU adapter in this process')
  // The tfjs WebGPU backend reads navigator.gpu when its module is evaluated, so it must exist first.
  ;(globalThis as any).navigator = {gpu}
  await import('@tensorflow/tfjs-backend-webgpu')
}

/** Where the wasm binaries are: next to the package, or next to the bundle when we ship one. */
function configureWasmPaths(): void {
  const here = dirname(new URL(import.meta.url).pathname)
  const candidates = [join(here, 'wasm'), join(here, '..', 'wasm')]
  for (const dir of candidates) {
    if (existsSync(join(dir, 'tfjs-backend-wasm-simd.wasm'))) {
      setWasmPaths(dir + '/')
      return
    }
  }
}

/** Makes a tfjs backend the current one, or throws why it cannot run here. */
export async function activate(name: TfjsBackendName): Promise<void> {
  if (name === 'tensorflow') await tryTensorflow()
  if (name === 'tfjs-webgpu') await tryWebgpu()
  if (name === 'wasm') configureWasmPaths()
  const tfName = name === 'tfjs-webgpu' ? 'webgpu' : name
  const ok = await tf.setBackend(tfName)
  if (!ok) throw new Error(`tf.setBackend('${tfName}') failed`)
  await tf.ready()
}

/** The tfjs backends, in the order `auto` tries them when the tfjs engine is asked for alone (tests, benches). */
export const TFJS_BACKENDS = ['tensorflow', 'tfjs-webgpu', 'wasm', 'cpu'] as const
export type TfjsBackendName = (typeof TFJS_BACKENDS)[number]

/**
 * The tfjs engine alone: `auto` tries tfjs-node-gpu, then wasm, then cpu, recording why each candidate was skipped; a
 * named backend is tried alone (asking for a GPU that is not there is an error, not a silent fallback). The commands
 * use src/model/engines/index.ts, which puts the WebGPU engine first.
 */
export async function selectBackend(choice: BackendChoice | ResolvedChoice): Promise<BackendReport> {
  const resolved: ResolvedChoice = typeof choice === 'string' ? {choice, source: 'flag'} : choice
  const order: BackendName[] = resolved.choice === 'auto' ? ['tensorflow', 'wasm', 'cpu'] : [resolved.choice]
  const attempts: BackendAttempt[] = []
  for (const name of order) {
    try {
      if (name === 'webgpu') throw new Error('the WebGPU engine is not a tfjs backend (tfjs-webgpu is)')
      await activate(name)
      attempts.push({backend: name, ok: true})
      return {backend: name, requested: resolved.choice, source: resolved.source, attempts}
    } catch (error) {
      attempts.push({backend: name, ok: false, reason: oneLine(error)})
    }
  }

  throw noUsableBackend(resolved, attempts)
}
