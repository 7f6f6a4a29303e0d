// Opening engines: the backend choice is resolved (flag, MHC_BACKEND, config file, auto) and the candidates are tried
// in order: the WebGPU engine on a real GPU first, then the tfjs engine's backends. Each engine's code is loaded only
// now (TensorFlow.js and Dawn are heavy: commands that need no engine never import them). The report says which
// backend runs and why the others were skipped; `create` builds one model on it (a command may build several).
import type {Engine, EngineOptions} from './engine.js'

import {InputError} from '../errors.js'
import {
  AUTO_ORDER,
  type BackendAttempt,
  type BackendName,
  type BackendReport,
  noUsableBackend,
  oneLine,
  type ResolvedChoice,
} from './backends.js'

export type {Engine, EngineOptions, EngineState, LayerMapsData, StepHyper, StepResult} from './engine.js'

export interface Engines {
  report: BackendReport
  create(options: EngineOptions): Promise<Engine>
}

/** Starts one candidate, or throws why it cannot run here. */
async function start(
  name: BackendName,
  auto: boolean,
  needs: Partial<EngineOptions>,
): Promise<(options: EngineOptions) => Promise<Engine>> {
  if (name === 'webgpu') {
    const {openDevice, unsupported, WebGpuEngine} = await import('./webgpu/engine.js')
    const why = unsupported(needs) // before the device: auto moves on, an explicit choice is bad input
    if (why) throw new InputError(why)
    const device = await openDevice({allowSoftware: !auto})
    return (options) => WebGpuEngine.create(device, options)
  }

  const {activate} = await import('./tfjs/backend.js')
  await activate(name)
  const {TfjsEngine} = await import('./tfjs/engine.js')
  return async (options) => new TfjsEngine(options)
}

/**
 * Opens the first usable candidate. `needs` (the model and options the command will create, when it knows them)
 * lets an engine that cannot run them be skipped under auto, before it opens a device.
 */
export async function openEngines(choice: ResolvedChoice, needs: Partial<EngineOptions> = {}): Promise<Engines> {
  const order: readonly BackendName[] = choice.choice === 'auto' ? AUTO_ORDER : [choice.choice]
  const attempts: BackendAttempt[] = []
  for (const name of order) {
    try {
      const create = await start(name, choice.choice === 'auto', needs)
      attempts.push({backend: name, ok: true})
      return {report: {backend: name, requested: choice.choice, source: choice.source, attempts}, create}
    } catch (error) {
      if (error instanceof InputError && choice.choice !== 'auto') throw error // the named backend cannot run this
      attempts.push({backend: name, ok: false, reason: oneLine(error)})
    }
  }

  throw noUsableBackend(choice, attempts)
}
