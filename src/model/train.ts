// The training loop: sample a batch, take gradients, clip (optionally), AdamW, log, evaluate, checkpoint.
// No framework optimiser: AdamW is a dozen lines here so its state can be saved and restored exactly.
import {appendFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync} from 'node:fs'
import {basename, dirname, join, resolve} from 'node:path'
import {writeFileAtomic} from './atomic.js'
import {tf} from './backend.js'
import {LoadedCheckpoint, byStep, isCheckpointName, stepOfCheckpoint, loadCheckpoint, readState, removeStaleTemps, rewindRun, saveCheckpoint, stateFromCheckpoint} from './checkpoint.js'
import {Corpus, evalWindows, sampleBatch, windowsToBatch} from './data.js'
import {ModelConfig, Params, crossEntropy, forward, initParams, layerOfParam, loss, paramSpecs} from './model.js'
import {Rng} from './rng.js'
import {LOCK_FILE, acquireRunLock} from './run-lock.js'

export interface TrainConfig {
  steps: number // total optimiser steps of the run (a resumed run continues to this step)
  scheduleSteps?: number // horizon of the cosine decay; fixed at the first run's --steps so that resuming further does not re-warm the lr
  batch: number
  lr: number // peak learning rate
  minLrRatio: number // cosine decays to lr·minLrRatio
  warmup: number // linear warm-up steps
  weightDecay: number
  beta1: number
  beta2: number
  adamEps: number
  gradClip: number // max global grad norm; 0 turns clipping off (so instability stays observable)
  evalEvery: number
  evalWindows: number // validation windows of seqLen bytes per evaluation
  saveEvery: number // 0: only at the end
  seed: number
  recomputeBlock?: number // L_r: recompute blocks of this many layers in the backward pass (paper §4.3.2); 0/absent = off
  onNonFinite?: NonFinitePolicy // a NaN/Inf loss or gradient: stop (default), skip the update, or roll back
  rollbackLrFactor?: number // each rollback multiplies lrScale by this (default 0.5)
  maxNonFinite?: number // skip: most consecutive skipped steps; rollback: most rollbacks per invocation (default 10)
  lrScale?: number // product of the rollback factors so far (absent = 1); part of the optimisation path, so checkpoints carry it
}

export type NonFinitePolicy = 'stop' | 'skip' | 'rollback'
export const NONFINITE_POLICIES: readonly NonFinitePolicy[] = ['stop', 'skip', 'rollback']
export const DEFAULT_MAX_NONFINITE = 10
export const DEFAULT_ROLLBACK_LR_FACTOR = 0.5

export interface OptimizerState { m: Params; v: Params }

export interface TrainState {
  step: number // optimiser steps taken so far
  params: Params
  opt: OptimizerState
  dataRng: Rng // draws the batches; stored in checkpoints so a resumed run sees the same data order
}

export interface StepResult {
  step: number; loss: number; gradNorm: number; lr: number; clipped: boolean
  nonFinite?: NonFiniteOrigin // set when the loss or gradient norm was NaN/Inf; the update was then not applied
}

/** Linear warm-up to `lr`, then cosine decay to lr·minLrRatio at the last step; all scaled by lrScale (rollbacks). */
export function lrAt(step: number, tc: TrainConfig): number {
  const scale = tc.lrScale ?? 1
  if (tc.warmup > 0 && step < tc.warmup) return (scale * (tc.lr * (step + 1))) / tc.warmup
  const span = Math.max(1, (tc.scheduleSteps ?? tc.steps) - tc.warmup)
  const progress = Math.min(1, (step - tc.warmup) / span)
  const min = tc.lr * tc.minLrRatio
  return scale * (min + 0.5 * (tc.lr - min) * (1 + Math.cos(Math.PI * progress)))
}

export function initOptimizer(params: Params): OptimizerState {
  const zeros = (): Params => Object.fromEntries(Object.entries(params).map(([k, p]) => [k, tf.tidy(() => tf.variable(tf.zerosLike(p), false))]))
  return {m: zeros(), v: zeros()}
}

/** Gradients of the mean loss w.r.t. every parameter, keyed by parameter name. */
export function gradients(params: Params, cfg: ModelConfig, x: tf.Tensor2D, y: tf.Tensor2D, recomputeBlock = 0): {loss: tf.Scalar; grads: Record<string, tf.Tensor>} {
  const names = Object.keys(params)
  const vars = names.map((k) => params[k])
  const {value, grads} = tf.variableGrads(() => loss(params, cfg, x, y, recomputeBlock), vars)
  return {loss: value, grads: Object.fromEntries(names.map((k, i) => [k, grads[vars[i].name]]))}
}

/** One optimiser step on one batch. Everything it allocates is freed before it returns. */
export async function trainStep(state: TrainState, cfg: ModelConfig, tc: TrainConfig, decay: Set<string>, train: Uint8Array): Promise<StepResult> {
  const lr = lrAt(state.step, tc)
  const {x, y} = sampleBatch(train, tc.batch, cfg.seqLen, state.dataRng)
  const t = state.step + 1
  // Gradients and their global norm stay on the device; only two scalars come back, read asynchronously (WebGPU in
  // Node has no synchronous read-back).
  const {value, norm, grads} = tf.tidy(() => {
    const {loss: l, grads: g} = gradients(state.params, cfg, x, y, tc.recomputeBlock ?? 0)
    // A chain of adds, not addN: WebGPU's AddN binds one storage buffer per input and fails past 8 of them.
    const sq = Object.values(g).map((v) => tf.sum(tf.square(v)))
    return {value: l, norm: tf.sqrt(sq.reduce((acc, v) => tf.add(acc, v))), grads: g}
  })
  try {
    const [lossV, normV] = [(await value.data())[0], (await norm.data())[0]]
    // A NaN/Inf step changes nothing (weights, moments): the caller stops, skips or rolls back.
    if (!Number.isFinite(lossV) || !Number.isFinite(normV)) {
      const nonFinite = await locateNonFinite(state.params, cfg, x, y, grads)
      return {step: t, lr, loss: lossV, gradNorm: normV, clipped: false, nonFinite}
    }
    const clipped = tc.gradClip > 0 && normV > tc.gradClip
    const scale = clipped ? tc.gradClip / normV : 1
    const bc1 = 1 - tc.beta1 ** t
    const bc2 = 1 - tc.beta2 ** t
    tf.tidy(() => {
      for (const [name, g0] of Object.entries(grads)) {
        const g = scale === 1 ? g0 : tf.mul(g0, scale)
        const p = state.params[name]
        const m = tf.add(tf.mul(state.opt.m[name], tc.beta1), tf.mul(g, 1 - tc.beta1))
        const v = tf.add(tf.mul(state.opt.v[name], tc.beta2), tf.mul(tf.square(g), 1 - tc.beta2))
        const update = tf.div(tf.div(m, bc1), tf.add(tf.sqrt(tf.div(v, bc2)), tc.adamEps))
        // Decoupled weight decay (AdamW): shrink the weight itself, not the gradient.
        const decayed = decay.has(name) ? tf.mul(p, 1 - lr * tc.weightDecay) : p
        p.assign(tf.sub(decayed, tf.mul(update, lr)))
        state.opt.m[name].assign(m)
        state.opt.v[name].assign(v)
      }
    })
    return {step: t, lr, loss: lossV, gradNorm: normV, clipped}
  } finally {
    tf.dispose([value, norm, x, y, ...Object.values(grads)])
    state.step = t
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Where a non-finite step started

/** `layer` is the connection index l (blocks.b.attn = 2b, blocks.b.mlp = 2b+1, conn.l = l); null for the embedding or the head. */
export interface NonFiniteOrigin { pass: 'forward' | 'backward'; layer: number | null; where: string }

const layerName = (l: number) => (l < 0 ? 'the embedding' : Number.isFinite(l) ? `layer ${l} (block ${l >> 1} ${l % 2 ? 'MLP' : 'attention'})` : 'the output head (final norm, lm_head)')

/** NaN or ±Inf anywhere in t: x·0 is 0 for every finite x, so the sum is NaN exactly when something is not finite. */
/** A scalar that is NaN exactly when t holds a NaN/Inf: x·0 is 0 for every finite x. */
const nonFiniteProbe = (t: tf.Tensor) => tf.sum(tf.mul(t, 0))
const readScalar = async (t: tf.Tensor) => (await t.data())[0]

/**
 * Diagnoses a non-finite step. Forward first: the first layer whose output holds a NaN/Inf. If the forward pass is
 * finite, the blow-up happened in the backward pass, which runs from the head down, so it started at the deepest
 * layer with non-finite gradients (or, if every gradient is finite and only the global norm overflowed, at the layer
 * with the largest one). Values are read back asynchronously (GPU backends have no synchronous read).
 */
export async function locateNonFinite(params: Params, cfg: ModelConfig, x: tf.Tensor2D, y: tf.Tensor2D, grads: Record<string, tf.Tensor>): Promise<NonFiniteOrigin> {
  const layers: {layer: number; probe: tf.Tensor}[] = []
  const {head, lossT} = tf.tidy(() => {
    const {logits} = forward(params, cfg, x, {onLayer: (l, out) => layers.push({layer: l, probe: tf.keep(nonFiniteProbe(out))})})
    return {head: nonFiniteProbe(logits), lossT: crossEntropy(logits, y, cfg.vocabSize)}
  })
  const rows = Object.entries(grads).map(([name, g]) => ({name, layer: layerOfParam(name), ...tf.tidy(() => ({bad: nonFiniteProbe(g), sq: tf.sum(tf.square(g))}))}))
  try {
    let first: number | undefined
    for (const l of layers) if (first === undefined && !Number.isFinite(await readScalar(l.probe))) first = l.layer
    if (first === undefined && !Number.isFinite(await readScalar(head))) first = Infinity
    if (first !== undefined) return {pass: 'forward', layer: Number.isFinite(first) && first >= 0 ? first : null, where: `the output of ${layerName(first)}`}
    if (!Number.isFinite(await readScalar(lossT))) return {pass: 'forward', layer: null, where: 'the loss (finite logits)'}
    const read = await Promise.all(rows.map(async (r) => ({name: r.name, layer: r.layer, bad: !Number.isFinite(await readScalar(r.bad)), sq: await readScalar(r.sq)})))
    const bad = read.filter((r) => r.bad)
    const pick = bad.length ? bad.reduce((a, b) => (b.layer > a.layer ? b : a)) : read.reduce((a, b) => (b.sq > a.sq || (b.sq === a.sq && b.layer > a.layer) ? b : a))
    return {pass: 'backward', layer: Number.isFinite(pick.layer) && pick.layer >= 0 ? pick.layer : null,
      where: `the gradient of ${pick.name}, ${layerName(pick.layer)}${bad.length ? '' : ' (all finite, the largest; their global norm overflowed)'}`}
  } finally {
    tf.dispose([head, lossT, ...layers.map((l) => l.probe), ...rows.flatMap((r) => [r.bad, r.sq])])
  }
}

export function decaySet(cfg: ModelConfig): Set<string> {
  return new Set(paramSpecs(cfg).filter((s) => s.decay).map((s) => s.name))
}

/** Mean validation loss (nats/byte) over fixed, evenly spaced windows. */
export async function evaluate(params: Params, cfg: ModelConfig, val: Uint8Array, windows: number, batch: number): Promise<number> {
  const offsets = evalWindows(val, windows, cfg.seqLen)
  let total = 0
  for (let i = 0; i < offsets.length; i += batch) {
    const chunk = offsets.slice(i, i + batch)
    const {x, y} = windowsToBatch(val, chunk, cfg.seqLen)
    const l = tf.tidy(() => crossEntropy(forward(params, cfg, x).logits, y, cfg.vocabSize))
    total += (await l.data())[0] * chunk.length
    tf.dispose([l, x, y])
  }
  return total / offsets.length
}

export function disposeState(state: TrainState): void {
  for (const group of [state.params, state.opt.m, state.opt.v]) for (const v of Object.values(group)) v.dispose()
}

// ---------------------------------------------------------------------------------------------------------------
// A whole run: the loop, metrics JSONL, validation, checkpoints.

export interface RunOptions {
  model: ModelConfig
  train: TrainConfig
  corpus: Corpus
  outDir: string
  backend: string
  resume?: LoadedCheckpoint // continue this checkpoint's run (weights, AdamW moments, step, data RNG)
  signal?: AbortSignal // a stop request (SIGINT/SIGTERM), honoured after the current step: save, then return `interrupted`
  onStep?: (r: StepResult & {tokensPerSec: number; seconds: number}) => void
  onEval?: (step: number, valLoss: number) => void
  onSave?: (dir: string) => void
  onNonFinite?: (e: NonFiniteEvent) => void
}

export interface NonFiniteEvent {
  step: number
  loss: number
  gradNorm: number
  origin: NonFiniteOrigin
  action: NonFinitePolicy // what was done about it
  restoredStep?: number // rollback: the step of the state restored
  lrScale?: number // rollback: the lr scale from now on
}

export interface RunSummary {
  startStep: number
  steps: number
  trainLoss?: number
  valLoss?: number
  tokensPerSec?: number // mean over the steps of this invocation
  seconds: number
  checkpoint?: string
  interrupted?: boolean // stopped early by `signal`; `checkpoint` holds the state after the last finished step
  skipped: number // non-finite steps whose update was discarded
  rollbacks: number
  train: TrainConfig // the config the run ended with (rollbacks lower lrScale)
  history: {step: number; loss: number; gradNorm: number; lr: number}[]
  evals: {step: number; valLoss: number}[]
}

export class NonFiniteError extends Error {
  constructor(message: string, readonly event?: NonFiniteEvent) {
    super(message)
    this.name = 'NonFiniteError'
  }
}

export const METRICS_FILE = 'metrics.jsonl'

/**
 * Keeps the records of steps ≤ `step` (a resumed or rolled-back run rewrites what came after its checkpoint), and
 * every non-finite event, which stays part of the run's history.
 */
function truncateMetrics(path: string, step: number): void {
  if (!existsSync(path)) return
  const keep = readFileSync(path, 'utf8').split('\n').filter((line) => {
    if (!line.trim()) return false
    try {
      const rec = JSON.parse(line)
      return rec.type === 'nonfinite' || rec.step <= step
    } catch {
      return false // a torn last line from a crash
    }
  })
  writeFileAtomic(path, keep.map((l) => l + '\n').join(''))
}

/** The checkpoints a resumed run descends from: the resume one and, resumed in place, the earlier ones beside it. */
function ancestors(resume: LoadedCheckpoint, outDir: string): {step: number; dir: string}[] {
  const step = resume.manifest.step
  const runDir = dirname(resume.dir)
  if (resolve(runDir) !== resolve(outDir)) return [{step, dir: resume.dir}]
  const earlier = readdirSync(runDir).filter((f) => isCheckpointName(f) && stepOfCheckpoint(f) < step).sort(byStep)
  return [...earlier.map((f) => ({step: stepOfCheckpoint(f), dir: join(runDir, f)})), {step, dir: resume.dir}]
}

export async function runTraining(o: RunOptions): Promise<RunSummary> {
  const tc: TrainConfig = {...o.train} // a copy: rollbacks change lrScale
  const policy = tc.onNonFinite ?? 'stop'
  const maxNonFinite = tc.maxNonFinite ?? DEFAULT_MAX_NONFINITE
  const metricsPath = join(o.outDir, METRICS_FILE)
  const created = !existsSync(o.outDir)
  mkdirSync(o.outDir, {recursive: true})
  const releaseLock = acquireRunLock(o.outDir) // one writer per run directory; fails naming the holder
  try {
    return await trainLoop(o, tc, policy, maxNonFinite, metricsPath)
  } catch (e) {
    // Nothing was trained (a failure before the first step): leave no empty run directory behind.
    const logged = existsSync(metricsPath) && statSync(metricsPath).size > 0
    if (created && !logged && readdirSync(o.outDir).every((f) => f === LOCK_FILE || f === METRICS_FILE)) {
      releaseLock()
      rmSync(o.outDir, {recursive: true, force: true})
    }
    throw e
  } finally {
    releaseLock()
  }
}

async function trainLoop(o: RunOptions, tc: TrainConfig, policy: NonFinitePolicy, maxNonFinite: number, metricsPath: string): Promise<RunSummary> {
  const {model: cfg, corpus} = o
  removeStaleTemps(o.outDir)
  const freshState = (): TrainState => {
    const params = initParams(cfg, tc.seed)
    return {step: 0, params, opt: initOptimizer(params), dataRng: new Rng(tc.seed + 1)}
  }
  let state: TrainState
  if (o.resume) {
    state = stateFromCheckpoint(o.resume)
    truncateMetrics(metricsPath, state.step)
  } else {
    state = freshState()
    if (existsSync(metricsPath)) writeFileAtomic(metricsPath, '')
  }
  const log = (rec: object) => appendFileSync(metricsPath, JSON.stringify(rec) + '\n')
  const decay = decaySet(cfg)
  const summary: RunSummary = {startStep: state.step, steps: state.step, seconds: 0, skipped: 0, rollbacks: 0, train: tc, history: [], evals: []}
  const t0 = performance.now()
  let tokens = 0
  let trainSeconds = 0 // time in optimiser steps only, so evaluation and saving do not dilute tokens/s
  let lastEval = -1
  // Checkpoints on the weights' current path, oldest first: the rollback targets. A run resumed in place descends from
  // its directory's earlier checkpoints too (a rollback deletes the checkpoints of the path it abandons).
  let path: {step: number; dir: string}[] = o.resume ? ancestors(o.resume, o.outDir) : []
  let consecutiveSkips = 0
  let lastRollback: {failStep: number; restored: number} | undefined
  const validate = async () => {
    const valLoss = await evaluate(state.params, cfg, corpus.val, tc.evalWindows, tc.batch)
    summary.valLoss = valLoss
    summary.evals.push({step: state.step, valLoss})
    lastEval = state.step
    log({type: 'eval', step: state.step, valLoss})
    o.onEval?.(state.step, valLoss)
  }
  const save = async () => {
    const dir = saveCheckpoint(o.outDir, state, cfg, tc, {
      data: {source: corpus.source, sha256: corpus.sha256, bytes: corpus.bytes},
      metrics: {trainLoss: summary.trainLoss, valLoss: lastEval === state.step ? summary.valLoss : undefined},
      backend: o.backend,
    }, await readState(state))
    path = [...path.filter((c) => c.step < state.step), {step: state.step, dir}]
    summary.checkpoint = dir
    o.onSave?.(dir)
  }
  /** Applies the --on-nonfinite policy to step `r`; throws NonFiniteError to stop. Returns true after a rollback. */
  const handleNonFinite = (r: StepResult): boolean => {
    const origin = r.nonFinite!
    const base = {step: r.step, loss: r.loss, gradNorm: r.gradNorm, origin}
    const record = (e: NonFiniteEvent) => {
      log({type: 'nonfinite', step: e.step, loss: e.loss, gradNorm: e.gradNorm, pass: origin.pass, layer: origin.layer, where: origin.where,
        action: e.action, restoredStep: e.restoredStep, lrScale: e.lrScale})
      o.onNonFinite?.(e)
    }
    const what = `non-finite ${Number.isFinite(r.loss) ? 'gradient norm' : 'loss'} at step ${r.step} (loss ${r.loss}, grad norm ${r.gradNorm}), ` +
      `starting in the ${origin.pass} pass at ${origin.where}`
    const stop = (why: string): never => {
      record({...base, action: 'stop'})
      throw new NonFiniteError(`${what}${why}; last checkpoint: ${path.at(-1)?.dir ?? 'none'}`, {...base, action: 'stop'})
    }
    if (policy === 'stop') stop('')
    if (policy === 'skip') {
      if (++consecutiveSkips > maxNonFinite) stop(`, after ${maxNonFinite} consecutive skipped steps (--max-nonfinite)`)
      summary.skipped++
      record({...base, action: 'skip'})
      return false
    }
    if (summary.rollbacks >= maxNonFinite) stop(`, after ${maxNonFinite} rollbacks (--max-nonfinite)`)
    summary.rollbacks++
    // Restoring the step just before the failure would recompute the very same gradient (same weights, same batch;
    // the lr only acts on the update), so go back at least two steps. Failing again before getting past the previous
    // failure means that restore point is doomed too: go back further than it. The last resort is the initial state.
    const bound = lastRollback && r.step <= lastRollback.failStep ? Math.min(r.step - 2, lastRollback.restored - 1) : r.step - 2
    const target = path.filter((c) => c.step <= bound).at(-1)
    disposeState(state)
    state = target ? stateFromCheckpoint(loadCheckpoint(target.dir, {optimizer: true})) : freshState()
    path = path.filter((c) => c.step <= state.step)
    const inRun = target && resolve(dirname(target.dir)) === resolve(o.outDir)
    rewindRun(o.outDir, state.step, inRun ? basename(target.dir) : undefined)
    lastRollback = {failStep: r.step, restored: state.step}
    tc.lrScale = (tc.lrScale ?? 1) * (tc.rollbackLrFactor ?? DEFAULT_ROLLBACK_LR_FACTOR)
    // Metrics and history follow the path the weights took: the undone steps go (the event itself stays).
    truncateMetrics(metricsPath, state.step)
    summary.history = summary.history.filter((h) => h.step <= state.step)
    summary.evals = summary.evals.filter((e) => e.step <= state.step)
    if (lastEval > state.step) lastEval = -1
    summary.steps = state.step
    summary.trainLoss = summary.history.at(-1)?.loss
    record({...base, action: 'rollback', restoredStep: state.step, lrScale: tc.lrScale})
    return true
  }
  try {
    while (state.step < tc.steps) {
      if (o.signal?.aborted) {
        summary.interrupted = true
        break
      }
      const s0 = performance.now()
      const r = await trainStep(state, cfg, tc, decay, corpus.train)
      const seconds = (performance.now() - s0) / 1000
      const tokensPerSec = (tc.batch * cfg.seqLen) / seconds
      tokens += tc.batch * cfg.seqLen
      trainSeconds += seconds
      log({type: 'step', step: r.step, loss: r.loss, gradNorm: r.gradNorm, lr: r.lr, clipped: r.clipped, tokensPerSec, seconds, ...(r.nonFinite ? {nonFinite: true} : {})})
      summary.history.push({step: r.step, loss: r.loss, gradNorm: r.gradNorm, lr: r.lr})
      summary.trainLoss = r.loss
      summary.steps = r.step
      o.onStep?.({...r, tokensPerSec, seconds})
      await new Promise(setImmediate) // let timers (progress bar) and signal handlers run between steps
      if (r.nonFinite) {
        if (handleNonFinite(r)) continue
      } else {
        consecutiveSkips = 0
      }
      if (tc.evalEvery > 0 && r.step % tc.evalEvery === 0) await validate()
      if (tc.saveEvery > 0 && r.step % tc.saveEvery === 0 && r.step < tc.steps) await save()
    }
    if (summary.interrupted) {
      if (state.step > 0 && path.at(-1)?.step !== state.step) await save()
      summary.checkpoint = path.at(-1)?.dir
    } else {
      if (lastEval !== state.step) await validate()
      if (state.step > summary.startStep) await save()
    }
    summary.seconds = (performance.now() - t0) / 1000
    if (trainSeconds > 0) summary.tokensPerSec = tokens / trainSeconds
    return summary
  } finally {
    disposeState(state)
  }
}
