// A model's input-dependent connection maps (H_pre, H_post, H_res of every layer) on a sample of text, through any
// engine: evenly spaced windows, whole sequences, `batch` at a time, concatenated per layer.
import type {Engine, LayerMapsData} from '../../model/engines/engine.js'
import type {Engines} from '../../model/engines/index.js'
import type {CheckpointData} from '../../model/io/checkpoint.js'

import {numConnections} from '../../model/config.js'
import {connectionOf} from '../../model/connections/index.js'
import {evalWindows, windowsToBatch} from '../../model/io/data.js'

export type {LayerMapsData} from '../../model/engines/engine.js'

/** The windows (offsets into `text`) of about `tokens` bytes in whole sequences that the maps are computed on. */
export const mapWindows = (text: Uint8Array, tokens: number, seqLen: number): number[] =>
  evalWindows(text, Math.max(1, Math.round(tokens / seqLen)), seqLen)

/** About `tokens` bytes of `text` in whole sequences; every layer's maps for every token. Not for the plain residual. */
export async function collectMaps(
  engine: Engine,
  text: Uint8Array,
  tokens: number,
  batch = 16,
): Promise<LayerMapsData & {sequences: number}> {
  const cfg = engine.model
  if (connectionOf(cfg).coefficients === 'none') throw new Error('a residual model has no hyper-connection maps')
  const offsets = mapWindows(text, tokens, cfg.seqLen)
  const L = numConnections(cfg)
  const parts: LayerMapsData[] = []
  for (let i = 0; i < offsets.length; i += batch)
    parts.push(await engine.maps(windowsToBatch(text, offsets.slice(i, i + batch), cfg.seqLen)))
  const concat = (k: 'hRes' | 'hPre' | 'hPost', l: number) => {
    const out = new Float32Array(parts.reduce((s, p) => s + p[k][l].length, 0))
    let off = 0
    for (const p of parts) {
      out.set(p[k][l], off)
      off += p[k][l].length
    }

    return out
  }

  const per = (k: 'hRes' | 'hPre' | 'hPost') => Array.from({length: L}, (_, l) => concat(k, l))
  return {
    hRes: per('hRes'),
    hPre: per('hPre'),
    hPost: per('hPost'),
    tokens: offsets.length * cfg.seqLen,
    sequences: offsets.length,
  }
}

/** The maps of a verified checkpoint: its weights go onto an engine only for as long as this takes. */
export async function checkpointMaps(
  engines: Engines,
  ck: CheckpointData,
  text: Uint8Array,
  tokens: number,
): Promise<LayerMapsData & {sequences: number}> {
  const engine = await engines.create({model: ck.manifest.model})
  try {
    engine.load({params: ck.params})
    return await collectMaps(engine, text, tokens)
  } finally {
    engine.dispose()
  }
}
