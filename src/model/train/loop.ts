// The training loop, engine-agnostic: sample a batch, take one AdamW step on the engine, log, evaluate, checkpoint.
// The host keeps what makes a run reproducible and resumable: the step, the data-order RNG and the lr schedule.
import {existsSync} from 'node:fs'
import {basename, dirname, join, resolve} from 'node:path'

import type {Engine} from '../engines/engine.js'

import {
  DEFAULT_MAX_NONFINITE,
  DEFAULT_ROLLBACK_LR_FACTOR,
  ModelConfig,
  NonFinitePolicy,
  TrainConfig,
} from '../config.js'
import {NonFiniteError, NonFiniteEvent, NonFiniteOrigin} from '../errors.js'
import {CheckpointData, stateOf, TrainingState} from '../io/checkpoint.js'
import {Corpus, evalWindows, sampleBatch, windowsToBatch} from '../io/data.js'
import {HostTensors, initParamData} from '../params.js'
import {Rng} from '../rng.js'
import {
  ancestors,
  appendMetric,
  clearMetrics,
  METRICS_FILE,
  openRunDir,
  pruneCheckpoints,
  readCheckpoint,
  removeStaleTemps,
  rewindRun,
  saveCheckpoint,
  truncateMetrics,
} from './run-dir.js'
import {EventFile, metricsRecords} from './tensorboard.js'

/** Linear warm-up to `lr`, then cosine decay to lr·minLrRatio at the last step; all scaled by lrScale (rollbacks). */
export function lrAt(step: number, tc: TrainConfig): number {
  const scale = tc.lrScale ?? 1
  if (tc.warmup > 0 && step < tc.warmup) return (scale * (tc.lr * (step + 1))) / tc.warmup
  const span = Math.max(1, (tc.scheduleSteps ?? tc.steps) - tc.warmup)
  const progress = Math.min(1, (step - tc.warmup) / span)
  const min = tc.lr * tc.minLrRatio
  return scale * (min + 0.5 * (tc.lr - min) * (1 + Math.cos(Math.PI * progress)))
}

/** Mean validation loss (nats/byte) over fixed, evenly spaced windows, `batch` windows at a time. */
export async function evaluate(engine: Engine, val: Uint8Array, windows: number, batch: number): Promise<number> {
  const offsets = evalWindows(val, windows, engine.model.seqLen)
  let total = 0
  for (let i = 0; i < offsets.length; i += batch) {
    const chunk = offsets.slice(i, i + batch)
    total += (await engine.loss(windowsToBatch(val, chunk, engine.model.seqLen))) * chunk.length
  }

  return total / offsets.length
}

/** The host side of a run: step and data order (the weights and moments live in the engine). */
export interface Position {
  step: number
  dataRng: Rng
}

export interface StepReport {
  step: number
  loss: number
  gradNorm: number
  lr: number
  clipped: boolean
  nonFinite?: NonFiniteOrigin
  tokensPerSec: number
  seconds: number
}

/**
 * Puts a state into the engine and returns the host side of it. Without one: step 0 from `init` weights (--init-from)
 * or the seeded initial ones, fresh AdamW moments.
 */
export function restore(engine: Engine, tc: TrainConfig, s?: TrainingState, init?: HostTensors): Position {
  if (!s) {
    engine.load({params: init ?? initParamData(engine.model, tc.seed)})
    return {step: 0, dataRng: new Rng(tc.seed + 1)}
  }

  engine.load({params: s.params, m: s.m, v: s.v})
  const dataRng = new Rng(0)
  dataRng.state = s.dataRng
  return {step: s.step, dataRng}
}

/** One optimiser step: the next batch of the data order, the scheduled lr, AdamW on the engine. Advances `pos`. */
export async function takeStep(engine: Engine, pos: Position, tc: TrainConfig, train: Uint8Array): Promise<StepReport> {
  const s0 = performance.now()
  const lr = lrAt(pos.step, tc)
  const t = pos.step + 1
  const batch = sampleBatch(train, tc.batch, engine.model.seqLen, pos.dataRng)
  const res = await engine.trainStep(batch, {
    lr,
    t,
    beta1: tc.beta1,
    beta2: tc.beta2,
    adamEps: tc.adamEps,
    weightDecay: tc.weightDecay,
    gradClip: tc.gradClip,
  })
  pos.step = t // a non-finite step counts too: the data order has moved on
  const seconds = (performance.now() - s0) / 1000
  return {step: t, lr, ...res, tokensPerSec: (tc.batch * engine.model.seqLen) / seconds, seconds}
}

export interface RunOptions {
  model: ModelConfig
  train: TrainConfig
  corpus: Corpus
  outDir: string
  engine: Engine // built for `model`; the loop loads the initial or resumed state into it
  resume?: CheckpointData // continue this checkpoint's run (weights, AdamW moments, step, data RNG); read with its optimizer state
  init?: CheckpointData // a new run starting from these weights (fresh moments, step 0, the new config's data order)
  keepLast?: number // after each save, remove all but the newest N checkpoints (never `latest` or `best`)
  keepBest?: boolean // evaluate at every save and name the lowest validation loss in <run>/best (kept by keepLast)
  signal?: AbortSignal // a stop request (SIGINT/SIGTERM), honoured after the current step: save, then return `interrupted`
  onStep?: (r: StepReport) => void
  onEval?: (step: number, valLoss: number) => void
  onSave?: (dir: string) => void
  onNonFinite?: (e: NonFiniteEvent) => void
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

/**
 * Trains into `o.outDir`, holding its lock throughout. A run that fails before its first step leaves no directory
 * behind that it created (run-dir.ts openRunDir: empty folders only).
 */
export async function runTraining(o: RunOptions): Promise<RunSummary> {
  const run = openRunDir(o.outDir) // one writer per run directory; fails naming the holder
  try {
    return await trainLoop(o)
  } catch (error) {
    run.discardIfUnused()
    throw error
  } finally {
    run.release()
  }
}

async function trainLoop(o: RunOptions): Promise<RunSummary> {
  const {model: cfg, corpus, engine, outDir} = o
  const tc: TrainConfig = {...o.train} // a copy: rollbacks change lrScale
  const policy: NonFinitePolicy = tc.onNonFinite ?? 'stop'
  const maxNonFinite = tc.maxNonFinite ?? DEFAULT_MAX_NONFINITE
  removeStaleTemps(outDir)
  let pos: Position
  if (o.resume) {
    pos = restore(engine, tc, stateOf(o.resume))
    truncateMetrics(outDir, pos.step)
  } else {
    pos = restore(engine, tc, undefined, o.init?.params)
    clearMetrics(outDir)
  }

  // TensorBoard's copy of metrics.jsonl: written again whenever metrics.jsonl is cut back (here, and on a rollback).
  const events = new EventFile(outDir)
  const tensorboard = () => events.reset(metricsRecords(join(outDir, METRICS_FILE)))
  tensorboard()
  // Every record carries its wall-clock time (Unix seconds), so that TensorBoard's time axis survives a rewrite.
  const log = (rec: Record<string, unknown>) => {
    const timed = {...rec, time: Date.now() / 1000}
    appendMetric(outDir, timed)
    events.append(timed)
  }

  const summary: RunSummary = {
    startStep: pos.step,
    steps: pos.step,
    seconds: 0,
    skipped: 0,
    rollbacks: 0,
    train: tc,
    history: [],
    evals: [],
  }
  const t0 = performance.now()
  let tokens = 0
  let trainSeconds = 0 // time in optimiser steps only, so evaluation and saving do not dilute tokens/s
  let lastEval = -1
  // Checkpoints on the weights' current path, oldest first: the rollback targets. A run resumed in place descends from
  // its directory's earlier checkpoints too (a rollback deletes the checkpoints of the path it abandons).
  let path: {step: number; dir: string}[] = o.resume ? ancestors(o.resume, outDir) : []
  let consecutiveSkips = 0
  let lastRollback: {failStep: number; restored: number} | undefined
  const validate = async () => {
    const valLoss = await evaluate(engine, corpus.val, tc.evalWindows, tc.batch)
    summary.valLoss = valLoss
    summary.evals.push({step: pos.step, valLoss})
    lastEval = pos.step
    log({type: 'eval', step: pos.step, valLoss})
    o.onEval?.(pos.step, valLoss)
  }

  const save = async () => {
    if (o.keepBest && lastEval !== pos.step) await validate() // "best" needs every checkpoint's validation loss
    const state = await engine.readState()
    const dir = saveCheckpoint(outDir, {step: pos.step, ...state, dataRng: pos.dataRng.state}, cfg, tc, {
      data: {source: corpus.source, sha256: corpus.sha256, bytes: corpus.bytes},
      metrics: {trainLoss: summary.trainLoss, valLoss: lastEval === pos.step ? summary.valLoss : undefined},
      backend: engine.backend,
      initFrom: o.init ? {checkpoint: o.init.dir, step: o.init.manifest.step} : o.resume?.manifest.initFrom,
      keep: {last: o.keepLast, best: o.keepBest},
    })
    path = [...path.filter((c) => c.step < pos.step), {step: pos.step, dir}]
    if (o.keepLast || o.keepBest) {
      pruneCheckpoints(outDir, {keepLast: o.keepLast, keepBest: o.keepBest ?? false})
      path = path.filter((c) => existsSync(c.dir)) // rollbacks can only go back to what is kept
    }

    summary.checkpoint = dir
    o.onSave?.(dir)
  }

  /** Applies the --on-nonfinite policy to step `r`; throws NonFiniteError to stop. Returns true after a rollback. */
  const handleNonFinite = (r: StepReport): boolean => {
    const origin = r.nonFinite!
    const base = {step: r.step, loss: r.loss, gradNorm: r.gradNorm, origin}
    const record = (e: NonFiniteEvent) => {
      log({
        type: 'nonfinite',
        step: e.step,
        loss: e.loss,
        gradNorm: e.gradNorm,
        pass: origin.pass,
        layer: origin.layer,
        where: origin.where,
        action: e.action,
        restoredStep: e.restoredStep,
        lrScale: e.lrScale,
      })
      o.onNonFinite?.(e)
    }

    const what =
      `non-finite ${Number.isFinite(r.loss) ? 'gradient norm' : 'loss'} at step ${r.step} (loss ${r.loss}, grad norm ${r.gradNorm}), ` +
      `starting in the ${origin.pass} pass at ${origin.where}`
    const stop = (why: string): never => {
      record({...base, action: 'stop'})
      throw new NonFiniteError(`${what}${why}; last checkpoint: ${path.at(-1)?.dir ?? 'none'}`, {
        ...base,
        action: 'stop',
      })
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
    const bound =
      lastRollback && r.step <= lastRollback.failStep ? Math.min(r.step - 2, lastRollback.restored - 1) : r.step - 2
    const target = path.findLast((c) => c.step <= bound)
    pos = restore(engine, tc, target ? stateOf(readCheckpoint(target.dir, {optimizer: true})) : undefined)
    path = path.filter((c) => c.step <= pos.step)
    const inRun = target && resolve(dirname(target.dir)) === resolve(outDir)
    rewindRun(outDir, pos.step, inRun ? basename(target.dir) : undefined)
    lastRollback = {failStep: r.step, restored: pos.step}
    tc.lrScale = (tc.lrScale ?? 1) * (tc.rollbackLrFactor ?? DEFAULT_ROLLBACK_LR_FACTOR)
    // Metrics and history follow the path the weights took: the undone steps go (the event itself stays).
    truncateMetrics(outDir, pos.step)
    tensorboard()
    summary.history = summary.history.filter((h) => h.step <= pos.step)
    summary.evals = summary.evals.filter((e) => e.step <= pos.step)
    if (lastEval > pos.step) lastEval = -1
    summary.steps = pos.step
    summary.trainLoss = summary.history.at(-1)?.loss
    record({...base, action: 'rollback', restoredStep: pos.step, lrScale: tc.lrScale})
    return true
  }

  while (pos.step < tc.steps) {
    if (o.signal?.aborted) {
      summary.interrupted = true
      break
    }

    const r = await takeStep(engine, pos, tc, corpus.train)
    tokens += tc.batch * cfg.seqLen
    trainSeconds += r.seconds
    log({
      type: 'step',
      step: r.step,
      loss: r.loss,
      gradNorm: r.gradNorm,
      lr: r.lr,
      clipped: r.clipped,
      tokensPerSec: r.tokensPerSec,
      seconds: r.seconds,
      ...(r.nonFinite ? {nonFinite: true} : {}),
    })
    summary.history.push({step: r.step, loss: r.loss, gradNorm: r.gradNorm, lr: r.lr})
    summary.trainLoss = r.loss
    summary.steps = r.step
    o.onStep?.(r)
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
    if (pos.step > 0 && path.at(-1)?.step !== pos.step) await save()
    summary.checkpoint = path.at(-1)?.dir
  } else {
    if (lastEval !== pos.step) await validate()
    if (pos.step > summary.startStep) await save()
  }

  summary.seconds = (performance.now() - t0) / 1000
  if (trainSeconds > 0) summary.tokensPerSec = tokens / trainSeconds
  return summary
}
