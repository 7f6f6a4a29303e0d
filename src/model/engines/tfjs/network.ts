// The network in TensorFlow.js: a decoder-only, pre-norm byte-level Transformer whose sublayers are wrapped by one of
// the three residual connections (src/model/connections; their maths in ./connections.ts):
//   baseline  x_{l+1} = x_l + F(x_l)
//   hc, mhc   x_{l+1} = H_res x_l + H_post^T F(H_pre x_l)
// Attention and MLP are separate "layers" (the paper's Fig. 3 unrolls each block into both), so a model with
// `layers` Transformer blocks has 2·layers connections, indexed l = 0 … 2·layers−1.
// Tensors: tokens are flattened to N = batch·seqLen rows so every weight matmul is 2-D; the hyper-connection
// residual stream x_l is [N, n, C] with n = expansion streams.
import {ModelConfig, numConnections} from '../../config.js'
import {Connection, connectionOf} from '../../connections/index.js'
import {blockParamNames, initParamData, paramSpecs} from '../../params.js'
import {tf} from './backend.js'
import {applyConnection, connectionMaps, LayerMaps, mm, Params, rmsNorm} from './connections.js'

export type {LayerMaps, Params} from './connections.js'
type T = tf.Tensor

const gelu = (x: T) => tf.mul(x, tf.sigmoid(tf.mul(x, 1.702))) // smooth (finite-difference friendly) GELU approximation

function attention(p: Params, b: number, cfg: ModelConfig, h: T, batch: number, mask: T): T {
  const {seqLen: Tn, dModel: C, heads: H} = cfg
  const D = C / H
  const x = rmsNorm(h, cfg.normEps, p[`blocks.${b}.attn.norm.weight`])
  // Split q, k, v first: tfjs-wasm's 5-D transpose is ~20 ms here, three 4-D ones are a few ms.
  const heads = (t: T) => tf.reshape(tf.transpose(tf.reshape(t, [batch, Tn, H, D]), [0, 2, 1, 3]), [batch * H, Tn, D])
  const [q, k, v] = tf.split(mm(x, p[`blocks.${b}.attn.qkv.weight`]), 3, 1).map(heads)
  const scores = tf.add(tf.mul(mm(q, tf.transpose(k, [0, 2, 1])), 1 / Math.sqrt(D)), mask)
  const y = mm(tf.softmax(scores), v) // [B·H, T, D]
  const merged = tf.reshape(tf.transpose(tf.reshape(y, [batch, H, Tn, D]), [0, 2, 1, 3]), [batch * Tn, C])
  return mm(merged, p[`blocks.${b}.attn.proj.weight`])
}

function mlp(p: Params, b: number, cfg: ModelConfig, h: T): T {
  const x = rmsNorm(h, cfg.normEps, p[`blocks.${b}.mlp.norm.weight`])
  return mm(gelu(mm(x, p[`blocks.${b}.mlp.fc.weight`])), p[`blocks.${b}.mlp.proj.weight`])
}

// ---------------------------------------------------------------------------------------------------------------
// Forward pass and loss

export interface ForwardOptions {
  captureMaps?: boolean
  /** Recompute block size L_r (paper §4.3.2): keep only each block's input, recompute its insides in backward. 0 = off. */
  recomputeBlock?: number
  /** Diagnostics: called with the embedding (l = -1) and each layer's output, one layer at a time (no recomputation). */
  onLayer?: (l: number, out: T) => void
}
export interface ForwardResult {
  logits: T
  maps: LayerMaps[]
}

const masks = new Map<string, T>() // per backend too: a process may switch backends (bench/gpu-check.ts)
function causalMask(seqLen: number): T {
  const key = `${tf.getBackend()}:${seqLen}`
  let m = masks.get(key)
  if (!m) {
    const data = new Float32Array(seqLen * seqLen)
    for (let i = 0; i < seqLen; i++) for (let j = i + 1; j < seqLen; j++) data[i * seqLen + j] = -1e9
    m = tf.keep(tf.tensor2d(data, [seqLen, seqLen]))
    masks.set(key, m)
  }

  return m
}

// tfjs-wasm 4.22's OneHot returns all zeros when asked for float32 output, so build int32 and cast.
const oneHot = (idx: T, depth: number) => tf.cast(tf.oneHot(idx, depth), 'float32')

/** Sublayers [from, to) on the residual state: x [N, C] for the baseline, the n streams [N, n, C] otherwise. */
function runLayers(
  p: Params,
  cfg: ModelConfig,
  conn: Connection,
  x: T,
  from: number,
  to: number,
  batch: number,
  maps?: LayerMaps[],
): T {
  const mask = causalMask(cfg.seqLen)
  for (let l = from; l < to; l++) {
    const F = (h: T) => (l % 2 === 0 ? attention(p, l >> 1, cfg, h, batch, mask) : mlp(p, l >> 1, cfg, h))
    if (conn.coefficients === 'none') {
      x = tf.add(x, F(x))
      continue
    }

    const m = connectionMaps(conn, p, l, cfg, x)
    if (maps) maps.push({hPre: tf.keep(m.hPre), hPost: tf.keep(m.hPost), hRes: tf.keep(m.hRes)})
    x = applyConnection(m, x, F)
  }

  return x
}

/**
 * Sublayers [from, to) as one recomputed block: the forward pass keeps only the block input x_{l0} (n·C per token)
 * and the weights; the backward pass runs the block again and differentiates that. The weights are explicit
 * inputs because customGrad only returns gradients for its arguments.
 */
function recomputedBlock(
  p: Params,
  cfg: ModelConfig,
  conn: Connection,
  x: T,
  from: number,
  to: number,
  batch: number,
): T {
  const names = blockParamNames(cfg, from, to)
  const run = (...xs: T[]) =>
    runLayers({...p, ...Object.fromEntries(names.map((k, i) => [k, xs[i + 1]]))}, cfg, conn, xs[0], from, to, batch)
  const block = tf.customGrad(((...args: unknown[]) => {
    const save = args.pop() as tf.GradSaveFunc
    const inputs = args as T[]
    save(inputs)
    return {
      value: run(...inputs),
      gradFunc(dy: T, saved: T[]) {
        // The inner tf.grads clears the engine's active tape when it finishes, which would end the outer backward
        // pass; put the outer tape back (tfjs 4.22 engine internals, hence the pinned version).
        const {state} = tf.engine() as any
        const outer = state.activeTape
        try {
          return tf.grads((...xs: T[]) => run(...xs))(saved, dy)
        } finally {
          state.activeTape = outer
        }
      },
    }
  }) as any) as (...xs: T[]) => T
  return block(x, ...names.map((k) => p[k]))
}

/** tokens: int32 [B, T]. Returns logits [B·T, V] and, when asked, every connection's H maps (kept; caller disposes). */
export function forward(p: Params, cfg: ModelConfig, tokens: tf.Tensor2D, opts: ForwardOptions = {}): ForwardResult {
  const [B, Tn] = tokens.shape
  if (Tn !== cfg.seqLen) throw new Error(`sequence length ${Tn} does not match the model's ${cfg.seqLen}`)
  const N = B * Tn
  const L = numConnections(cfg)
  const conn = connectionOf(cfg)
  // Embedding as a one-hot matmul: a plain 2-D matmul, fast on wasm in both directions.
  const emb = mm(oneHot(tf.reshape(tokens, [N]), cfg.vocabSize), p['tok_emb.weight'])
  const x0 = tf.reshape(tf.add(tf.reshape(emb, [B, Tn, cfg.dModel]), p['pos_emb.weight']), [N, cfg.dModel])
  // hc/mhc: the embedding copied to n streams (concat: wasm's Tile is slow).
  const n = conn.streams(cfg)
  const streams = conn.coefficients !== 'none' // the residual keeps x [N, C]; hyper-connections x [N, n, C], n ≥ 1
  let x = streams ? tf.concat(Array.from({length: n}).fill(tf.expandDims(x0, 1)) as T[], 1) : x0
  const maps: LayerMaps[] = []
  const Lr = opts.recomputeBlock ?? 0
  if (Lr > 0 && !opts.captureMaps)
    for (let s = 0; s < L; s += Lr) x = recomputedBlock(p, cfg, conn, x, s, Math.min(L, s + Lr), B)
  else if (opts.onLayer) {
    opts.onLayer(-1, x)
    for (let l = 0; l < L; l++) opts.onLayer(l, (x = runLayers(p, cfg, conn, x, l, l + 1, B)))
  } else x = runLayers(p, cfg, conn, x, 0, L, B, opts.captureMaps ? maps : undefined)
  if (streams) x = tf.sum(x, 1) // streams summed before the final norm
  const logits = mm(rmsNorm(x, cfg.normEps, p['norm.weight']), p['lm_head.weight'])
  return {logits, maps}
}

/** Mean next-byte cross-entropy in nats. */
export function crossEntropy(logits: T, targets: tf.Tensor2D, vocabSize: number): tf.Scalar {
  const onehot = oneHot(tf.reshape(targets, [-1]), vocabSize)
  return tf.neg(tf.mean(tf.sum(tf.mul(onehot, tf.logSoftmax(logits)), -1))) as tf.Scalar
}

export function loss(p: Params, cfg: ModelConfig, x: tf.Tensor2D, y: tf.Tensor2D, recomputeBlock = 0): tf.Scalar {
  return crossEntropy(forward(p, cfg, x, {recomputeBlock}).logits, y, cfg.vocabSize)
}

/** Gradients of the mean loss w.r.t. every parameter, keyed by parameter name. */
export function gradients(
  params: Record<string, tf.Variable>,
  cfg: ModelConfig,
  x: tf.Tensor2D,
  y: tf.Tensor2D,
  recomputeBlock = 0,
): {loss: tf.Scalar; grads: Record<string, tf.Tensor>} {
  const names = Object.keys(params)
  const vars = names.map((k) => params[k])
  const {value, grads} = tf.variableGrads(() => loss(params, cfg, x, y, recomputeBlock), vars)
  return {loss: value, grads: Object.fromEntries(names.map((k, i) => [k, grads[vars[i].name]]))}
}

/** Variables from host data (unnamed: tfjs variable names are global, and two models must coexist). */
export function toVariables(
  data: Record<string, Float32Array>,
  shapes: Record<string, number[]>,
  trainable: boolean,
): Record<string, tf.Variable> {
  return Object.fromEntries(
    Object.entries(data).map(([k, v]) => [
      k,
      tf.tidy(() => tf.variable(tf.tensor(v, shapes[k], 'float32'), trainable)),
    ]),
  )
}

/** The seeded initial weights as trainable variables (params.ts initParamData on this backend). */
export function initParams(cfg: ModelConfig, seed: number): Record<string, tf.Variable> {
  return toVariables(initParamData(cfg, seed), Object.fromEntries(paramSpecs(cfg).map((s) => [s.name, s.shape])), true)
}
