import {Args, Flags} from '@oclif/core'
import {existsSync, mkdtempSync, readdirSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {backendFlag, gateFlags, numberFlag, positiveFlag, tokensFlag} from '../cli/flags.js'
import {BaseCommand, UsageError, assertFits, assertWritableDir, assertWritableFile, flagError} from '../cli/base.js'
import {table} from '../cli/render.js'
import {writeFileAtomic} from '../model/atomic.js'
import {backendJson} from '../model/backend-names.js'
import {CheckpointData, LIMITS, isCheckpointName, readCheckpoint} from '../model/checkpoint.js'
import {Corpus, checkpointCorpus, loadCorpus} from '../model/data.js'
import {ARCHS, Arch, numConnections, parameterCount} from '../model/model.js'
import {PRESETS, configFromPreset} from '../model/presets.js'
import {assertUnlocked} from '../model/run-lock.js'
import {METRICS_FILE, NonFiniteError, runTraining} from '../model/train.js'
import {analyzeGains, identityLayers} from '../profile/gain.js'
import {checkpointMaps} from '../profile/maps.js'
import {CheckInput, Thresholds, describeValue, evaluateRules, readStepRecords, toJUnit, worstStochasticity} from '../profile/stability.js'

const RULES = ['finite-loss', 'finite-gradients', 'finite-weights', 'loss-spike', 'grad-norm-explosion', 'single-gain', 'composite-gain', 'doubly-stochastic']
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
  ]

  static override args = {run: Args.string({required: false, description: 'run directory to check (or use --train)'})}
  static override flags = {
    train: Flags.boolean({default: false, description: 'train a short run first (flags below), then check it', helpGroup: 'TRAIN'}),
    arch: Flags.option({options: ARCHS, default: 'mhc' as Arch, description: 'connection to train', helpGroup: 'TRAIN'})(),
    preset: Flags.option({options: Object.keys(PRESETS), default: 'tiny', description: 'preset to train', helpGroup: 'TRAIN'})(),
    layers: Flags.integer({min: 1, max: LIMITS.layers, description: 'Transformer blocks', helpGroup: 'TRAIN'}),
    'd-model': Flags.integer({min: 1, max: LIMITS.dModel, description: 'model width', helpGroup: 'TRAIN'}),
    steps: Flags.integer({min: 1, max: LIMITS.steps, description: 'optimiser steps', helpGroup: 'TRAIN'}),
    lr: numberFlag({description: 'peak learning rate', check: (v) => v > 0 && v < 10, rule: 'a number in (0, 10)', helpGroup: 'TRAIN'}),
    'grad-clip': numberFlag({description: 'max gradient norm; 0 = no clipping', check: (v) => v >= 0, rule: 'a number >= 0', helpGroup: 'TRAIN'}),
    seed: Flags.integer({min: 0, max: LIMITS.seed, description: 'seed', helpGroup: 'TRAIN'}),
    out: Flags.string({description: 'where --train writes its run [default: a new temporary directory]', helpGroup: 'TRAIN'}),
    data: Flags.string({description: 'UTF-8 text to train on / sample for gains [default: the run corpus]'}),
    'spike-k': positive('loss-spike: robust standard deviations above the rolling median', 6),
    'spike-window': Flags.integer({min: 5, default: 50, description: 'rolling window (steps) for the spike and explosion rules'}),
    'warmup-steps': Flags.integer({min: 0, description: 'steps excluded from the spike and explosion rules [default: the larger of the run warm-up and 10% of its steps]'}),
    'max-grad-ratio': positive('grad-norm-explosion: max ratio of the gradient norm to its rolling median', 10),
    ...gateFlags({maxGain: 1.5, maxCompositeGain: 2}),
    // t_max = 20 leaves the column sums of badly conditioned tokens off by a few percent (the paper's "backward
    // deviates slightly"); 0.1 flags a broken projection, not that.
    'ds-tolerance': positive('doubly-stochastic: max |row or column sum − 1| of any token H_res', 0.1),
    tokens: tokensFlag(),
    skip: Flags.string({multiple: true, options: RULES, description: 'rule to leave out (repeatable)'}),
    junit: Flags.string({description: 'write a JUnit XML report (one testcase per rule)'}),
    backend: backendFlag(),
  }

  async run() {
    const {args, flags} = await this.parse(Check).catch(flagError)
    this.verbose = flags.verbose
    const t0 = performance.now()
    if (flags.train === (args.run !== undefined)) throw new UsageError('give either a run directory or --train (not both)')
    if (flags.junit) assertWritableFile(flags.junit, '--junit')
    if (flags.out) assertWritableDir(flags.out, '--out')

    // Inputs first: the run's metrics and checkpoint, or the config and corpus of the run to train.
    let runDir: string
    let corpus: Corpus | undefined
    let toTrain: ReturnType<typeof configFromPreset> | undefined
    if (flags.train) {
      toTrain = configFromPreset(flags.preset, flags.arch, {layers: flags.layers, dModel: flags['d-model'], steps: flags.steps, lr: flags.lr, gradClip: flags['grad-clip'], seed: flags.seed})
      if (toTrain.model.dModel % toTrain.model.heads !== 0) throw new UsageError(`--d-model ${toTrain.model.dModel} must be divisible by the preset's ${toTrain.model.heads} heads`)
      corpus = loadCorpus(flags.data, 0.1, toTrain.model.seqLen + 1)
      if (flags.out) {
        assertUnlocked(flags.out)
        if (existsSync(join(flags.out, METRICS_FILE))) throw new UsageError(`${flags.out} already holds a run; check it with \`mhc check ${flags.out}\` or choose another --out`)
      }
      runDir = flags.out ?? mkdtempSync(join(tmpdir(), `mhc-check-${flags.arch}-`))
    } else {
      runDir = args.run!
      if (!existsSync(join(runDir, METRICS_FILE))) throw new UsageError(`${runDir}: no ${METRICS_FILE} (not a run directory)`)
    }
    // A run trained here without --out lives in a temporary directory that goes when the check is done.
    const temporary = flags.train && !flags.out
    try {
      return await this.check(flags, runDir, t0, corpus, toTrain, temporary)
    } finally {
      if (temporary) rmSync(runDir, {recursive: true, force: true})
    }
  }

  private async check(flags: any, runDir: string, t0: number, corpus: Corpus | undefined, toTrain: ReturnType<typeof configFromPreset> | undefined, temporary: boolean) {
    const backend = await this.chooseBackend(flags.backend)
    if (toTrain) {
      assertFits({...toTrain.model, params: parameterCount(toTrain.model), batch: toTrain.train.batch, recomputeBlock: 0}, backend.backend)
      this.logToStderr(`training ${toTrain.model.arch} (${flags.preset}, ${toTrain.model.layers} blocks, ${toTrain.train.steps} steps, grad clip ${toTrain.train.gradClip || 'off'}) into ${runDir}`)
      try {
        await runTraining({...toTrain, corpus: corpus!, outDir: runDir, backend: backend.backend})
      } catch (e) {
        if (!(e instanceof NonFiniteError)) throw e
        this.logToStderr(`training stopped: ${e.message}`) // the finiteness rules report it
      }
    }

    const {steps, tornLastLine} = readStepRecords(join(runDir, METRICS_FILE))
    if (tornLastLine) this.logToStderr(`note: the last line of ${join(runDir, METRICS_FILE)} is incomplete (a run killed mid-write) and was skipped`)
    // A run that saved no complete checkpoint (it diverged first) fails the weight and gain rules; a corrupt one is bad input.
    const saved = readdirSync(runDir).some((f) => isCheckpointName(f) && existsSync(join(runDir, f, 'manifest.json')))
    const data: CheckpointData | undefined = saved ? readCheckpoint(runDir, {allowNonFinite: true}) : undefined
    const input: CheckInput = {steps, skip: flags.skip}
    if (data) {
      const {model} = data.manifest
      const nonFiniteWeights = Object.values(data.weights).reduce((s, t) => s + (t.data as Float32Array).filter((v) => !Number.isFinite(v)).length, 0)
      input.checkpoint = {dir: data.dir, arch: model.arch, nonFiniteWeights}
      if (model.arch === 'baseline') input.checkpoint.gains = identityLayers(numConnections(model))
      else if (nonFiniteWeights === 0) {
        const text = corpus ?? checkpointCorpus(data.manifest.data, flags.data, model.seqLen + 1, false)
        const maps = await checkpointMaps(data, text.val, flags.tokens)
        input.checkpoint.gains = analyzeGains(maps.hRes, model.expansion).layers
        if (model.arch === 'mhc') input.checkpoint.stochasticity = worstStochasticity(maps.hRes, model.expansion)
      }
    }
    const thresholds: Thresholds = {
      spikeK: flags['spike-k'], spikeWindow: flags['spike-window'], warmup: flags['warmup-steps'] ?? defaultWarmup(data?.manifest.train ?? toTrain?.train, steps.length),
      maxGradRatio: flags['max-grad-ratio'], maxGain: flags['max-gain'], maxCompositeGain: flags['max-composite-gain'],
      gainAggregate: flags['gate-on'], dsTolerance: flags['ds-tolerance'],
    }
    const results = evaluateRules(input, thresholds)
    const seconds = (performance.now() - t0) / 1000
    const failed = results.filter((r) => !r.pass)

    this.log(table(['rule', 'status', 'measured', 'threshold', 'where'], results.map((r) => [r.rule, r.pass ? 'pass' : 'FAIL', describeValue(r).value, describeValue(r).threshold, r.detail ?? '']),
      ['left', 'center', 'right', 'right', 'left']))
    this.log(`${runDir}: ${results.length} rules, ${failed.length} failed${temporary ? ' (a temporary run, removed now; --out keeps it)' : ''}`)
    for (const r of failed) this.logToStderr(`FAIL ${r.rule}: ${describeValue(r).value} (threshold ${describeValue(r).threshold}, ${r.unit})${r.detail ? `; ${r.detail}` : ''}`)
    if (flags.junit) {
      writeFileAtomic(flags.junit, toJUnit(results, `mhc check ${temporary ? `--train --arch ${toTrain!.model.arch}` : runDir}`, seconds))
      this.logToStderr(`JUnit report written to ${flags.junit}`)
    }
    if (failed.length) process.exitCode = 1
    return {backend: backendJson(backend), run: runDir, kept: !temporary, arch: data?.manifest.model.arch ?? toTrain?.model.arch, checkpoint: data?.dir,
      pass: failed.length === 0, rules: results, thresholds}
  }
}

/** Early training moves fast by design: exclude the warm-up, and at least the first 10% of the steps. */
function defaultWarmup(train: {warmup: number} | undefined, steps: number): number {
  return Math.max(train?.warmup ?? 0, Math.ceil(0.1 * steps))
}

