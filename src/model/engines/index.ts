// Opening engines: the backend choice is resolved (flag, MHC_BACKEND, config file, auto) and the engine's code is
// loaded only now (TensorFlow.js is heavy: commands that need no engine never import it). The report says which
// backend runs and why the others were skipped; `create` builds one model on it (a command may open several).
import type {BackendReport, ResolvedChoice} from './backends.js'
import type {Engine, EngineOptions} from './engine.js'

export type {Engine, EngineOptions, EngineState, LayerMapsData, StepHyper, StepResult} from './engine.js'

export interface Engines {
  report: BackendReport
  create(options: EngineOptions): Engine
}

export async function openEngines(choice: ResolvedChoice): Promise<Engines> {
  const {selectBackend} = await import('./tfjs/backend.js')
  const report = await selectBackend(choice)
  const {TfjsEngine} = await import('./tfjs/engine.js')
  return {report, create: (options) => new TfjsEngine(options)}
}
