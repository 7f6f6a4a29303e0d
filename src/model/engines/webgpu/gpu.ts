/// <reference types="@webgpu/types" />
// The device, and a thin static-graph layer over it: buffers, pipelines (cached by WGSL source), and "ops" (a
// pipeline with its bind group and grid, made once). A training step is a list of ops replayed into one compute pass.
// Nothing here allocates per step except the command encoder itself.

export interface DeviceOptions {
  /**
   * 'gpu': Dawn's default backend (Vulkan/Metal/D3D12) on a high-performance adapter.
   * 'software': Dawn's OpenGL ES backend, which runs compute shaders on Mesa llvmpipe (the CPU test machines).
   * 'auto' (default): MHC_WEBGPU_BACKEND (gpu|software) when set, else 'gpu'.
   */
  backend?: 'auto' | 'gpu' | 'software'
  /**
   * Keep Dawn's robustness transform (a clamp on every array index of every shader). Default false: the kernels here
   * never index out of range (every load is guarded), and the clamps cost instructions in the matmul's inner loop.
   */
  robustness?: boolean
  /** Further Dawn toggles to enable (e.g. 'dump_shaders') and to disable (e.g. 'timestamp_quantization'). */
  toggles?: string[]
  disableToggles?: string[]
  /** Optional features to request when the adapter has them (e.g. 'timestamp-query' for profiling). */
  features?: GPUFeatureName[]
}

/** Limits every kernel here is designed to fit (llvmpipe and the H200 both offer at least these). */
export const REQUIRED_LIMITS = {
  maxStorageBuffersPerShaderStage: 16,
  maxComputeWorkgroupStorageSize: 32_768,
  maxComputeInvocationsPerWorkgroup: 256,
  maxComputeWorkgroupSizeX: 256,
}

export class NoAdapterError extends Error {}

/** Dawn (npm `webgpu`) is an optionalDependency; the specifier is a variable so the build does not need it. */
async function loadDawn(): Promise<{create: (o: string[]) => GPU; globals: object}> {
  const spec = 'webgpu'
  try {
    return (await import(spec)) as {create: (o: string[]) => GPU; globals: object}
  } catch (error) {
    throw new NoAdapterError(
      `the npm package "webgpu" (Dawn) cannot be loaded: ${String((error as Error)?.message ?? error).split('\n')[0]}`,
    )
  }
}

// Dawn instances are kept alive for the process: dropping the GPU object while a device lives crashes some builds.
const instances: GPU[] = []

export async function requestDevice(opts: DeviceOptions = {}): Promise<GPUDevice> {
  let backend = opts.backend ?? 'auto'
  if (backend === 'auto') backend = process.env.MHC_WEBGPU_BACKEND === 'software' ? 'software' : 'gpu'
  if (backend === 'software') process.env.EGL_PLATFORM ??= 'surfaceless' // before Dawn initialises EGL
  const dawn = await loadDawn()
  Object.assign(globalThis, dawn.globals) // GPUBufferUsage, GPUMapMode, GPUShaderStage …
  // Without robustness, also skip the zero-fill of workgroup memory: every kernel writes its tiles before reading them.
  const toggles = [
    ...(opts.robustness ? [] : ['disable_robustness', 'disable_workgroup_init']),
    ...(opts.toggles ?? []),
  ]
  const flags = [
    ...(backend === 'software' ? ['backend=opengles'] : []),
    ...(toggles.length > 0 ? [`enable-dawn-features=${toggles.join(',')}`] : []),
    ...(opts.disableToggles?.length ? [`disable-dawn-features=${opts.disableToggles.join(',')}`] : []),
  ]
  const gpu = dawn.create(flags)
  instances.push(gpu)
  const adapter =
    backend === 'software'
      ? await gpu.requestAdapter({featureLevel: 'compatibility'} as GPURequestAdapterOptions)
      : await gpu.requestAdapter({powerPreference: 'high-performance'})
  if (!adapter)
    throw new NoAdapterError(`Dawn found no ${backend === 'software' ? 'OpenGL ES (llvmpipe)' : 'GPU'} adapter`)
  const l = adapter.limits
  const want = [
    'maxStorageBuffersPerShaderStage',
    'maxComputeWorkgroupStorageSize',
    'maxStorageBufferBindingSize',
    'maxBufferSize',
    'maxComputeInvocationsPerWorkgroup',
    'maxComputeWorkgroupSizeX',
    'maxComputeWorkgroupSizeY',
    'maxComputeWorkgroupSizeZ',
    'maxComputeWorkgroupsPerDimension',
    'maxUniformBuffersPerShaderStage',
    'maxBindGroups',
  ] as const
  const requiredLimits: Record<string, number> = {}
  for (const k of want) if (typeof (l as any)[k] === 'number') requiredLimits[k] = (l as any)[k]
  for (const [k, v] of Object.entries(REQUIRED_LIMITS)) {
    if ((requiredLimits[k] ?? 0) < v)
      throw new NoAdapterError(`adapter limit ${k} = ${requiredLimits[k]} < ${v} needed`)
  }

  const requiredFeatures = (opts.features ?? []).filter((f) => adapter.features.has(f))
  const device = await adapter.requestDevice({requiredLimits, requiredFeatures})
  // A lost device (driver reset, another process taking the GPU, a hung kernel) fails every later read: remember why.
  device.lost.then((info) =>
    lost.set(device, `${info.reason}${info.message ? `: ${info.message.split('\n')[0]}` : ''}`),
  )
  device.addEventListener('uncapturederror', (e: Event) => {
    const msg = (e as GPUUncapturedErrorEvent).error?.message ?? String(e)
    uncaptured.push(msg)
    if (uncaptured.length <= 5) console.error(`WebGPU error: ${msg}`)
  })
  return device
}

/** Uncaptured device errors of this process (validation errors of a mis-built op show up here). */
export const uncaptured: string[] = []

const lost = new WeakMap<GPUDevice, string>()

/** Why a device was lost, or undefined while it lives. */
export const lostReason = (device: GPUDevice): string | undefined => lost.get(device)

/** A read that failed: on a lost device, say so (the run resumes from its last checkpoint); else the error itself. */
export function deviceError(device: GPUDevice, error: unknown): Error {
  const why = lost.get(device)
  return why ? new Error(`the GPU device was lost (${why}); resume from the last checkpoint`) : (error as Error)
}

// ---------------------------------------------------------------------------------------------------------------

export type Access = 'read' | 'rw' | 'uniform'

export interface KernelSpec {
  name: string
  code: string
  bindings: Access[] // @group(0) @binding(i), in order
}

export interface Kernel {
  name: string
  pipeline: GPUComputePipeline
  layout: GPUBindGroupLayout
  bindings: Access[]
}

export type BufferRange = GPUBuffer | {buffer: GPUBuffer; offset?: number; size?: number}

export interface Op {
  name: string
  pipeline: GPUComputePipeline
  bindGroup: GPUBindGroup
  grid: [number, number, number]
}

const STORAGE = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST

// Pipelines by WGSL source, per device: every engine on a device shares them (shader compilation is the slow part of
// creating an engine, on llvmpipe above all).
const pipelineCache = new WeakMap<GPUDevice, Map<string, Kernel>>()

export class Gpu {
  private kernels: Map<string, Kernel>
  readonly maxGrid: number
  readonly maxBinding: number
  private owned: GPUBuffer[] = []

  constructor(readonly device: GPUDevice) {
    let k = pipelineCache.get(device)
    if (!k) pipelineCache.set(device, (k = new Map()))
    this.kernels = k
    this.maxGrid = device.limits.maxComputeWorkgroupsPerDimension
    this.maxBinding = device.limits.maxStorageBufferBindingSize
  }

  /** A zero-filled storage buffer of at least `bytes` (rounded up to 256). */
  buffer(bytes: number, label = ''): GPUBuffer {
    const size = Math.max(256, Math.ceil(bytes / 256) * 256)
    const b = this.device.createBuffer({size, usage: STORAGE(), label})
    this.owned.push(b)
    return b
  }

  uniform(data: ArrayBuffer | ArrayBufferView, label = ''): GPUBuffer {
    const bytes = data instanceof ArrayBuffer ? data.byteLength : data.byteLength
    const b = this.device.createBuffer({
      size: Math.max(16, Math.ceil(bytes / 16) * 16),
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      label,
    })
    this.owned.push(b)
    this.device.queue.writeBuffer(b, 0, data as ArrayBuffer)
    return b
  }

  kernel(spec: KernelSpec): Kernel {
    const key = spec.code
    const hit = this.kernels.get(key)
    if (hit) return hit
    const layout = this.device.createBindGroupLayout({
      label: spec.name,
      entries: spec.bindings.map(
        (a, i) =>
          ({
            binding: i,
            visibility: GPUShaderStage.COMPUTE,
            buffer: {type: a === 'uniform' ? 'uniform' : a === 'read' ? 'read-only-storage' : 'storage'},
          }) as GPUBindGroupLayoutEntry,
      ),
    })
    const module = this.device.createShaderModule({code: spec.code, label: spec.name})
    const pipeline = this.device.createComputePipeline({
      label: spec.name,
      layout: this.device.createPipelineLayout({bindGroupLayouts: [layout]}),
      compute: {module, entryPoint: 'main'},
    })
    const k = {name: spec.name, pipeline, layout, bindings: spec.bindings}
    this.kernels.set(key, k)
    return k
  }

  get pipelineCount(): number {
    return this.kernels.size
  }

  op(k: Kernel | KernelSpec, bindings: BufferRange[], grid: [number, number?, number?]): Op {
    const kernel = 'pipeline' in k ? k : this.kernel(k)
    if (bindings.length !== kernel.bindings.length)
      throw new Error(`${kernel.name}: ${bindings.length} bindings for ${kernel.bindings.length}`)
    const g: [number, number, number] = [grid[0], grid[1] ?? 1, grid[2] ?? 1]
    for (const d of g) if (!(d >= 1 && d <= this.maxGrid)) throw new Error(`${kernel.name}: grid ${g} out of range`)
    const bindGroup = this.device.createBindGroup({
      label: kernel.name,
      layout: kernel.layout,
      entries: bindings.map((b, i) => {
        const r = 'buffer' in b ? b : {buffer: b as GPUBuffer}
        if ((r.size ?? r.buffer.size - (r.offset ?? 0)) > this.maxBinding && kernel.bindings[i] !== 'uniform') {
          throw new Error(
            `${kernel.name}: binding ${i} of ${r.size ?? r.buffer.size} bytes exceeds maxStorageBufferBindingSize`,
          )
        }

        return {binding: i, resource: {buffer: r.buffer, offset: r.offset ?? 0, size: r.size}}
      }),
    })
    return {name: kernel.name, pipeline: kernel.pipeline, bindGroup, grid: g}
  }

  encode(pass: GPUComputePassEncoder, ops: Op[]): void {
    let last: GPUComputePipeline | undefined
    for (const o of ops) {
      if (o.pipeline !== last) pass.setPipeline((last = o.pipeline))
      pass.setBindGroup(0, o.bindGroup)
      pass.dispatchWorkgroups(o.grid[0], o.grid[1], o.grid[2])
    }
  }

  /**
   * Encodes ops in one compute pass, then optional copies, and submits. With `firstChunk`, the first ops go in a
   * command buffer of their own, submitted before the rest is encoded, so the GPU starts while the host encodes.
   */
  submit(ops: Op[], after?: (enc: GPUCommandEncoder) => void, firstChunk = 0): void {
    const parts = firstChunk > 0 && firstChunk < ops.length ? [ops.slice(0, firstChunk), ops.slice(firstChunk)] : [ops]
    for (const [i, part] of parts.entries()) {
      const enc = this.device.createCommandEncoder()
      const pass = enc.beginComputePass()
      this.encode(pass, part)
      pass.end()
      if (i === parts.length - 1) after?.(enc)
      this.device.queue.submit([enc.finish()])
    }
  }

  /** Reads bytes back through a temporary staging buffer (not for the per-step path). */
  async read(src: GPUBuffer, offset = 0, bytes = src.size - offset): Promise<ArrayBuffer> {
    const size = Math.ceil(bytes / 4) * 4
    const staging = this.device.createBuffer({size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST})
    const enc = this.device.createCommandEncoder()
    enc.copyBufferToBuffer(src, offset, staging, 0, size)
    this.device.queue.submit([enc.finish()])
    try {
      await staging.mapAsync(GPUMapMode.READ)
      const out = staging.getMappedRange().slice(0, bytes)
      staging.unmap()
      return out
    } catch (error) {
      throw deviceError(this.device, error)
    } finally {
      staging.destroy()
    }
  }

  async readF32(src: GPUBuffer, offsetFloats = 0, count?: number): Promise<Float32Array> {
    return new Float32Array(await this.read(src, offsetFloats * 4, count === undefined ? undefined : count * 4))
  }

  write(dst: GPUBuffer, data: ArrayBufferView, offsetBytes = 0): void {
    this.device.queue.writeBuffer(dst, offsetBytes, data.buffer, data.byteOffset, data.byteLength)
  }

  /** A storage buffer holding `data`. */
  upload(data: Float32Array | Int32Array | Uint32Array, label = ''): GPUBuffer {
    const b = this.buffer(data.byteLength, label)
    this.write(b, data)
    return b
  }

  dispose(): void {
    for (const b of this.owned) b.destroy()
    this.owned = []
  }
}

/** A 1-D count of workgroups spread over x and y so no dimension exceeds the device limit. */
export function grid2(count: number, max = 65_535): [number, number] {
  if (count <= max) return [Math.max(1, count), 1]
  const y = Math.ceil(count / max)
  return [Math.ceil(count / y), y]
}
