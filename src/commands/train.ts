import {Flags} from '@oclif/core'

import type {NonFiniteEvent} from '../model/errors.js'

import {assertFits, assertWritableDir, BaseCommand, EXIT, flagError, UsageError} from '../cli/base.js'
import {archFlag, backendFlag, MODEL_FLAGS, overridesFrom, TRAIN_FLAGS} from '../cli/flags.js'
import {chart, progressBar, table} from '../cli/render.js'
import {configFromPreset, DEFAULT_ARCH, DEFAULT_PRESET, ModelConfig, PRESETS, TrainConfig} from '../model/config.js'
import {connectionOf} from '../model/connections/index.js'
import {backendJson} from '../model/engines/backends.js'
import {checkpointCorpus, loadCorpus} from '../model/io/data.js'
import {modelProblem, parameterCount} from '../model/params.js'
import {evaluate, runTraining} from '../model/train/loop.js'
import {newRunDir, readCheckpoint, resumeRunDir} from '../model/train/run-dir.js'

// Flags a resumed run may change freely: the schedule, the policies, and recomputation (memory, not maths: gradients
// are equal with and without it). Every other model or training flag would change the optimisation path of a
// resumed run (and so break "resume = uninterrupted"): those come from the checkpoint.
const RESUMABLE = [
  'steps',
  'eval-every',
  'eval-windows',
  'save-every',
  'recompute-block',
  'on-nonfinite',
  'rollback-lr-factor',
  'max-nonfinite',
]

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
    arch: archFlag(),
    preset: Flags.option({
      options: Object.keys(PRESETS),
      description: `model/training preset [default: ${DEFAULT_PRESET}]`,
    })(),
    data: Flags.string({description: 'UTF-8 text file to train on [default: Moby Dick, bundled]'}),
    out: Flags.string({description: 'run directory [default: runs/<arch>, or runs/<arch>-N if taken]'}),
    resume: Flags.string({description: 'continue from a checkpoint or run directory (its config is used)'}),
    backend: backendFlag(),
    ...MODEL_FLAGS,
    ...TRAIN_FLAGS,
    progress: Flags.boolean({
      description: 'show a progress bar on stderr (never under --json)',
      default: true,
      allowNo: true,
    }),
  }

  async run() {
    const {flags} = await this.parse(Train).catch(flagError)
    this.verbose = flags.verbose
    const given = (names: string[]) => names.filter((f) => (flags as any)[f] !== undefined)

    // 1. Configuration: a checkpoint's, or a preset's with flag overrides. All input is checked before any work.
    let model: ModelConfig
    let train: TrainConfig
    let outDir: string
    const ck = flags.resume ? readCheckpoint(flags.resume, {optimizer: true}) : undefined
    if (ck) {
      const fixed = [
        ...given([...Object.keys(MODEL_FLAGS), ...Object.keys(TRAIN_FLAGS)]).filter((f) => !RESUMABLE.includes(f)),
        ...given(['arch', 'preset']),
      ]
      if (fixed.length > 0)
        throw new UsageError(
          `--resume takes the model and optimiser settings from the checkpoint; drop --${fixed.join(', --')}`,
        )
      model = ck.manifest.model
      // The cosine horizon stays the first run's: resuming to a later --steps continues at the minimum lr.
      train = {...ck.manifest.train, scheduleSteps: ck.manifest.train.scheduleSteps ?? ck.manifest.train.steps}
      Object.assign(
        train,
        Object.fromEntries(Object.entries(overridesFrom(flags, RESUMABLE)).filter(([, v]) => v !== undefined)),
      )
      const plan = resumeRunDir(ck, flags.resume!, flags.out, train.steps)
      outDir = plan.outDir
      if (plan.note) this.logToStderr(`note: ${plan.note}`)
    } else {
      const overrides = overridesFrom(flags, [...Object.keys(MODEL_FLAGS), ...Object.keys(TRAIN_FLAGS)])
      ;({model, train} = configFromPreset(flags.preset ?? DEFAULT_PRESET, flags.arch ?? DEFAULT_ARCH, overrides))
      if (model.dModel % model.heads !== 0)
        throw new UsageError(`--d-model ${model.dModel} must be divisible by --heads ${model.heads}`)
      const problem = modelProblem(model) // the connection's own rules (n ≥ 2 for hc/mhc, t_max ≥ 1 for mhc), in flag names
      if (problem)
        throw new UsageError(
          problem.replace(/\bexpansion\b/, '--expansion').replace(/\bsinkhornIters\b/, '--sinkhorn-iters'),
        )
      if (flags.steps === 0) throw new UsageError('--steps 0 trains nothing; to evaluate a checkpoint use `mhc eval`')
      outDir = newRunDir(flags.out, model.arch)
    }

    if (flags['rollback-lr-factor'] !== undefined && train.onNonFinite !== 'rollback')
      throw new UsageError('--rollback-lr-factor only applies with --on-nonfinite rollback')
    if (flags['max-nonfinite'] !== undefined && (train.onNonFinite ?? 'stop') === 'stop')
      throw new UsageError('--max-nonfinite only applies with --on-nonfinite skip or rollback')
    assertWritableDir(outDir, '--out')

    // 2. Data (a resumed run must see the very same corpus, or its data order means nothing).
    const corpus = ck
      ? checkpointCorpus(ck.manifest.data, flags.data, model.seqLen + 1, true)
      : loadCorpus(flags.data, 0.1, model.seqLen + 1)

    // 3. The engine, after the memory it needs is known to fit.
    const needs = {model, batch: train.batch, recomputeBlock: train.recomputeBlock ?? 0}
    const engines = await this.openEngines(flags.backend, needs)
    const backend = backendJson(engines.report)
    const nParams = parameterCount(model)
    assertFits(
      {...model, params: nParams, batch: train.batch, recomputeBlock: needs.recomputeBlock},
      engines.report.backend,
    )
    const engine = await engines.create(needs)
    this.logToStderr(
      `${model.arch}: ${model.layers} block${model.layers === 1 ? '' : 's'} (${2 * model.layers} layers), C=${model.dModel}, n=${connectionOf(model).streams(model)}, ` +
        `${(nParams / 1e6).toFixed(3)}M params; ${corpus.source}: ${corpus.train.length} train / ${corpus.val.length} val bytes; run dir ${outDir}`,
    )
    if (ck && train.steps > train.scheduleSteps!) {
      this.logToStderr(
        `note: the lr schedule keeps its ${train.scheduleSteps}-step horizon; steps ${train.scheduleSteps! + 1}–${train.steps} run at the minimum lr ${(train.lr * train.minLrRatio).toExponential(2)}`,
      )
    }

    try {
      // Evaluate only: a checkpoint resumed to its own step. Nothing is written.
      if (ck && train.steps === ck.manifest.step) {
        engine.load({params: ck.params})
        const valLoss = await evaluate(engine, corpus.val, train.evalWindows, train.batch)
        this.log(
          `${ck.dir}: step ${ck.manifest.step}, val loss ${valLoss.toFixed(4)} nats/byte (${train.evalWindows} windows of ${model.seqLen} bytes)`,
        )
        return {arch: model.arch, backend, checkpoint: ck.dir, step: ck.manifest.step, valLoss, evaluateOnly: true}
      }

      return await this.train(
        flags.progress && !this.jsonEnabled(),
        {model, train, corpus, outDir, engine, resume: ck},
        {backend, params: nParams},
      )
    } finally {
      engine.dispose()
    }
  }

  /** 4. The run, with a progress bar and signal handling; 5. the report. */
  private async train(
    progress: boolean,
    o: Parameters<typeof runTraining>[0],
    extra: {backend: object; params: number},
  ) {
    const {model, train, corpus} = o
    const startStep = o.resume?.manifest.step ?? 0
    const bar = progressBar(model.arch, train.steps, progress)
    bar.start(startStep)
    const t0 = performance.now()
    let [lastVal, lastLoss, tokens, stepSeconds] = ['-', '-', 0, 0]
    const show = (step: number) => {
      const perStep = (performance.now() - t0) / 1000 / Math.max(1, step - startStep) // includes evaluation and saving
      bar.update(step, {
        loss: lastLoss,
        val: lastVal,
        tok_s: stepSeconds > 0 ? Math.round(tokens / stepSeconds) : '-',
        remaining: formatSeconds(perStep * (train.steps - step)),
      })
    }

    // SIGINT/SIGTERM: finish the current step, save a checkpoint, exit 130/143 (128 + the signal number, as a shell
    // reports a process the signal killed, so scripts see "interrupted", not success). Only the first signal is ours:
    // taking the listeners off restores the default action, so a second one ends the process at once. Both are noticed
    // only when the step in progress yields (a synchronous cpu-backend step can hold the process for minutes).
    const stop = new AbortController()
    const onSignal = (sig: NodeJS.Signals) => {
      process.removeListener('SIGINT', onSignal)
      process.removeListener('SIGTERM', onSignal)
      stop.abort(sig)
      process.stderr.write(
        `\n${sig}: finishing the current step, then saving a checkpoint (${sig} again aborts at once)\n`,
      )
    }

    const onNonFinite = (e: NonFiniteEvent) => {
      if (e.action === 'stop') return // the error line says it all
      const then =
        e.action === 'skip' ? 'update skipped' : `rolled back to step ${e.restoredStep}, lr scale now ${e.lrScale}`
      this.logToStderr(
        `\nstep ${e.step}: non-finite ${Number.isFinite(e.loss) ? 'gradient norm' : 'loss'}, starting in the ${e.origin.pass} pass at ${e.origin.where}; ${then}`,
      )
    }

    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
    let summary
    try {
      summary = await runTraining({
        ...o,
        signal: stop.signal,
        onNonFinite,
        onStep(r) {
          tokens += train.batch * model.seqLen
          stepSeconds += r.seconds
          lastLoss = r.loss.toFixed(3)
          show(r.step)
        },
        onEval(step, v) {
          lastVal = v.toFixed(3)
          show(step)
        },
      })
    } finally {
      process.removeListener('SIGINT', onSignal)
      process.removeListener('SIGTERM', onSignal)
      bar.stop()
    }

    const signal = summary.interrupted ? String(stop.signal.reason) : undefined
    const resumeWith = summary.checkpoint ? `mhc train --resume ${o.outDir}` : undefined
    const result = {
      arch: model.arch,
      backend: extra.backend,
      params: extra.params,
      outDir: o.outDir,
      checkpoint: summary.checkpoint ?? o.resume?.dir,
      startStep: summary.startStep,
      steps: summary.steps,
      trainLoss: summary.trainLoss,
      valLoss: summary.valLoss,
      bestValLoss: summary.evals.length > 0 ? Math.min(...summary.evals.map((e) => e.valLoss)) : undefined,
      tokensPerSec: summary.tokensPerSec,
      seconds: summary.seconds,
      model,
      train: summary.train,
      data: {source: corpus.source, sha256: corpus.sha256},
      skipped: summary.skipped,
      rollbacks: summary.rollbacks,
      evals: summary.evals,
      ...(signal
        ? {interrupted: {signal, step: summary.steps, checkpoint: summary.checkpoint, resume: resumeWith}}
        : {}),
    }
    if (summary.history.length > 0) {
      const f = (v: number | undefined, d = 4) => (v === undefined ? '-' : v.toFixed(d))
      const n = connectionOf(model).streams(model)
      this.log(
        table(
          ['run', 'value'],
          [
            ['arch', `${model.arch}${n > 1 ? ` (n=${n})` : ''}`],
            ['parameters', extra.params.toLocaleString('en-US')],
            ['steps', `${summary.startStep} → ${summary.steps}`],
            ['train loss (last step)', f(summary.trainLoss)],
            ['val loss (nats/byte)', f(summary.valLoss)],
            ['best val loss', f(result.bestValLoss)],
            ['tokens/s (train steps)', f(summary.tokensPerSec, 0)],
            ['wall time (s)', f(summary.seconds, 1)],
            ...(summary.skipped || summary.rollbacks
              ? [
                  [
                    'non-finite steps',
                    `${summary.skipped} skipped, ${summary.rollbacks} rolled back (lr scale ${summary.train.lrScale ?? 1})`,
                  ],
                ]
              : []),
            ['checkpoint', summary.checkpoint ?? '-'],
          ],
        ),
      )
      this.log(chart('train loss (nats/byte) over steps', [summary.history.map((h) => h.loss)], ['loss']))
      this.log(chart('global gradient norm over steps', [summary.history.map((h) => h.gradNorm)], ['grad norm']))
    }

    if (signal) {
      // Written directly (also under --json): the last line tells the user how to continue.
      process.stderr.write(
        `interrupted at step ${summary.steps}; ${summary.checkpoint ? `checkpoint ${summary.checkpoint}; resume with: ${resumeWith}` : 'no checkpoint yet'}\n`,
      )
      process.exitCode = signal === 'SIGTERM' ? EXIT.sigterm : EXIT.sigint
    }

    return result
  }
}

function formatSeconds(s: number): string {
  const t = Math.max(0, Math.round(s))
  return t >= 60 ? `${Math.floor(t / 60)}m${String(t % 60).padStart(2, '0')}s` : `${t}s`
}
