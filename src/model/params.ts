// Every parameter of the model: names (PyTorch style), shapes ([in, out] for matrices: y = x·W; `linear` marks them), initial values and
// whether AdamW decays them. Host data only, so checkpoints, engines and the memory model share one list.
import {ModelConfig, modelConfigProblem, numConnections} from './config.js'
import {constant, normal} from './connections/connection.js'
import {connectionOf, ParamSpec} from './connections/index.js'
import {Rng} from './rng.js'

export type {ParamSpec} from './connections/index.js'
/** Named host tensors: weights, gradients or AdamW moments, keyed by parameter name. */
export type HostTensors = Record<string, Float32Array>

/** The Transformer's parameters, then every connection's, then the output head: the order checkpoints list them. */
export function paramSpecs(cfg: ModelConfig): ParamSpec[] {
  const {vocabSize: V, seqLen, dModel: C, layers: L, mlpRatio} = cfg
  const std = 0.02
  const projStd = std / Math.sqrt(2 * L) // GPT-2: scale the residual-branch output projections by depth
  const specs: ParamSpec[] = [
    {name: 'tok_emb.weight', shape: [V, C], init: normal(std), decay: true},
    {name: 'pos_emb.weight', shape: [seqLen, C], init: normal(std), decay: true},
  ]
  for (let b = 0; b < L; b++) {
    const p = `blocks.${b}`
    specs.push(
      {name: `${p}.attn.norm.weight`, shape: [C], init: constant(1), decay: false},
      {name: `${p}.attn.qkv.weight`, shape: [C, 3 * C], init: normal(std), decay: true, linear: true},
      {name: `${p}.attn.proj.weight`, shape: [C, C], init: normal(projStd), decay: true, linear: true},
      {name: `${p}.mlp.norm.weight`, shape: [C], init: constant(1), decay: false},
      {name: `${p}.mlp.fc.weight`, shape: [C, mlpRatio * C], init: normal(std), decay: true, linear: true},
      {name: `${p}.mlp.proj.weight`, shape: [mlpRatio * C, C], init: normal(projStd), decay: true, linear: true},
    )
  }

  const conn = connectionOf(cfg)
  for (let l = 0; l < numConnections(cfg); l++) specs.push(...conn.paramSpecs(cfg, l))
  specs.push(
    {name: 'norm.weight', shape: [C], init: constant(1), decay: false},
    {name: 'lm_head.weight', shape: [C, V], init: normal(std), decay: true, linear: true},
  )
  return specs
}

export const sizeOf = (shape: number[]) => shape.reduce((a, b) => a * b, 1)

/** Initial weights, drawn from one seeded generator in spec order (the same seed gives the same model anywhere). */
export function initParamData(cfg: ModelConfig, seed: number): HostTensors {
  const rng = new Rng(seed)
  const out: HostTensors = {}
  for (const s of paramSpecs(cfg)) {
    const data = new Float32Array(sizeOf(s.shape))
    for (let i = 0; i < data.length; i++) data[i] = s.init(rng, i)
    out[s.name] = data
  }

  return out
}

/** Zeros shaped like every parameter (fresh AdamW moments). */
export const zerosLike = (cfg: ModelConfig): HostTensors =>
  Object.fromEntries(paramSpecs(cfg).map((s) => [s.name, new Float32Array(sizeOf(s.shape))]))

export const parameterCount = (cfg: ModelConfig): number => paramSpecs(cfg).reduce((a, s) => a + sizeOf(s.shape), 0)

export const decayNames = (cfg: ModelConfig): Set<string> =>
  new Set(
    paramSpecs(cfg)
      .filter((s) => s.decay)
      .map((s) => s.name),
  )

/** Why a model config cannot be built: shape rules (config.ts), then the connection's own. */
export const modelProblem = (m: any): string | undefined => modelConfigProblem(m) ?? connectionOf(m).problem(m)

/** The layer a parameter belongs to: -1 embedding, l for a sublayer or connection, Infinity for the final norm and head. */
export function layerOfParam(name: string): number {
  const m = /^(?:blocks\.(\d+)\.(attn|mlp)|conn\.(\d+))\./.exec(name)
  if (m) return m[3] === undefined ? 2 * Number(m[1]) + (m[2] === 'mlp' ? 1 : 0) : Number(m[3])
  return /^(tok|pos)_emb\./.test(name) ? -1 : Infinity
}

/** The parameters that sublayers [from, to) read (attention/MLP weights and connection l's φ/θ, α, b). */
export function blockParamNames(cfg: ModelConfig, from: number, to: number): string[] {
  return paramSpecs(cfg)
    .map((s) => s.name)
    .filter((name) => {
      const l = layerOfParam(name)
      return l >= from && l < to
    })
}

/** A layer index as people read it: l = 2b (block b attention), 2b + 1 (block b MLP). */
export const layerName = (l: number) =>
  l < 0
    ? 'the embedding'
    : Number.isFinite(l)
      ? `layer ${l} (block ${l >> 1} ${l % 2 ? 'MLP' : 'attention'})`
      : 'the output head (final norm, lm_head)'
