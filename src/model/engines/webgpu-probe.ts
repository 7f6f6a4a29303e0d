// Is there a real GPU behind Dawn? Asked in a short child process, because Dawn and the Vulkan drivers it loads print
// native warnings straight to file descriptor 2 (lavapipe: "XDG_RUNTIME_DIR is invalid…", Dawn: "Vulkan
// shaderUniform*ArrayDynamicIndexing required…"), which no JavaScript can intercept in-process. The child's stderr is
// captured and dropped; only its one JSON line on stdout is read. No TensorFlow.js here.
import {spawn} from 'node:child_process'
import {existsSync} from 'node:fs'
import {createRequire} from 'node:module'
import {join} from 'node:path'
import {pathToFileURL} from 'node:url'

export interface AdapterInfo {
  vendor: string
  architecture: string
  device: string
  description: string
  isFallbackAdapter: boolean
}
export type ProbeResult = {ok: true; adapter: AdapterInfo} | {ok: false; reason: string; adapter?: AdapterInfo}

// Software rasterisers that Dawn may expose as adapters (on Vulkan, OpenGL ES or D3D): never a training device.
const SOFTWARE = /llvmpipe|lavapipe|softpipe|swiftshader|software|microsoft basic render/i

/** Whether an adapter is a CPU implementation (Dawn reports these as CPU adapters; the JS API shows their names). */
export function isSoftwareAdapter(a: AdapterInfo): boolean {
  return a.isFallbackAdapter || SOFTWARE.test([a.vendor, a.architecture, a.device, a.description].join(' '))
}

export function describeAdapter(a: AdapterInfo): string {
  return [a.vendor, a.device || a.architecture, a.description].filter(Boolean).join(' ').trim() || 'unnamed adapter'
}

// Dawn needs a Vulkan loader to reach a GPU; without one there is nothing to probe.
export function vulkanLoaderPresent(): boolean {
  if (process.platform !== 'linux') return true
  const dirs = [
    '/usr/lib/x86_64-linux-gnu',
    '/usr/lib/aarch64-linux-gnu',
    '/usr/lib64',
    '/usr/lib',
    '/usr/local/lib',
    ...(process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean),
  ]
  return dirs.some((d) => existsSync(join(d, 'libvulkan.so.1')))
}

// The child: load Dawn, ask for the high-performance adapter, print what it is. argv[1] is Dawn's module URL and
// argv[2] the create() flags as JSON.
const CHILD = `
const {create, globals} = await import(process.argv[1])
Object.assign(globalThis, globals)
const gpu = create(JSON.parse(process.argv[2]))
const a = await gpu.requestAdapter({powerPreference: 'high-performance'})
const i = a?.info ?? {}
process.stdout.write(JSON.stringify(a ? {vendor: i.vendor ?? '', architecture: i.architecture ?? '', device: i.device ?? '',
  description: i.description ?? '', isFallbackAdapter: Boolean(i.isFallbackAdapter ?? a.isFallbackAdapter)} : null) + '\\n')
process.exit(0)
`

/** Resolves the `webgpu` package (an optional dependency) without loading it. */
export function dawnModuleUrl(): string | undefined {
  try {
    return pathToFileURL(createRequire(import.meta.url).resolve('webgpu')).href
  } catch {
    return undefined
  }
}

let cached: Promise<ProbeResult> | undefined

export interface ProbeOptions {
  timeoutMs?: number
  createFlags?: string[]
  /** Another module with Dawn's create()/globals shape (tests); skips the Vulkan loader check and the cache. */
  moduleUrl?: string
}

/** Probes once per process: a GPU adapter that is not a software one, or the reason there is none. */
export function probeWebgpu(opts: ProbeOptions = {}): Promise<ProbeResult> {
  if (opts.moduleUrl) return runProbe(opts)
  cached ??= runProbe(opts)
  return cached
}

async function runProbe(opts: ProbeOptions): Promise<ProbeResult> {
  const timeoutMs = opts.timeoutMs ?? 20_000
  const createFlags = opts.createFlags ?? []
  if (!opts.moduleUrl && !vulkanLoaderPresent())
    return {ok: false, reason: 'no Vulkan loader (libvulkan.so.1) on this machine'}
  const url = opts.moduleUrl ?? dawnModuleUrl()
  if (!url) return {ok: false, reason: 'the optional package webgpu is not installed'}
  const out = await new Promise<{code: number | null; stdout: string; stderr: string; timedOut: boolean}>((resolve) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', CHILD, url, JSON.stringify(createFlags)], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {...process.env, NODE_OPTIONS: ''},
    })
    let stdout = ''
    let stderr = ''
    let timedOut = false
    child.stdout.setEncoding('utf8').on('data', (d) => {
      stdout += d
    })
    child.stderr.setEncoding('utf8').on('data', (d) => {
      stderr += d
    })
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, timeoutMs)
    child.on('error', () => resolve({code: null, stdout, stderr, timedOut}))
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({code, stdout, stderr, timedOut})
    })
  })
  if (out.timedOut) return {ok: false, reason: `the adapter probe did not answer within ${timeoutMs / 1000} s`}
  let adapter: AdapterInfo | null
  try {
    adapter = JSON.parse(out.stdout.trim().split('\n').pop() ?? '')
  } catch {
    const why =
      out.stderr
        .split('\n')
        .map((l) => l.trim())
        .find((l) => /error/i.test(l)) ?? `exit ${out.code}`
    return {ok: false, reason: `Dawn could not start (${why.slice(0, 160)})`}
  }

  if (adapter === null) return {ok: false, reason: 'Dawn found no GPU adapter'}
  if (isSoftwareAdapter(adapter))
    return {ok: false, reason: `only a software adapter (${describeAdapter(adapter)})`, adapter}
  return {ok: true, adapter}
}
