import {Args, Flags} from '@oclif/core'
import {mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import type {Engines} from '../model/engines/index.js'

import {assertFits, assertWritableDir, assertWritableFile, BaseCommand, flagError, UsageError} from '../cli/base.js'
import {
  archFlag,
  backendFlag,
  gateFlags,
  MODEL_FLAGS,
  overridesFrom,
  pick,
  positiveFlag,
  tokensFlag,
  TRAIN_FLAGS,
} from '../cli/flags.js'
import {table} from '../cli/render.js'
import {configFromPreset, DEFAULT_ARCH, numConnections, PRESETS} from '../model/config.js'
import {connectionOf} from '../model/connections/index.js'
import {backendJson} from '../model/engines/backends.js'
import {NonFiniteError} from '../model/errors.js'
import {writeFileAtomic} from '../model/io/atomic.js'
import {CheckpointData} from '../model/io/checkpoint.js'
import {checkpointCorpus, Corpus, loadCorpus} from '../model/io/data.js'
import {readMapsFile} from '../model/io/maps-file.js'
import {parameterCount} from '../model/params.js'
import {runTraining} from '../model/train/loop.js'
import {assertNoRun, completeCheckpoints, readCheckpoint, readRunSteps} from '../model/train/run-dir.js'
import {analyzeGains, identityLayers} from '../profile/analysis/gain.js'
import {checkpointMaps} from '../profile/analysis/maps.js'
import {
  CheckInput,
  describeValue,
  evaluateRules,
  RuleResult,
  Thresholds,
  toJUnit,
  worstStochasticity,
} from '../profile/analysis/stability.js'

// The flags of the run that --train makes: the same definitions (and bounds) as mhc train's.
const TRAIN_RUN_FLAGS = [
  ...Object.keys(pick(MODEL_FLAGS, ['layers', 'd-model'])),
  ...Object.keys(pick(TRAIN_FLAGS, ['steps', 'lr', 'grad-clip', 'seed'])),
]

// The rules on the training record and weights, then those on the maps: a maps file can only be checked by the latter.
const TRAINING_RULES = ['finite-loss', 'finite-gradients', 'finite-weights', 'loss-spike', 'grad-norm-explosion']
const RULES = [...TRAINING_RULES, 'single-gain', 'composite-gain', 'doubly-stochastic']
const positive = (description: string, dflt: number) => positiveFlag(description, dflt)

export default class Check extends BaseCommand {
  static override description = `Stability gates for CI: is this run (or this connection design) stable?

Checks a run directory (metrics.jsonl + its latest checkpoint), or trains a short run itself with --train, against
rules each reported pass/fail with its measured value and threshold: no NaN/Inf in loss, gradients or weights; no
loss spike (robust z-score against a rolling median, warm-up excluded); no gradient-norm explosion; single and
composite Amax gains of H_res within bounds; H_res doubly stochastic within tolerance (mHC).
Exit codes: 0 every rule passes, 1 a rule failed, 2 bad input, 70 an unexpected failure.`
  static override examples = [
    '<%= config.bin %> <%= command.id %> runs/mhc',
    '<%= config.bin %> <%= command.id %> --train --arch hc --preset tiny --layers 4 --steps 150 --lr 0.01 --grad-clip 0 --junit check.xml',
    '<%= config.bin %> <%= command.id %> runs/hc --max-composite-gain 5 --skip loss-spike --json',
    '<%= config.bin %> <%= command.id %> --maps torch-maps.safetensors --max-gain 1.05',
  ]
  static override args = {run: Args.string({required: false, description: 'run directory to check (or use --train)'})}
  static override flags = {
    train: Flags.boolean({
      default: false,
      description: 'train a short run first (flags below), then check it',
      helpGroup: 'TRAIN',
    }),
    arch: {...archFlag('mhc'), helpGroup: 'TRAIN'},
    preset: Flags.option({
      options: Object.keys(PRESETS),
      default: 'tiny',
      description: 'preset to train',
      helpGroup: 'TRAIN',
    })(),
    ...pick(MODEL_FLAGS, ['layers', 'd-model'], 'TRAIN'),
    ...pick(TRAIN_FLAGS, ['steps', 'lr', 'grad-clip', 'seed'], 'TRAIN'),
    out: Flags.string({
      description: 'where --train writes its run [default: a new temporary directory]',
      helpGroup: 'TRAIN',
    }),
    data: Flags.string({description: 'UTF-8 text to train on / sample for gains [default: the run corpus]'}),
    'spike-k': positive('loss-spike: robust standard deviations above the rolling median', 6),
    'spike-window': Flags.integer({
      min: 5,
      default: 50,
      description: 'rolling window (steps) for the spike and explosion rules',
    }),
    'warmup-steps': Flags.integer({
      min: 0,
      description:
        'steps excluded from the spike and explosion rules [default: the larger of the run warm-up and 10% of its steps]',
    }),
    'max-grad-ratio': positive('grad-norm-explosion: max ratio of the gradient norm to its rolling median', 10),
    ...gateFlags({maxGain: 1.5, maxCompositeGain: 2}),
    // t_max = 20 leaves the column sums of badly conditioned tokens off by a few percent (the paper's "backward
    // deviates slightly"); 0.1 flags a broken projection, not that.
    'ds-tolerance': positive('doubly-stochastic: max |row or column sum − 1| of any token H_res', 0.1),
    tokens: tokensFlag(),
    skip: Flags.string({multiple: true, options: RULES, description: 'rule to leave out (repeatable)'}),
    junit: Flags.string({description: 'write a JUnit XML report (one testcase per rule)'}),
    maps: Flags.string({
      description: 'check a maps file from any framework instead of a run (the gain and doubly-stochastic rules)',
    }),
    backend: backendFlag(),
  }

  async run() {
    const {args, flags} = await this.parse(Check).catch(flagError)
    this.verbose = flags.verbose
    const t0 = performance.now()
    if ([flags.train, args.run !== undefined, flags.maps !== undefined].filter(Boolean).length !== 1)
      throw new UsageError('give one of: a run directory, --train, or --maps FILE')
    if (flags.junit) assertWritableFile(flags.junit, '--junit')
    if (flags.maps) return this.checkMaps(flags, flags.maps, t0)
    if (flags.out) assertWritableDir(flags.out, '--out')

    // Inputs first: the run's metrics and checkpoint, or the config and corpus of the run to train.
    let runDir: string
    let corpus: Corpus | undefined
    let toTrain: ReturnType<typeof configFromPreset> | undefined
    if (flags.train) {
      if (flags.steps === 0) throw new UsageError('--steps 0 trains nothing; give --steps 1 or more')
      toTrain = configFromPreset(flags.preset, flags.arch ?? DEFAULT_ARCH, overridesFrom(flags, TRAIN_RUN_FLAGS))
      if (toTrain.model.dModel % toTrain.model.heads !== 0)
        throw new UsageError(
          `--d-model ${toTrain.model.dModel} must be divisible by the preset's ${toTrain.model.heads} heads`,
        )
      corpus = loadCorpus(flags.data, 0.1, toTrain.model.seqLen + 1)
      if (flags.out) assertNoRun(flags.out, `check it with \`mhc check ${flags.out}\` or choose another --out`)

      runDir = flags.out ?? mkdtempSync(join(tmpdir(), `mhc-check-${flags.arch}-`))
    } else {
      runDir = args.run!
      readRunSteps(runDir) // not a run directory, or a corrupt metrics.jsonl: bad input before any work
    }

    // A run trained here without --out lives in a temporary directory that goes when the check is done.
    const temporary = flags.train && !flags.out
    // A cancelled CI job sends SIGINT or SIGTERM (a closed terminal SIGHUP): the temporary run goes too, and the exit
    // code says "interrupted".
    const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const
    const onSignal = (sig: NodeJS.Signals) => {
      if (temporary) rmSync(runDir, {recursive: true, force: true})
      process.stderr.write(`${sig}: check interrupted${temporary ? `; removed ${runDir}` : ''}\n`)
      for (const s of signals) process.removeListener(s, onSignal)
      process.kill(process.pid, sig) // the default action now: ends as the signal says (a shell shows 130, 143, 129)
    }

    for (const s of signals) process.once(s, onSignal)
    try {
      return await this.check(flags, runDir, t0, corpus, toTrain, temporary)
    } finally {
      for (const s of signals) process.removeListener(s, onSignal)
      if (temporary) rmSync(runDir, {recursive: true, force: true})
    }
  }

  private async check(
    flags: any,
    runDir: string,
    t0: number,
    corpus: Corpus | undefined,
    toTrain: ReturnType<typeof configFromPreset> | undefined,
    temporary: boolean,
  ) {
    const engines = await this.openEngines(flags.backend, toTrain ? {model: toTrain.model} : {})
    if (toTrain) await this.train(engines, toTrain, corpus!, runDir, flags.preset)

    const {path, steps, tornLastLine} = readRunSteps(runDir)
    const notes: string[] = []
    if (tornLastLine) notes.push(`the last line of ${path} is incomplete (a run killed mid-write) and was skipped`)
    for (const note of notes) this.logToStderr(`note: ${note}`)
    if (steps.length === 0 && !toTrain) throw new UsageError(`${path} holds no step records: nothing to check`)
    // A run that saved no complete checkpoint (it diverged first) fails the weight and gain rules; a corrupt one is bad input.
    const saved = completeCheckpoints(runDir).length > 0
    const data: CheckpointData | undefined = saved ? readCheckpoint(runDir, {allowNonFinite: true}) : undefined
    const input: CheckInput = {steps, skip: flags.skip}
    if (data) {
      const {model} = data.manifest
      const conn = connectionOf(model)
      const nonFiniteWeights = Object.values(data.params).reduce(
        (s, t) => s + t.filter((v) => !Number.isFinite(v)).length,
        0,
      )
      input.checkpoint = {
        dir: data.dir,
        arch: model.arch,
        doublyStochastic: conn.resConstraint === 'sinkhorn',
        nonFiniteWeights,
      }
      if (conn.coefficients === 'none') input.checkpoint.gains = identityLayers(numConnections(model))
      else if (nonFiniteWeights === 0) {
        const text = corpus ?? checkpointCorpus(data.manifest.data, flags.data, model.seqLen + 1, false)
        const maps = await checkpointMaps(engines, data, text.val, flags.tokens)
        input.checkpoint.gains = analyzeGains(maps.hRes, conn.streams(model)).layers
        if (conn.resConstraint === 'sinkhorn')
          input.checkpoint.stochasticity = worstStochasticity(maps.hRes, conn.streams(model))
      }
    }

    const thresholds = thresholdsOf(
      flags,
      flags['warmup-steps'] ?? defaultWarmup(data?.manifest.train ?? toTrain?.train, steps.length),
    )
    const results = evaluateRules(input, thresholds)
    const label = temporary ? `--train --arch ${toTrain!.model.arch}` : runDir
    const failed = this.report(
      flags,
      results,
      t0,
      label,
      temporary ? ' (a temporary run, removed now; --out keeps it)' : '',
    )

    return {
      backend: backendJson(engines.report),
      run: runDir,
      kept: !temporary,
      arch: data?.manifest.model.arch ?? toTrain?.model.arch,
      checkpoint: data?.dir,
      pass: failed.length === 0,
      notes,
      rules: results,
      thresholds,
    }
  }

  /** The rule table, the failures on stderr, the JUnit file; sets the exit code. Returns the failed rules. */
  private report(flags: any, results: RuleResult[], t0: number, label: string, note = ''): RuleResult[] {
    const failed = results.filter((r) => !r.pass)
    this.log(
      table(
        ['rule', 'status', 'measured', 'threshold', 'where'],
        results.map((r) => [
          r.rule,
          r.pass ? 'pass' : 'FAIL',
          describeValue(r).value,
          describeValue(r).threshold,
          r.detail ?? '',
        ]),
        ['left', 'center', 'right', 'right', 'left'],
      ),
    )
    this.log(`${label}: ${results.length} rules, ${failed.length} failed${note}`)
    for (const r of failed)
      this.logToStderr(
        `FAIL ${r.rule}: ${describeValue(r).value} (threshold ${describeValue(r).threshold}, ${r.unit})${r.detail ? `; ${r.detail}` : ''}`,
      )
    if (flags.junit) {
      writeFileAtomic(flags.junit, toJUnit(results, `mhc check ${label}`, (performance.now() - t0) / 1000))
      this.logToStderr(`JUnit report written to ${flags.junit}`)
    }

    if (failed.length > 0) process.exitCode = 1
    return failed
  }

  /**
   * A maps file from any framework: the gain rules and, where the file says H_res is Sinkhorn-projected, the
   * doubly-stochastic rule. The rules about training (losses, gradients, weights) have nothing to read there.
   */
  private checkMaps(flags: any, path: string, t0: number) {
    const maps = readMapsFile(path)
    const input: CheckInput = {
      steps: [],
      skip: [...(flags.skip ?? []), ...TRAINING_RULES],
      checkpoint: {
        dir: path,
        arch: maps.arch ?? 'maps',
        doublyStochastic: maps.constraint === 'sinkhorn',
        nonFiniteWeights: 0,
        gains: analyzeGains(maps.hRes, maps.n).layers,
        stochasticity: maps.constraint === 'sinkhorn' ? worstStochasticity(maps.hRes, maps.n) : undefined,
      },
    }
    const thresholds = thresholdsOf(flags, 0)
    const results = evaluateRules(input, thresholds)
    const failed = this.report(flags, results, t0, `--maps ${path}`)
    return {
      backend: null,
      maps: path,
      arch: input.checkpoint!.arch,
      pass: failed.length === 0,
      rules: results,
      thresholds,
    }
  }

  /** Trains the short run that --train asks for; a diverged run is checked like any other (the rules report it). */
  private async train(
    engines: Engines,
    toTrain: ReturnType<typeof configFromPreset>,
    corpus: Corpus,
    runDir: string,
    preset: string,
  ) {
    const {model, train} = toTrain
    assertFits({...model, params: parameterCount(model), batch: train.batch, recomputeBlock: 0}, engines.report.backend)
    this.logToStderr(
      `training ${model.arch} (${preset}, ${model.layers} blocks, ${train.steps} steps, grad clip ${train.gradClip || 'off'}) into ${runDir}`,
    )
    const engine = await engines.create({model, batch: train.batch})
    try {
      await runTraining({model, train, corpus, outDir: runDir, engine})
    } catch (error) {
      if (!(error instanceof NonFiniteError)) throw error
      this.logToStderr(`training stopped: ${error.message}`) // the finiteness rules report it
    } finally {
      engine.dispose()
    }
  }
}

function thresholdsOf(flags: any, warmup: number): Thresholds {
  return {
    spikeK: flags['spike-k'],
    spikeWindow: flags['spike-window'],
    warmup,
    maxGradRatio: flags['max-grad-ratio'],
    maxGain: flags['max-gain'],
    maxCompositeGain: flags['max-composite-gain'],
    gainAggregate: flags['gate-on'],
    dsTolerance: flags['ds-tolerance'],
  }
}

/** Early training moves fast by design: exclude the warm-up, and at least the first 10% of the steps. */
function defaultWarmup(train: {warmup: number} | undefined, steps: number): number {
  return Math.max(train?.warmup ?? 0, Math.ceil(0.1 * steps))
}
