import {Flags} from '@oclif/core'
import {join} from 'node:path'

import type {NonFiniteEvent} from '../model/errors.js'

import {
  assertFits,
  assertWritableDir,
  BaseCommand,
  EXIT,
  flagError,
  invocation,
  shellQuote,
  UsageError,
} from '../cli/base.js'
import {archFlag, backendFlag, FLAG_KEYS, MODEL_FLAGS, overridesFrom, pick, TRAIN_FLAGS} from '../cli/flags.js'
import {chart, progressBar, table} from '../cli/render.js'
import {readRunConfig, runConfigDoc, runConfigYaml} from '../cli/run-config.js'
import {configFromPreset, DEFAULT_ARCH, DEFAULT_PRESET, ModelConfig, PRESETS, TrainConfig} from '../model/config.js'
import {connectionOf} from '../model/connections/index.js'
import {backendJson, resolveBackendChoice} from '../model/engines/backends.js'
import {checkpointCorpus, loadCorpus} from '../model/io/data.js'
import {modelProblem, parameterCount} from '../model/params.js'
import {evaluate, runTraining} from '../model/train/loop.js'
import {newRunDir, readCheckpoint, resumeRunDir} from '../model/train/run-dir.js'
import {trainingMemoryEstimate} from '../profile/cost-models/memory.js'

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

// The presets as --help shows them: a column per setting that differs between them, the shared values once.
function presetHelp(): string {
  const rows = Object.entries(PRESETS).map(([name, p]) => ({name, ...p.model, ...p.train}) as Record<string, any>)
  const shared: string[] = []
  const grid = (keys: [string, string][]) => {
    const differ = keys.filter(([, k]) => rows.some((r) => r[k] !== rows[0][k]))
    for (const [f, k] of keys) if (!differ.some(([g]) => g === f)) shared.push(`--${f} ${rows[0][k]}`)
    const cells = [
      ['preset', ...differ.map(([f]) => f)],
      ...rows.map((r) => [r.name, ...differ.map(([, k]) => String(r[k]))]),
    ]
    const width = cells[0].map((_, c) => Math.max(...cells.map((row) => row[c].length)))
    return cells.map((row) => row.map((v, c) => (c === 0 ? v.padEnd(width[c]) : v.padStart(width[c]))).join('  '))
  }

  const keys = (flags: object) => Object.keys(flags).map((f) => [f, FLAG_KEYS[f]] as [string, string])
  const inPresets = ([, k]: [string, string]) => k in rows[0]
  const model = grid(keys(MODEL_FLAGS).filter(inPresets))
  const train = grid(keys(TRAIN_FLAGS).filter(inPresets))
  return [...model, '', ...train, '', `Every preset: ${shared.join(' ')}.`].join('\n')
}

// What --config may set: every setting of a run, not the command's own switches (--resume, --config, output modes).
// The run's settings that are neither model nor optimiser: --print-config writes them beside the model/train blocks.
const RUN_SETTINGS = ['out', 'backend', 'init-from', 'keep-last', 'keep-best']
const CONFIGURABLE = [
  'arch',
  'preset',
  'data',
  ...RUN_SETTINGS,
  ...Object.keys(MODEL_FLAGS),
  ...Object.keys(TRAIN_FLAGS),
]

export default class Train extends BaseCommand {
  static override description = `Train (or resume) a byte-level Transformer with a residual, HC or mHC connection.

Defaults: the ${DEFAULT_PRESET} preset, --arch ${DEFAULT_ARCH}, Moby Dick as the corpus, the best backend available. Writes <out>/metrics.jsonl (one JSON record per step and per evaluation) and checkpoints <out>/ckpt-NNNNNN/ (manifest.json + safetensors), with <out>/latest naming the newest (and <out>/best the lowest validation loss, with --keep-best).

Settings come from the preset, then --config FILE (YAML or JSON: flag names as keys, or a manifest's model/train blocks), then flags. --print-config prints the result as a config file; --dry-run checks everything, prints the configuration, parameter count and estimated memory, and exits without training.

Presets (${Object.entries(PRESETS)
    .map(([name, p]) => `${name}: ${p.description}`)
    .join('; ')}):
${presetHelp()}`
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
    'init-from': Flags.string({
      description:
        'start a new run from these weights (a checkpoint or run directory): its model, fresh optimiser and schedule',
    }),
    backend: backendFlag(),
    ...MODEL_FLAGS,
    ...TRAIN_FLAGS,
    'keep-last': Flags.integer({
      min: 0,
      description:
        "keep only the newest N checkpoints (and the best, with --keep-best); 0 keeps all. A resume keeps the run's setting",
    }),
    'keep-best': Flags.boolean({
      allowNo: true,
      description:
        "evaluate at every checkpoint, keep the one with the lowest validation loss, name it in <out>/best. A resume keeps the run's setting",
    }),
    config: Flags.string({description: 'YAML or JSON file of settings (flag names as keys); flags override it'}),
    'print-config': Flags.boolean({
      description: 'print the resolved settings as a config file (YAML; JSON with --json), then exit',
    }),
    'dry-run': Flags.boolean({
      description: 'check everything, print the configuration, parameter count and memory estimate, then exit',
    }),
    progress: Flags.boolean({
      description: 'show a progress bar on stderr (never under --json)',
      default: true,
      allowNo: true,
    }),
  }

  async run() {
    const {flags: cli} = await this.parse(Train).catch(flagError)
    this.verbose = cli.verbose
    // Preset < config file < flags: the file's values fill in what the command line did not give.
    const fromFile = cli.config
      ? await readRunConfig(cli.config, pick(Train.flags as Record<string, any>, CONFIGURABLE))
      : {}
    if (cli.config && cli.resume && Object.keys(fromFile).length > 0)
      throw new UsageError('--config and --resume: a resumed run takes its settings from the checkpoint')
    const flags = {
      ...fromFile,
      ...Object.fromEntries(
        Object.entries(cli).filter(([k, v]) => v !== undefined && !(k in fromFile && k === 'progress')),
      ),
    } as typeof cli
    const given = (names: string[]) => names.filter((f) => (flags as any)[f] !== undefined)
    if (flags.resume && flags['init-from'])
      throw new UsageError('--resume continues a run; --init-from starts a new one from its weights: give one of them')

    // 1. Configuration: a checkpoint's, or a preset's with flag overrides. All input is checked before any work.
    let model: ModelConfig
    let train: TrainConfig
    let outDir: string
    const ck = flags.resume ? readCheckpoint(flags.resume, {optimizer: true}) : undefined
    const init = flags['init-from'] ? readCheckpoint(flags['init-from']) : undefined
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
      const arch = init?.manifest.model.arch ?? flags.arch ?? DEFAULT_ARCH
      ;({model, train} = configFromPreset(flags.preset ?? DEFAULT_PRESET, arch, overrides))
      if (init) {
        const fixed = given([...Object.keys(MODEL_FLAGS), 'arch'])
        if (fixed.length > 0)
          throw new UsageError(`--init-from takes the model from the checkpoint; drop --${fixed.join(', --')}`)
        model = init.manifest.model
      }

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
    // Retention: a resumed run goes on with its checkpoint's unless flags change it (--keep-last 0, --no-keep-best).
    const keep = {
      last: flags['keep-last'] ?? ck?.manifest.keep?.last,
      best: flags['keep-best'] ?? ck?.manifest.keep?.best ?? false,
    }

    if (flags['print-config'] || flags['dry-run']) {
      const settings = {
        ...Object.fromEntries(RUN_SETTINGS.map((k) => [k, (flags as any)[k]])),
        // the retention in force, a resumed run's included
        'keep-last': keep.last,
        'keep-best': flags['keep-best'] ?? (keep.best || undefined),
      }
      const resolved = {arch: model.arch, data: corpus.source, model, train, settings}
      if (flags['print-config']) {
        if (!this.jsonEnabled()) process.stdout.write(runConfigYaml(resolved))
        return runConfigDoc(resolved)
      }

      return this.dryRun(resolved, {outDir, backend: flags.backend, resume: ck?.dir, initFrom: init?.dir, keep})
    }

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
        {model, train, corpus, outDir, engine, resume: ck, init, keepLast: keep.last, keepBest: keep.best},
        {backend, params: nParams},
      )
    } finally {
      engine.dispose()
    }
  }

  /** --dry-run: everything is checked (configs, corpus, run directory); this says what a run would do, and writes nothing. */
  private dryRun(
    c: {arch: string; data: string; model: ModelConfig; train: TrainConfig},
    o: {outDir: string; backend?: string; resume?: string; initFrom?: string; keep: {last?: number; best: boolean}},
  ) {
    const params = parameterCount(c.model)
    const recomputeBlock = c.train.recomputeBlock ?? 0
    const memory = trainingMemoryEstimate({...c.model, params, batch: c.train.batch, recomputeBlock})
    const choice = resolveBackendChoice(o.backend, this.config.configDir)
    const bytes = (b: number) => (b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(1)} MiB`)
    const m = c.model
    const t = c.train
    this.log(
      table(
        ['setting', 'value'],
        [
          ['run directory', `${o.outDir}${o.resume ? ` (resuming ${o.resume})` : ''}`],
          ...(o.initFrom ? [['initial weights', o.initFrom]] : []),
          ['corpus', c.data],
          [
            'arch',
            `${m.arch}${m.arch === 'baseline' ? '' : ` (n = ${m.expansion}${m.arch === 'mhc' ? `, t_max = ${m.sinkhornIters}` : ''})`}`,
          ],
          [
            'model',
            `${m.layers} block${m.layers === 1 ? '' : 's'}, C = ${m.dModel}, ${m.heads} heads, T = ${m.seqLen}, MLP ×${m.mlpRatio}`,
          ],
          ['parameters', params.toLocaleString('en-US')],
          ['steps', `${t.steps} × batch ${t.batch} (${(t.steps * t.batch * m.seqLen).toLocaleString('en-US')} tokens)`],
          ['lr', `${t.lr} peak, ${t.warmup} warm-up steps, cosine to ×${t.minLrRatio}`],
          ['optimiser', `AdamW (β ${t.beta1}, ${t.beta2}), weight decay ${t.weightDecay}, clip ${t.gradClip || 'off'}`],
          ['evaluation', `every ${t.evalEvery || '-'} steps, ${t.evalWindows} windows`],
          [
            'checkpoints',
            `every ${t.saveEvery || '-'} steps and at the end${o.keep.last ? `, newest ${o.keep.last} kept` : ''}${o.keep.best ? ', best kept' : ''}`,
          ],
          ['backend', `${choice.choice} (${choice.source})`],
          [
            'memory (estimate, tfjs)',
            `${bytes(memory.bytes)}: ${bytes(memory.state)} weights, gradients, AdamW; ${bytes(memory.activations)} activations`,
          ],
        ],
        ['left', 'left'],
      ),
    )
    this.logToStderr('dry run: nothing was trained or written')
    return {
      dryRun: true,
      outDir: o.outDir,
      ...c,
      params,
      memory,
      backend: {requested: choice.choice, source: choice.source},
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
      // Validation loss drawn on the training steps' grid, held from each evaluation to the next.
      const valAt = new Map(summary.evals.map((e) => [e.step, e.valLoss]))
      const steps = {from: summary.history[0].step, to: summary.history.at(-1)!.step, title: 'step'}
      this.log(
        chart(
          'train and validation loss (nats/byte)',
          [summary.history.map((h) => h.loss), summary.history.map((h) => valAt.get(h.step) ?? Number.NaN)],
          ['train', 'validation'],
          {x: steps},
        ),
      )
      this.log(chart('global gradient norm', [summary.history.map((h) => h.gradNorm)], ['grad norm'], {x: steps}))
    }

    // What to run next, as it works from here (./bin/run.js from a clone, mhc when installed or linked).
    const next =
      summary.checkpoint && !signal
        ? [
            [`analyze-gain ${shellQuote(o.outDir)}`, 'gains of H_res over depth (the paper’s Fig. 3 and 7)'],
            [`check ${shellQuote(o.outDir)}`, 'stability gates, for CI'],
            [`plot ${shellQuote(o.outDir)} --out ${shellQuote(join(o.outDir, 'curves.svg'))}`, 'training curves'],
            [
              `report ${shellQuote(o.outDir)} --out ${shellQuote(join(o.outDir, 'report.html'))}`,
              'all of it in one HTML file',
            ],
          ].map(([cmd, why]) => ({command: `${invocation(this.config.bin)} ${cmd}`, why}))
        : []
    if (next.length > 0) {
      const width = Math.max(...next.map((x) => x.command.length))
      this.log(`\nnext:\n${next.map((x) => `  ${x.command.padEnd(width)}   # ${x.why}`).join('\n')}`)
    }

    if (signal) {
      // Written directly (also under --json): the last line tells the user how to continue.
      process.stderr.write(
        `interrupted at step ${summary.steps}; ${summary.checkpoint ? `checkpoint ${summary.checkpoint}; resume with: ${resumeWith}` : 'no checkpoint yet'}\n`,
      )
      process.exitCode = signal === 'SIGTERM' ? EXIT.sigterm : EXIT.sigint
    }

    return {...result, next: next.map((x) => x.command)}
  }
}

function formatSeconds(s: number): string {
  const t = Math.max(0, Math.round(s))
  return t >= 60 ? `${Math.floor(t / 60)}m${String(t % 60).padStart(2, '0')}s` : `${t}s`
}
