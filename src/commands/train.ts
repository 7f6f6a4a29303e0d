import {Flags} from '@oclif/core'
import {existsSync, readdirSync, statSync} from 'node:fs'
import {dirname, join, resolve} from 'node:path'
import {backendFlag, numberFlag} from '../cli/flags.js'
import {BaseCommand, UsageError, assertFits, assertWritableDir, flagError} from '../cli/base.js'
import {chart, progressBar, table} from '../cli/render.js'
import {backendJson} from '../model/backend-names.js'
import {LATEST, LIMITS, byStep, isCheckpointName, materialize, stepOfCheckpoint, readCheckpoint, stateFromCheckpoint} from '../model/checkpoint.js'
import {checkpointCorpus, loadCorpus} from '../model/data.js'
import {ARCHS, Arch, ModelConfig, parameterCount} from '../model/model.js'
import {DEFAULT_ARCH, DEFAULT_PRESET, PRESETS, configFromPreset} from '../model/presets.js'
import {assertUnlocked} from '../model/run-lock.js'
import {DEFAULT_MAX_NONFINITE, METRICS_FILE, NONFINITE_POLICIES, NonFiniteEvent, TrainConfig, disposeState, evaluate, runTraining} from '../model/train.js'

const int = (o: {description: string; min?: number; max?: number}) => Flags.integer({min: o.min ?? 1, max: o.max, description: o.description})
const num = (description: string, check: (v: number) => boolean, rule: string) => numberFlag({description, check, rule})

// Flags that change the model's shape: fixed by the checkpoint when resuming.
const MODEL_FLAGS = {layers: 'layers', 'd-model': 'dModel', heads: 'heads', 'seq-len': 'seqLen', expansion: 'expansion', 'sinkhorn-iters': 'sinkhornIters', 'mlp-ratio': 'mlpRatio'} as const
// Flags that would change the optimisation path of a resumed run (and so break "resume = uninterrupted").
const TRAIN_FLAGS = {batch: 'batch', lr: 'lr', warmup: 'warmup', 'min-lr-ratio': 'minLrRatio', 'weight-decay': 'weightDecay', 'grad-clip': 'gradClip', seed: 'seed'} as const
// Flags a resumed run may change freely.
// (Recomputation changes memory, not maths: gradients are equal with and without it.)
const SCHEDULE_FLAGS = {steps: 'steps', 'eval-every': 'evalEvery', 'eval-windows': 'evalWindows', 'save-every': 'saveEvery', 'recompute-block': 'recomputeBlock',
  'on-nonfinite': 'onNonFinite', 'rollback-lr-factor': 'rollbackLrFactor', 'max-nonfinite': 'maxNonFinite'} as const

// Exit codes of a run stopped by a signal: 128 + the signal number, as a shell reports a process the signal killed,
// so scripts see "interrupted" (not success), even though the run saved a checkpoint and exited cleanly.
const SIGNAL_EXIT: Record<string, number> = {SIGINT: 130, SIGTERM: 143}

export default class Train extends BaseCommand {
  static override description = `Train (or resume) a byte-level Transformer with a residual, HC or mHC connection.

Defaults: the ${DEFAULT_PRESET} preset, --arch ${DEFAULT_ARCH}, Moby Dick as the corpus, the best backend available.
Writes <out>/metrics.jsonl (one JSON record per step and per evaluation) and checkpoints <out>/ckpt-NNNNNN/
(manifest.json + safetensors), with <out>/latest naming the newest.`

  static override examples = [
    '<%= config.bin %> <%= command.id %>',
    '<%= config.bin %> <%= command.id %> --arch hc --preset tiny --out runs/hc-tiny',
    '<%= config.bin %> <%= command.id %> --resume runs/mhc --steps 800',
    '<%= config.bin %> <%= command.id %> --arch hc --preset deep --grad-clip 0 --json',
    '<%= config.bin %> <%= command.id %> --arch hc --preset deep --grad-clip 0 --on-nonfinite rollback --save-every 20',
  ]

  static override flags = {
    arch: Flags.option({options: ARCHS, description: `residual connection [default: ${DEFAULT_ARCH}]`})(),
    preset: Flags.option({options: Object.keys(PRESETS), description: `model/training preset [default: ${DEFAULT_PRESET}]`})(),
    data: Flags.string({description: 'UTF-8 text file to train on [default: Moby Dick, bundled]'}),
    out: Flags.string({description: 'run directory [default: runs/<arch>, or runs/<arch>-N if taken]'}),
    resume: Flags.string({description: 'continue from a checkpoint or run directory (its config is used)'}),
    backend: backendFlag(),
    steps: int({description: 'total optimiser steps (with --resume: the checkpoint step itself only evaluates)', min: 0, max: LIMITS.steps}),
    layers: int({description: 'Transformer blocks (each = attention + MLP layer)', max: LIMITS.layers}),
    'd-model': int({description: 'model width C', max: LIMITS.dModel}),
    heads: int({description: 'attention heads', max: LIMITS.heads}),
    'seq-len': int({description: 'context length in bytes', max: LIMITS.seqLen}),
    'mlp-ratio': int({description: 'MLP hidden width / C', max: LIMITS.mlpRatio}),
    expansion: int({description: 'residual streams n (hc/mhc)', max: LIMITS.expansion}),
    'sinkhorn-iters': int({description: 'Sinkhorn-Knopp iterations t_max (mhc)', min: 0, max: LIMITS.sinkhornIters}),
    batch: int({description: 'sequences per step', max: LIMITS.batch}),
    lr: num('peak learning rate', (v) => v > 0 && v < 10, 'a number in (0, 10)'),
    warmup: int({description: 'linear warm-up steps', min: 0}),
    'min-lr-ratio': num('final lr / peak lr (cosine)', (v) => v >= 0 && v <= 1, 'a number in [0, 1]'),
    'weight-decay': num('AdamW decoupled weight decay', (v) => v >= 0, 'a number >= 0'),
    'grad-clip': num('max global gradient norm; 0 = no clipping', (v) => v >= 0, 'a number >= 0'),
    'eval-every': int({description: 'validate every N steps (0 = only at the end)', min: 0}),
    'eval-windows': int({description: 'validation windows per evaluation', max: LIMITS.evalWindows}),
    'save-every': int({description: 'checkpoint every N steps (0 = only at the end)', min: 0}),
    seed: int({description: 'seed for initialisation and data order', min: 0, max: LIMITS.seed}),
    'recompute-block': int({description: 'recompute blocks of L_r layers in the backward pass, keeping only block inputs (0 = off)', min: 0}),
    'on-nonfinite': Flags.option({options: NONFINITE_POLICIES, description: 'on a NaN/Inf loss or gradient: stop (exit 3), skip the update, or roll back to the last checkpoint with a lower lr [default: stop]'})(),
    'rollback-lr-factor': num('rollback: multiply the lr by this at every rollback [default: 0.5]', (v) => v > 0 && v < 1, 'a number in (0, 1)'),
    'max-nonfinite': int({description: `skip: most consecutive skipped steps; rollback: most rollbacks; then stop with exit 3 [default: ${DEFAULT_MAX_NONFINITE}]`}),
    progress: Flags.boolean({description: 'show a progress bar on stderr', default: true, allowNo: true}),
  }

  async run() {
    const {flags} = await this.parse(Train).catch(flagError)
    this.verbose = flags.verbose
    const explicit = (group: Record<string, string>) => Object.keys(group).filter((f) => (flags as any)[f] !== undefined)

    // 1. Configuration: a checkpoint's, or a preset's with flag overrides. All input is checked before any work.
    let model: ModelConfig
    let train: TrainConfig
    let outDir: string
    const ck = flags.resume ? readCheckpoint(flags.resume, {optimizer: true}) : undefined
    if (ck) {
      const fixed = [...explicit(MODEL_FLAGS), ...explicit(TRAIN_FLAGS), ...(flags.arch ? ['arch'] : []), ...(flags.preset ? ['preset'] : [])]
      if (fixed.length) throw new UsageError(`--resume takes the model and optimiser settings from the checkpoint; drop --${fixed.join(', --')}`)
      model = ck.manifest.model
      // The cosine horizon stays the first run's: resuming to a later --steps continues at the minimum lr.
      train = {...ck.manifest.train, scheduleSteps: ck.manifest.train.scheduleSteps ?? ck.manifest.train.steps}
      for (const [flag, key] of Object.entries(SCHEDULE_FLAGS)) if ((flags as any)[flag] !== undefined) (train as any)[key] = (flags as any)[flag]
      const runDir = dirname(ck.dir)
      outDir = flags.out ?? runDir
      assertUnlocked(outDir)
      if (train.steps < ck.manifest.step) {
        throw new UsageError(`--steps ${train.steps} is behind the checkpoint (step ${ck.manifest.step}); use \`mhc eval\` to evaluate it`)
      }
      if (resolve(outDir) === resolve(runDir)) {
        const later = readdirSync(runDir).filter((f) => isCheckpointName(f) && stepOfCheckpoint(f) > ck.manifest.step)
        // Given the run directory, `latest` decides: a checkpoint newer than it is one whose save was cut off before
        // the pointer moved (kill -9), so the resumed run may write it again.
        const viaLatest = resolve(ck.dir) !== resolve(flags.resume!)
        if (later.length && viaLatest) {
          this.logToStderr(`note: ${later.sort(byStep).join(', ')} ${later.length === 1 ? 'is' : 'are'} newer than ${join(runDir, LATEST)} (a save was interrupted); resuming from ${ck.dir}`)
        } else if (later.length && train.steps > ck.manifest.step) {
          throw new UsageError(`${runDir} already has later checkpoints (${later.sort(byStep).join(', ')}); resuming from step ${ck.manifest.step} would overwrite them: pass an empty --out`)
        }
      } else if (holdsRun(outDir)) {
        throw new UsageError(`${outDir} already holds another run; resume into the checkpoint's own run directory or an empty --out`)
      }
    } else {
      const overrides = Object.fromEntries(Object.entries({...MODEL_FLAGS, ...TRAIN_FLAGS, ...SCHEDULE_FLAGS}).map(([flag, key]) => [key, (flags as any)[flag]]))
      ;({model, train} = configFromPreset(flags.preset ?? DEFAULT_PRESET, (flags.arch ?? DEFAULT_ARCH) as Arch, overrides))
      if (model.dModel % model.heads !== 0) throw new UsageError(`--d-model ${model.dModel} must be divisible by --heads ${model.heads}`)
      if (model.arch !== 'baseline' && model.expansion < 2) throw new UsageError(`--expansion must be at least 2 for --arch ${model.arch}`)
      if (model.arch === 'mhc' && model.sinkhornIters < 1) throw new UsageError('--sinkhorn-iters must be at least 1 for --arch mhc (0 would leave H_res unnormalised)')
      if (flags.steps === 0) throw new UsageError('--steps 0 trains nothing; to evaluate a checkpoint use `mhc eval`')
      outDir = flags.out ?? freeRunDir(`runs/${model.arch}`)
      assertUnlocked(outDir)
      if (holdsRun(outDir)) {
        const hasCheckpoint = readdirSync(outDir).some((f) => f === LATEST || f.startsWith('ckpt-'))
        throw new UsageError(hasCheckpoint
          ? `${outDir} already holds a run; continue it with --resume ${outDir} or choose another --out`
          : `${outDir} holds the metrics of a run that saved no checkpoint; choose another --out or remove it`)
      }
    }

    if (flags['rollback-lr-factor'] !== undefined && train.onNonFinite !== 'rollback') throw new UsageError('--rollback-lr-factor only applies with --on-nonfinite rollback')
    if (flags['max-nonfinite'] !== undefined && (train.onNonFinite ?? 'stop') === 'stop') throw new UsageError('--max-nonfinite only applies with --on-nonfinite skip or rollback')
    assertWritableDir(outDir, '--out')

    // 2. Data (a resumed run must see the very same corpus, or its data order means nothing).
    const corpus = ck ? checkpointCorpus(ck.manifest.data, flags.data, model.seqLen + 1, true) : loadCorpus(flags.data, 0.1, model.seqLen + 1)

    // 3. Backend, then the checkpoint's tensors on it.
    const backend = await this.chooseBackend(flags.backend)
    const nParams = parameterCount(model)
    assertFits({...model, params: nParams, batch: train.batch, recomputeBlock: train.recomputeBlock ?? 0}, backend.backend)
    const resume = ck ? materialize(ck) : undefined
    this.logToStderr(`${model.arch}: ${model.layers} block${model.layers === 1 ? '' : 's'} (${2 * model.layers} layers), C=${model.dModel}, n=${model.arch === 'baseline' ? 1 : model.expansion}, ` +
      `${(nParams / 1e6).toFixed(3)}M params; ${corpus.source}: ${corpus.train.length} train / ${corpus.val.length} val bytes; run dir ${outDir}`)
    if (resume && train.steps > train.scheduleSteps!) {
      this.logToStderr(`note: the lr schedule keeps its ${train.scheduleSteps}-step horizon; steps ${train.scheduleSteps! + 1}–${train.steps} run at the minimum lr ${(train.lr * train.minLrRatio).toExponential(2)}`)
    }

    // Evaluate only: a checkpoint resumed to its own step. Nothing is written.
    if (resume && train.steps === resume.manifest.step) {
      const valLoss = await evaluate(resume.params, model, corpus.val, train.evalWindows, train.batch)
      disposeState(stateFromCheckpoint(resume))
      this.log(`${resume.dir}: step ${resume.manifest.step}, val loss ${valLoss.toFixed(4)} nats/byte (${train.evalWindows} windows of ${model.seqLen} bytes)`)
      return {arch: model.arch, backend: backendJson(backend), checkpoint: resume.dir, step: resume.manifest.step, valLoss, evaluateOnly: true}
    }

    // 4. Train.
    const startStep = resume?.manifest.step ?? 0
    const bar = progressBar(model.arch, train.steps, flags.progress)
    bar.start(startStep)
    const t0 = performance.now()
    let [lastVal, lastLoss, tokens, stepSeconds] = ['-', '-', 0, 0]
    const show = (step: number) => {
      const perStep = (performance.now() - t0) / 1000 / Math.max(1, step - startStep) // includes evaluation and saving
      bar.update(step, {loss: lastLoss, val: lastVal, tok_s: stepSeconds > 0 ? Math.round(tokens / stepSeconds) : '-', remaining: formatSeconds(perStep * (train.steps - step))})
    }
    // SIGINT/SIGTERM: finish the current step, save a checkpoint, exit 130/143. Only the first signal is ours: taking
    // the listeners off restores the default action, so a second one ends the process at once, even inside a step
    // (the last complete checkpoint still stands).
    const stop = new AbortController()
    const onSignal = (sig: NodeJS.Signals) => {
      process.removeListener('SIGINT', onSignal)
      process.removeListener('SIGTERM', onSignal)
      stop.abort(sig)
      process.stderr.write(`\n${sig}: finishing the current step, then saving a checkpoint (${sig} again aborts at once)\n`)
    }
    const onNonFinite = (e: NonFiniteEvent) => {
      if (e.action === 'stop') return // the error line says it all
      const then = e.action === 'skip' ? 'update skipped' : e.action === 'rollback' ? `rolled back to step ${e.restoredStep}, lr scale now ${e.lrScale}` : ''
      this.logToStderr(`\nstep ${e.step}: non-finite ${Number.isFinite(e.loss) ? 'gradient norm' : 'loss'}, starting in the ${e.origin.pass} pass at ${e.origin.where}; ${then}`)
    }
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
    const summary = await (async () => {
      try {
        return await runTraining({
          model, train, corpus, outDir, backend: backend.backend, resume, signal: stop.signal, onNonFinite,
          onStep: (r) => {
            tokens += train.batch * model.seqLen
            stepSeconds += r.seconds
            lastLoss = r.loss.toFixed(3)
            show(r.step)
          },
          onEval: (step, v) => {
            lastVal = v.toFixed(3)
            show(step)
          },
        })
      } finally {
        process.removeListener('SIGINT', onSignal)
        process.removeListener('SIGTERM', onSignal)
        bar.stop()
      }
    })()
    const signal = summary.interrupted ? String(stop.signal.reason) : undefined
    const resumeWith = summary.checkpoint ? `mhc train --resume ${dirname(summary.checkpoint)}` : undefined

    // 5. Report.
    const result = {
      arch: model.arch, backend: backendJson(backend), params: nParams, outDir, checkpoint: summary.checkpoint ?? resume?.dir,
      startStep: summary.startStep, steps: summary.steps, trainLoss: summary.trainLoss, valLoss: summary.valLoss,
      bestValLoss: summary.evals.length ? Math.min(...summary.evals.map((e) => e.valLoss)) : undefined,
      tokensPerSec: summary.tokensPerSec, seconds: summary.seconds, model, train: summary.train, data: {source: corpus.source, sha256: corpus.sha256},
      skipped: summary.skipped, rollbacks: summary.rollbacks, evals: summary.evals,
      ...(signal ? {interrupted: {signal, step: summary.steps, checkpoint: summary.checkpoint, resume: resumeWith}} : {}),
    }
    if (summary.history.length > 0) {
      const f = (v: number | undefined, d = 4) => (v === undefined ? '-' : v.toFixed(d))
      this.log(table(['run', 'value'], [
        ['arch', `${model.arch}${model.arch === 'baseline' ? '' : ` (n=${model.expansion})`}`],
        ['parameters', nParams.toLocaleString('en-US')],
        ['steps', `${summary.startStep} → ${summary.steps}`],
        ['train loss (last step)', f(summary.trainLoss)],
        ['val loss (nats/byte)', f(summary.valLoss)],
        ['best val loss', f(result.bestValLoss)],
        ['tokens/s (train steps)', f(summary.tokensPerSec, 0)],
        ['wall time (s)', f(summary.seconds, 1)],
        ...(summary.skipped || summary.rollbacks ? [['non-finite steps', `${summary.skipped} skipped, ${summary.rollbacks} rolled back (lr scale ${summary.train.lrScale ?? 1})`]] : []),
        ['checkpoint', summary.checkpoint ?? '-'],
      ]))
      this.log(chart('train loss (nats/byte) over steps', [summary.history.map((h) => h.loss)], ['loss']))
      this.log(chart('global gradient norm over steps', [summary.history.map((h) => h.gradNorm)], ['grad norm']))
    }
    if (signal) {
      // Written directly (also under --json): the last line tells the user how to continue.
      process.stderr.write(`interrupted at step ${summary.steps}; ${summary.checkpoint ? `checkpoint ${summary.checkpoint}; resume with: ${resumeWith}` : 'no checkpoint yet'}\n`)
      process.exitCode = SIGNAL_EXIT[signal] ?? SIGNAL_EXIT.SIGINT
    }
    return result
  }
}

/** A directory with checkpoints or metrics belongs to a run: never train a fresh run over it. */
function holdsRun(dir: string): boolean {
  if (!existsSync(dir)) return false
  if (!statSync(dir).isDirectory()) throw new UsageError(`--out ${dir} is not a directory`)
  return readdirSync(dir).some((f) => f === LATEST || f === METRICS_FILE || f.startsWith('ckpt-'))
}

/** runs/<arch>, or the first runs/<arch>-N that holds no run yet. */
function freeRunDir(base: string): string {
  if (!holdsRun(base)) return base
  for (let i = 2; ; i++) if (!holdsRun(`${base}-${i}`)) return `${base}-${i}`
}

function formatSeconds(s: number): string {
  const t = Math.max(0, Math.round(s))
  return t >= 60 ? `${Math.floor(t / 60)}m${String(t % 60).padStart(2, '0')}s` : `${t}s`
}
