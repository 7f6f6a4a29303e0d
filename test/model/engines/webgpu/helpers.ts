// Shared by the WebGPU engine tests: one software (llvmpipe) device per test file, or a skip reason.
import {Gpu, NoAdapterError, requestDevice, uncaptured} from '../../../../src/model/engines/webgpu/gpu.js'
import {Rng} from '../../../../src/model/rng.js'

let cached: Promise<{gpu?: Gpu; skip?: string}> | undefined

/** The device for this file's tests, or why there is none (the tests then skip with that line). */
export function device(): Promise<{gpu?: Gpu; skip?: string}> {
  cached ??= (async () => {
    // Only a missing adapter (no Dawn, no Mesa EGL) is a reason to skip; any other failure to open the device (a
    // limit we ask for and no longer get, a Dawn regression) fails every test that needs it.
    const backend = process.env.MHC_WEBGPU_BACKEND === 'gpu' ? 'gpu' : 'software'
    try {
      return {gpu: new Gpu(await requestDevice({backend}))}
    } catch (error) {
      if (!(error instanceof NoAdapterError) || /adapter limit/.test(error.message)) throw error
      return {skip: `no WebGPU adapter: ${error.message.split('\n')[0]}`}
    }
  })()
  return cached
}

export function randn(rng: Rng, n: number, scale = 1): Float32Array {
  const a = new Float32Array(n)
  for (let i = 0; i < n; i++) a[i] = scale * rng.normal()
  return a
}

/** max |a − b| / max(max |b|, floor): one tolerance for a whole tensor. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>, floor = 1e-30): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`)
  let d = 0
  let m = floor
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]))
    m = Math.max(m, Math.abs(b[i]))
  }

  return Number.isNaN(d) ? Infinity : d / m
}

/** Fails if the device reported any uncaptured (validation, out-of-memory, internal) error in this process. */
export function noDeviceErrors(): void {
  if (uncaptured.length > 0) throw new Error(`${uncaptured.length} WebGPU errors, the first: ${uncaptured[0]}`)
}
