// The WebGPU engine behind the Engine seam: WebGpuTrainer (./trainer.ts: the model's own WGSL kernels, every buffer,
// pipeline and bind group made once, one command buffer per step) on a real GPU adapter. Host data in and out, like
// every engine, so its checkpoints load in the tfjs engine and the other way round.
import type {ModelConfig} from '../../config.js'
import type {Batch} from '../../io/data.js'
import type {Engine, EngineOptions, EngineState, LayerMapsData, StepHyper, StepResult} from '../engine.js'

import {InputError, type NonFiniteOrigin} from '../../errors.js'
import {type HostTensors, zerosLike} from '../../params.js'
import {probeWebgpu} from '../webgpu-probe.js'
import {NoAdapterError, requestDevice} from './gpu.js'
import {WebGpuTrainer} from './trainer.js'

/**
 * The variable that lets an explicit `--backend webgpu` run on a software adapter (Mesa llvmpipe): for tests of the
 * whole command path without a GPU. `--backend auto` ignores it: auto never trains on a software adapter.
 */
export const SOFTWARE_ENV = 'MHC_WEBGPU_SOFTWARE'

/**
 * A device on a real GPU: the adapter is asked for in a child process first (webgpu-probe.ts: no native warning
 * reaches the terminal, a software adapter is never taken), then opened here. With `allowSoftware` (an explicit
 * --backend webgpu) and MHC_WEBGPU_SOFTWARE=1 the device is Dawn's OpenGL ES backend on llvmpipe instead: slow, exact,
 * and how the command path is tested without a GPU.
 */
export async function openDevice(opts: {allowSoftware?: boolean} = {}): Promise<GPUDevice> {
  const software = process.env[SOFTWARE_ENV]
  if (opts.allowSoftware && software && !/^(0|false|no)$/i.test(software)) return requestDevice({backend: 'software'})
  const probe = await probeWebgpu()
  if (!probe.ok) throw new Error(probe.reason)
  process.env.VK_LOADER_DRIVERS_DISABLE ??= '*lvp*,*swiftshader*' // their native warnings stay out of this process
  try {
    return await requestDevice({backend: 'gpu'})
  } catch (error) {
    throw new Error(
      error instanceof NoAdapterError ? error.message : `Dawn could not open the GPU: ${(error as Error).message}`,
    )
  }
}

/** The streams the kernels are compiled for (per-thread arrays of n and n² entries). */
export const MAX_EXPANSION = 8

/**
 * Why this engine cannot run a model, before any device is opened: `--backend auto` then moves on to the tfjs
 * engine; an explicit `--backend webgpu` reports it as bad input.
 */
export function unsupported(needs: Partial<EngineOptions>): string | undefined {
  if (needs.logits)
    return 'the webgpu engine does not return logits: sampling needs a tfjs backend (e.g. --backend wasm)'
  if ((needs.recomputeBlock ?? 0) > 0)
    return 'the webgpu engine keeps every activation: --recompute-block needs a tfjs backend (e.g. --backend wasm)'
  const m = needs.model
  if (m && m.arch !== 'baseline' && m.expansion > MAX_EXPANSION)
    return `the webgpu engine supports expansion n ≤ ${MAX_EXPANSION} (got ${m.expansion}); use a tfjs backend (e.g. --backend wasm)`
  return undefined
}

export class WebGpuEngine implements Engine {
  readonly name = 'webgpu'
  readonly backend = 'webgpu'

  private constructor(
    readonly model: ModelConfig,
    private readonly trainer: WebGpuTrainer,
  ) {}

  /** Builds the model for batches of `options.batch` sequences (16 when not given: evaluation and maps chunk by it). */
  static async create(device: GPUDevice, options: EngineOptions): Promise<WebGpuEngine> {
    const why = unsupported(options)
    if (why) throw new InputError(why)

    try {
      return new WebGpuEngine(options.model, await WebGpuTrainer.create(device, options.model, options.batch ?? 16))
    } catch (error) {
      const {message} = error as Error
      // The device said no (out of memory, a binding over its limit): the model is too large for it, which the user can fix.
      if (/out.of.memory|exceeds|limit/i.test(message))
        throw new InputError(
          `this model does not fit on the GPU: ${message.split('\n')[0]} (smaller --batch, --layers or --d-model)`,
        )
      throw error
    }
  }

  load(state: {m?: HostTensors; params: HostTensors; v?: HostTensors}): void {
    this.trainer.writeParams(state.params)
    this.trainer.writeOptimizer({m: state.m ?? zerosLike(this.model), v: state.v ?? zerosLike(this.model)})
  }

  async trainStep(batch: Batch, hp: StepHyper): Promise<StepResult> {
    const r = await this.trainer.trainStep(batch.x, batch.y, {
      lr: hp.lr,
      beta1: hp.beta1,
      beta2: hp.beta2,
      eps: hp.adamEps,
      weightDecay: hp.weightDecay,
      gradClip: hp.gradClip,
      t: hp.t,
    })
    if (!r.nonFinite) return {loss: r.loss, gradNorm: r.gradNorm, clipped: r.clipped}
    // The kernels keep no per-layer probes: say which pass and how to find the layer.
    const pass = Number.isFinite(r.loss) ? 'backward' : 'forward'
    const origin: NonFiniteOrigin = {
      pass,
      layer: null,
      where: `the ${pass} pass (the webgpu engine does not locate the layer; resume the last checkpoint with --backend wasm to find it)`,
    }
    return {loss: r.loss, gradNorm: r.gradNorm, clipped: false, nonFinite: origin}
  }

  loss(batch: Batch): Promise<number> {
    return this.trainer.evaluate(batch.x, batch.y)
  }

  async maps(batch: Batch): Promise<LayerMapsData> {
    return {...(await this.trainer.collectMaps(batch.x)), tokens: batch.size * batch.seqLen}
  }

  async readState(): Promise<EngineState> {
    return {params: await this.trainer.readParams(), ...(await this.trainer.readOptimizer())}
  }

  /** Dispatches per training step (the bench reports them). */
  get dispatches(): number {
    return this.trainer.dispatches.train
  }

  dispose(): void {
    this.trainer.dispose()
  }
}
