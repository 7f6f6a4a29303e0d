import {Flags} from '@oclif/core'

import {assertFits, assertWritableFile, BaseCommand, flagError, UsageError} from '../cli/base.js'
import {
  activationBytesFlag,
  backendFlag,
  CHART_EXTENSIONS,
  chartFlag,
  microBatchesFlag,
  microBatchSizeFlag,
  MODEL_FLAGS,
  pick,
  pipelineStagesFlag,
  TRAIN_FLAGS,
} from '../cli/flags.js'
import {chart, progressBar, table} from '../cli/render.js'
import {writeLineChartSvg} from '../cli/svg.js'
import {modelConfig, numConnections} from '../model/config.js'
import {connectionOf} from '../model/connections/index.js'
import {backendJson} from '../model/engines/backends.js'
import {parameterCount} from '../model/params.js'
import {readCheckpoint} from '../model/train/run-dir.js'
import {GiB, MemoryConfig, memoryReport} from '../profile/cost-models/memory.js'
import {PAPER_MODEL_NAMES, PAPER_MODELS} from '../profile/cost-models/presets.js'
import {calibrate, measurePeaks, predictPeak} from '../profile/measure/memory.js'

const bytesFlag = (description: string, dflt: number) => Flags.integer({min: 0, max: 16, default: dflt, description})
const MiB = 2 ** 20

export default class ProfileMemory extends BaseCommand {
  static override description = `Memory of the mHC residual path against the recompute block size L_r, modelled and measured.

Model (paper §4.3.2, Table 3, Eq. 20): per token, the block inputs nC·⌈L/L_r⌉ and every layer's F output C are
stored, and the block being recomputed holds (n+2)C·L_r; for every L_r from 1 to L, the exact integer argmin (ties
reported) beside the closed form √(nL/(n+2)). In context: weights, gradients, optimizer states, the rest of the
Transformer's activations (Korthikanti et al.), per GPU of the first pipeline stage. --measure runs real
forward+backward passes of a small mHC model on the current backend for each L_r and compares the peak memory
(tf.profile) with this implementation's model.`
  static override examples = [
    '<%= config.bin %> <%= command.id %>',
    '<%= config.bin %> <%= command.id %> --preset paper-27b --layer-unit sublayers --json',
    '<%= config.bin %> <%= command.id %> --checkpoint runs/mhc',
    '<%= config.bin %> <%= command.id %> --measure --layers 24 --d-model 16 --expansion 8',
  ]
  static override flags = {
    preset: Flags.option({
      options: PAPER_MODEL_NAMES,
      default: 'paper-27b',
      description: "model of the paper's Table 5",
    })(),
    checkpoint: Flags.string({description: "use a checkpoint's model config instead of a preset"}),
    ...pick(MODEL_FLAGS, ['layers', 'd-model', 'expansion', 'heads', 'seq-len', 'mlp-ratio']),
    'micro-batch-size': microBatchSizeFlag(),
    'total-params': Flags.integer({
      min: 1,
      description: 'all parameters (MoE: every expert) [default: the preset / checkpoint]',
    }),
    'layer-unit': Flags.option({
      options: ['blocks', 'sublayers'] as const,
      default: 'blocks' as const,
      description:
        'what L counts in Eq. 20: Transformer blocks, or attention and MLP sublayers (the paper is ambiguous; the answer differs)',
    })(),
    'pipeline-stages': pipelineStagesFlag(),
    'micro-batches': microBatchesFlag(),
    'tensor-parallel': Flags.integer({min: 1, default: 1, description: 'tensor-parallel degree t'}),
    'activation-bytes': activationBytesFlag(),
    'weight-bytes': bytesFlag('bytes per parameter for the weights (bf16: 2)', 2),
    'grad-bytes': bytesFlag('bytes per parameter for gradients (fp32 accumulation: 4)', 4),
    'optimizer-bytes': bytesFlag('bytes per parameter for optimizer states (fp32 master + Adam m, v: 12)', 12),
    'optimizer-shards': Flags.integer({
      min: 1,
      default: 1,
      description: 'ZeRO-1: data-parallel ranks sharing the optimizer states',
    }),
    'transformer-recompute': Flags.option({
      options: ['none', 'selective', 'full'] as const,
      default: 'selective' as const,
      description: 'recompute of the rest of the activations',
    })(),
    measure: Flags.boolean({
      default: false,
      description:
        'measure real forward+backward passes of a small model for every L_r (uses --layers, --d-model, --expansion, --seq-len, --heads, --mlp-ratio, --batch; defaults 16, 32, 4, 8, 1, 1, 64)',
    }),
    batch: TRAIN_FLAGS.batch,
    chart: chartFlag('memory against L_r'),
    backend: backendFlag('--measure: compute backend'),
  }

  async run() {
    const {flags} = await this.parse(ProfileMemory).catch(flagError)
    this.verbose = flags.verbose
    if (flags.chart) assertWritableFile(flags.chart, '--chart', CHART_EXTENSIONS)
    return flags.measure ? this.measure(flags) : this.model(flags)
  }

  private async model(flags: any) {
    const preset = PAPER_MODELS[flags.preset]
    let base = {
      name: preset.name,
      layers: preset.layers,
      dModel: preset.dModel,
      heads: preset.heads,
      seqLen: preset.seqLen,
      expansion: preset.expansion,
      totalParams: preset.paper.totalParams,
      stages: preset.pipeline.stages,
      microBatches: preset.pipeline.microBatches,
      microBatchSize: preset.pipeline.microBatchSize,
    }
    if (flags.checkpoint) {
      const m = readCheckpoint(flags.checkpoint).manifest.model
      base = {
        name: flags.checkpoint,
        layers: m.layers,
        dModel: m.dModel,
        heads: m.heads,
        seqLen: m.seqLen,
        expansion: connectionOf(m).streams(m),
        totalParams: parameterCount(m),
        stages: 1,
        microBatches: 1,
        microBatchSize: 1,
      }
    }

    const c: MemoryConfig = {
      name: base.name,
      layers: flags.layers ?? base.layers,
      dModel: flags['d-model'] ?? base.dModel,
      heads: flags.heads ?? base.heads,
      seqLen: flags['seq-len'] ?? base.seqLen,
      microBatchSize: flags['micro-batch-size'] ?? base.microBatchSize,
      expansion: flags.expansion ?? base.expansion,
      totalParams: flags['total-params'] ?? base.totalParams,
      pipelineStages: flags['pipeline-stages'] ?? base.stages,
      microBatches: flags['micro-batches'] ?? base.microBatches,
      tensorParallel: flags['tensor-parallel'],
      layerUnit: flags['layer-unit'],
      activationBytes: flags['activation-bytes'],
      weightBytes: flags['weight-bytes'],
      gradBytes: flags['grad-bytes'],
      optimizerBytes: flags['optimizer-bytes'],
      optimizerShards: flags['optimizer-shards'],
      transformerRecompute: flags['transformer-recompute'],
    }
    if (c.layers % c.pipelineStages !== 0)
      throw new UsageError(`--pipeline-stages ${c.pipelineStages} must divide the ${c.layers} blocks`)
    // The same rule as a trained mHC model: n = 1 is no hyper-connection (H_pre's bias would be −ln 0).
    const problem = connectionOf({arch: 'mhc'}).problem(modelConfig('mhc', {expansion: c.expansion}))
    if (problem) throw new UsageError(`--expansion ${c.expansion}: ${problem}`)
    const r = memoryReport(c)
    const unit = c.layerUnit === 'blocks' ? 'Transformer blocks' : 'sublayers (attention and MLP counted separately)'
    const tokens = c.seqLen * c.microBatchSize
    const ties = r.curve.argmin.length > 1 ? ` (tie: ${r.curve.argmin.join(', ')})` : ''
    // The headline first: the optimum and what it saves where memory is tightest.
    const gib = (b: number) => `${(b / GiB).toFixed(2)} GiB`
    const total = r.rows.at(-1)!
    this.log(
      `${c.name}: L_r* = ${r.curve.argmin[0]}${ties} (closed form √(nL/(n+2)) = ${r.curve.closedForm.toFixed(2)})`,
    )
    this.log(
      `first stage, per GPU: mHC residual path ${gib(r.paths[0].perGpuBytes)} at L_r* ` +
        `(${gib(r.paths[1].perGpuBytes)} without recompute, HC ${gib(r.paths[2].perGpuBytes)}); ${gib(total.bytes)} in all`,
    )
    this.log(
      `L = ${r.L} ${unit}, n = ${c.expansion}, C = ${c.dModel}; ${tokens} tokens per micro-batch, ${c.activationBytes}-byte activations;\n` +
        `L_r* minimises the residual path's nC·⌈L/L_r⌉ + (n+2)C·L_r (paper Eq. 20) over integer L_r\n`,
    )
    const mb = (elements: number) => ((elements * tokens * c.activationBytes) / MiB).toFixed(1)
    const show = r.curve.points.filter(
      (p) =>
        p.recomputeBlock <= 12 ||
        r.curve.argmin.includes(p.recomputeBlock) ||
        p.recomputeBlock === r.L ||
        p.recomputeBlock % 5 === 0,
    )
    this.log(
      table(
        ['L_r', 'stored /token', 'transient /token', 'total /token', 'total MiB /micro-batch', ''],
        show.map((p) => [
          p.recomputeBlock,
          p.counts.stored,
          p.counts.transient,
          p.counts.total,
          mb(p.counts.total),
          r.curve.argmin.includes(p.recomputeBlock) ? '← L_r*' : '',
        ]),
      ),
    )
    this.log(
      chart(
        'mHC residual-path activation memory per token (elements) against L_r',
        [r.curve.points.map((p) => p.counts.total)],
        ['total'],
        {digits: 0},
      ),
    )
    this.log(
      `\nresidual paths on the first pipeline stage (${r.perStage.layers} ${c.layerUnit}, ${r.perStage.inFlight} micro-batches in flight), per GPU:`,
    )
    this.log(
      table(
        ['path', 'elements / token', 'GiB / GPU'],
        r.paths.map((p) => [p.name, p.perTokenElements.toLocaleString('en-US'), (p.perGpuBytes / GiB).toFixed(3)]),
      ),
    )
    if (flags.chart) {
      const pts = r.curve.points
      await writeLineChartSvg(flags.chart, {
        title: `${c.name}: mHC residual-path activation memory against L_r (Eq. 20, L = ${r.L} ${c.layerUnit})`,
        xTitle: 'L_r',
        yTitle: 'elements per token',
        series: [
          {name: 'total', x: pts.map((p) => p.recomputeBlock), y: pts.map((p) => p.counts.total)},
          {name: 'stored: nC·⌈L/L_r⌉ + C·L', x: pts.map((p) => p.recomputeBlock), y: pts.map((p) => p.counts.stored)},
          {name: 'transient: (n+2)C·L_r', x: pts.map((p) => p.recomputeBlock), y: pts.map((p) => p.counts.transient)},
        ],
      })
      this.logToStderr(`chart written to ${flags.chart}`)
    }

    this.log(
      `\nper GPU, first pipeline stage (PP = ${c.pipelineStages}, t = ${c.tensorParallel}), mHC at L_r = ${r.curve.argmin[0]}:`,
    )
    // How each item is counted: under --verbose (the table then runs past 120 columns), always in --json.
    this.log(
      table(
        ['item', 'GiB', ...(this.verbose ? ['how'] : [])],
        r.rows.map((row) => [row.item, (row.bytes / GiB).toFixed(2), ...(this.verbose ? [row.note] : [])]),
        ['left', 'right', 'left'],
      ),
    )
    if (!this.verbose) this.log('(how each item is counted: --verbose; everything: --json)')
    return {
      config: c,
      L: r.L,
      layerUnit: c.layerUnit,
      argmin: r.curve.argmin,
      closedForm: r.curve.closedForm,
      curve: r.curve.points,
      paths: r.paths,
      perGpu: r.rows,
      perStage: r.perStage,
    }
  }

  private async measure(flags: any) {
    const batch = flags.batch ?? 64
    const cfg = modelConfig('mhc', {
      seqLen: flags['seq-len'] ?? 8,
      layers: flags.layers ?? 16,
      dModel: flags['d-model'] ?? 32,
      heads: flags.heads ?? 1,
      mlpRatio: flags['mlp-ratio'] ?? 1,
      expansion: flags.expansion ?? 4,
    })
    if (cfg.dModel % cfg.heads !== 0)
      throw new UsageError(`--d-model ${cfg.dModel} must be divisible by --heads ${cfg.heads}`)
    if (cfg.expansion < 2) throw new UsageError('--expansion must be at least 2 for an mHC model')
    // Every L_r is measured, so the engine must support recomputation.
    const engines = await this.openEngines(flags.backend, {model: cfg, recomputeBlock: 1})
    assertFits({...cfg, params: parameterCount(cfg), batch, recomputeBlock: 0}, engines.report.backend)
    const L = numConnections(cfg)
    this.logToStderr(
      `calibrating on a one-block model, then measuring L_r = 1..${L} on ${cfg.layers} blocks (${L} layers), n = ${cfg.expansion}, C = ${cfg.dModel}, ${batch}×${cfg.seqLen} tokens`,
    )
    // Progress on stderr (never under --json): one training step's peak per L_r, seconds each on a CPU.
    const bar = progressBar(
      'L_r',
      L,
      !this.jsonEnabled(),
      'measured {value}/{total} | L_r = {lr}: {mib} MiB | eta {eta_formatted}',
    )
    bar.start(0, {lr: '-', mib: '-'})
    let measured
    let model
    try {
      model = await calibrate(engines, cfg, batch)
      measured = await measurePeaks(
        engines,
        cfg,
        batch,
        Array.from({length: L}, (_, i) => i + 1),
        1,
        (p, done) => bar.update(done, {lr: p.recomputeBlock, mib: (p.peakBytes / MiB).toFixed(1)}),
      )
    } finally {
      bar.stop()
    }

    const rows = measured.map((p) => ({
      recomputeBlock: p.recomputeBlock,
      measured: p.peakBytes,
      modelled: predictPeak(model, cfg, p.recomputeBlock),
      relError: (predictPeak(model, cfg, p.recomputeBlock) - p.peakBytes) / p.peakBytes,
    }))
    const argmin = (xs: number[]) =>
      xs
        .map((v, i) => ({v, Lr: i + 1}))
        .filter((p) => p.v <= Math.min(...xs) * (1 + 1e-3))
        .map((p) => p.Lr)
    const measuredBest = argmin(rows.map((r) => r.measured))
    const modelledBest = argmin(rows.map((r) => r.modelled))
    const maxErr = Math.max(...rows.map((r) => Math.abs(r.relError)))
    // The headline first: where the measured and modelled optima are and how far the model is off.
    const agree = measuredBest.some((l) => modelledBest.includes(l))
    this.log(
      `measured optimum L_r = ${measuredBest.join(' or ')}; modelled ${modelledBest.join(' or ')} (${agree ? 'agree' : 'DISAGREE'}); largest error ${(100 * maxErr).toFixed(1)}%`,
    )
    this.log(
      `model: ${(model.storedPerBlock / MiB).toFixed(3)} MiB kept per block, ${(model.perLayer / MiB).toFixed(3)} MiB per recomputed layer,\n` +
        'calibrated on one block (ties within 0.1% count as ties)',
    )
    this.log(
      table(
        ['L_r', 'measured MiB', 'modelled MiB', 'error', ''],
        rows.map((r) => [
          r.recomputeBlock,
          (r.measured / MiB).toFixed(2),
          (r.modelled / MiB).toFixed(2),
          `${(100 * r.relError).toFixed(1)}%`,
          [
            measuredBest.includes(r.recomputeBlock) ? 'measured min' : '',
            modelledBest.includes(r.recomputeBlock) ? 'modelled min' : '',
          ]
            .filter(Boolean)
            .join(', '),
        ]),
      ),
    )
    this.log(
      chart(
        'peak memory above the weights (MiB) against L_r',
        [rows.map((r) => r.measured / MiB), rows.map((r) => r.modelled / MiB)],
        ['measured', 'modelled'],
        {digits: 1},
      ),
    )
    if (flags.chart) {
      await writeLineChartSvg(flags.chart, {
        title: `Peak memory against the recompute block L_r (${cfg.layers} blocks, n = ${cfg.expansion}, C = ${cfg.dModel}, ${engines.report.backend})`,
        xTitle: 'L_r (layers per recompute block)',
        yTitle: 'MiB above the weights',
        series: [
          {
            name: 'measured (tf.profile peakBytes)',
            x: rows.map((r) => r.recomputeBlock),
            y: rows.map((r) => r.measured / MiB),
          },
          {name: 'modelled', x: rows.map((r) => r.recomputeBlock), y: rows.map((r) => r.modelled / MiB)},
        ],
      })
      this.logToStderr(`chart written to ${flags.chart}`)
    }

    return {
      backend: backendJson(engines.report),
      model: cfg,
      batch,
      calibration: model,
      rows,
      measuredOptimum: measuredBest,
      modelledOptimum: modelledBest,
      optimaAgree: agree,
      maxRelError: maxErr,
    }
  }
}
