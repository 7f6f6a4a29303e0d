// Library-level test scaffolding: runs on the tfjs engine (wasm), the reference every other engine is held to.
import type {ModelConfig} from '../../src/model/config.js'

import {selectBackend} from '../../src/model/engines/tfjs/backend.js'
import {TfjsEngine} from '../../src/model/engines/tfjs/engine.js'
import {RunOptions, RunSummary, runTraining} from '../../src/model/train/loop.js'

export const useWasm = () => selectBackend('wasm')

/** A tfjs engine for `model` (the backend must be selected first: useWasm). */
export const tfjsEngine = (model: ModelConfig, recomputeBlock = 0) => new TfjsEngine({model, recomputeBlock})

/** runTraining on a fresh tfjs engine that is disposed afterwards. */
export async function train(o: Omit<RunOptions, 'engine'>): Promise<RunSummary> {
  const engine = tfjsEngine(o.model, o.train.recomputeBlock ?? 0)
  try {
    return await runTraining({...o, engine})
  } finally {
    engine.dispose()
  }
}
