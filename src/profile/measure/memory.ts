// Measured memory against L_r: real forward+backward passes of a small model through an engine that can report its
// peak (the tfjs engine: tf.profile peakBytes), and the Eq. 20-form model of this implementation to compare against.
import type {Engines} from '../../model/engines/index.js'

import {ModelConfig, numConnections} from '../../model/config.js'
import {connectionOf} from '../../model/connections/index.js'
import {initParamData, parameterCount} from '../../model/params.js'
import {Rng} from '../../model/rng.js'

export interface MeasuredPoint {
  recomputeBlock: number
  peakBytes: number
}

/** Peak bytes above the weights of one gradient computation, for every L_r in `blocks` (random tokens, fixed seed). */
export async function measurePeaks(
  engines: Engines,
  cfg: ModelConfig,
  batch: number,
  blocks: number[],
  seed = 1,
  onPoint?: (p: MeasuredPoint, done: number) => void,
): Promise<MeasuredPoint[]> {
  const engine = await engines.create({model: cfg})
  if (!engine.peakMemory) throw new Error(`the ${engine.name} engine cannot report its peak memory`)
  engine.load({params: initParamData(cfg, seed)})
  const rng = new Rng(seed + 1)
  const tokens = () => Int32Array.from({length: batch * cfg.seqLen}, () => rng.int(cfg.vocabSize))
  const x = tokens()
  const y = tokens()
  const points: MeasuredPoint[] = []
  try {
    for (const recomputeBlock of blocks) {
      const peakBytes = await engine.peakMemory({x, y, size: batch, seqLen: cfg.seqLen}, recomputeBlock)
      points.push({recomputeBlock, peakBytes})
      onPoint?.(points.at(-1)!, points.length)
    }
  } finally {
    engine.dispose()
  }

  return points
}

/**
 * This implementation in the form of Eq. 20: peak(L_r) = fixed + s·⌈L/L_r⌉ + t·L_r, with
 *   s     = bytes kept per recompute block: its input x_{l0}, n·C float32 per token, twice: tfjs keeps the tensor
 *           saved for the backward pass and the customGrad output as separate buffers (bytes alive after the
 *           forward pass confirm it; see the tests),
 *   t     = bytes one layer holds while its block is recomputed (forward and backward intermediates, F included:
 *           tfjs can only free what runs inside the recomputed block, so F is recomputed too),
 *   fixed = embedding and head activations plus gradient buffers (4 bytes per parameter).
 * t and the fixed part are calibrated on a different, one-block model of the same width and batch (L_r = 1 and 2);
 * the curve of the larger model is then a prediction, which is what --measure tests.
 */
export interface ImplementationModel {
  storedPerBlock: number
  perLayer: number
  fixed: number
  fixedParams: number
  gradBytesPerParam: number
}

export const storedBlockBytes = (cfg: ModelConfig, batch: number) =>
  2 * connectionOf(cfg).streams(cfg) * cfg.dModel * cfg.seqLen * batch * 4

export async function calibrate(engines: Engines, cfg: ModelConfig, batch: number): Promise<ImplementationModel> {
  const small = {...cfg, layers: 1}
  const [p1, p2] = (await measurePeaks(engines, small, batch, [1, 2])).map((p) => p.peakBytes)
  const s = storedBlockBytes(cfg, batch)
  // p1 = f + 2s + t (two blocks of one layer), p2 = f + s + 2t (one block of two layers)
  const t = p2 - p1 + s
  return {
    storedPerBlock: s,
    perLayer: t,
    fixed: p1 - 2 * s - t,
    fixedParams: parameterCount(small),
    gradBytesPerParam: 4,
  }
}

export function predictPeak(m: ImplementationModel, cfg: ModelConfig, Lr: number): number {
  const L = numConnections(cfg)
  return (
    m.fixed +
    m.gradBytesPerParam * (parameterCount(cfg) - m.fixedParams) +
    m.storedPerBlock * Math.ceil(L / Lr) +
    m.perLayer * Math.min(Lr, L)
  )
}
