import {Flags} from '@oclif/core'

import type {MeasureResult} from '../profile/measure/apply-path.js'

import {assertWritableFile, BaseCommand, flagError, UsageError} from '../cli/base.js'
import {
  activationBytesFlag,
  backendFlag,
  CHART_EXTENSIONS,
  chartFlag,
  microBatchesFlag,
  microBatchSizeFlag,
  MODEL_FLAGS,
  numberFlag,
  pick,
  pipelineStagesFlag,
  TRAIN_FLAGS,
} from '../cli/flags.js'
import {chart, table} from '../cli/render.js'
import {writeLineChartSvg} from '../cli/svg.js'
import {modelConfig} from '../model/config.js'
import {connectionOf} from '../model/connections/index.js'
import {backendJson} from '../model/engines/backends.js'
import {HARDWARE, Hardware, HARDWARE_NAMES} from '../profile/cost-models/kernels.js'
import {asciiTimeline, checkDualPipe, ScheduleError, ScheduleName, SCHEDULES} from '../profile/cost-models/pipeline.js'
import {activeParams, PAPER_MODEL_NAMES, PAPER_MODELS, PaperModel} from '../profile/cost-models/presets.js'
import {
  DEFAULTS,
  describeAssumptions,
  groupKernels,
  ioTable,
  PAPER_OVERHEAD,
  paperConfig,
  SCENARIO_IDS,
  SCENARIOS,
  sweepExpansion,
  TimeConfig,
  timeReport,
  tokensPerMicroBatch,
} from '../profile/cost-models/time.js'

/** A number flag with no default (the preset's value applies). */
const num = (description: string, check: (v: number) => boolean, rule: string) => numberFlag({description, check, rule})
/** A number flag with a default. */
const numD = (description: string, check: (v: number) => boolean, rule: string, dflt: number) =>
  numberFlag({description, check, rule, default: dflt})
const positive = (d: string) => num(d, (v) => v > 0, 'a positive number')
const fraction = (d: string) => num(d, (v) => v > 0 && v <= 1, 'a number in (0, 1]')
const int = (description: string, min = 1) => Flags.integer({min, description})

const PAPER_MODEL_FLAGS = {
  layers: 'layers',
  'd-model': 'dModel',
  heads: 'heads',
  'head-dim': 'headDim',
  'kv-rank': 'kvRank',
  'rope-dim': 'ropeDim',
  'ffn-dim': 'ffnDim',
  'routed-experts': 'routedExperts',
  'active-experts': 'activeExperts',
  'shared-experts': 'sharedExperts',
  'seq-len': 'seqLen',
} as const

export default class ProfileTime extends BaseCommand {
  static override description = `Time overhead of HC and mHC over a residual Transformer: kernel I/O, roofline and a pipeline simulation.

For one layer, every kernel of the residual-stream maintenance is counted in elements read and written per token (the
paper's Table 2 for HC; op by op for unfused mHC; the paper's §4.3.1 fused kernels) and timed as
max(bytes / bandwidth, flops / peak) + launch latency, forward, backward and recompute. Per-stage chunk times (the
layer's own attention and FFN flops at --mfu, plus those kernels) and the n-fold P2P boundary tensors drive a
discrete-event simulation of DualPipe (the step loop of deepseek-ai/DualPipe) or 1F1B. The report shows the
overhead over the residual baseline for HC, unfused mHC, fused, fused + recompute and the paper's full design with
the DualPipe overlap (paper: +6.7% at n = 4), every assumption with its flag, the kernels, the exposed communication,
an ASCII timeline and a chart. --measure times the mHC apply path on this machine as separate ops and as one fused op.`
  static override examples = [
    '<%= config.bin %> <%= command.id %>',
    '<%= config.bin %> <%= command.id %> --preset paper-3b --hardware h200 --chart overhead.svg',
    '<%= config.bin %> <%= command.id %> --no-overlap-p2p --mfu 0.4 --json',
    '<%= config.bin %> <%= command.id %> --schedule 1f1b --pipeline-stages 5 --micro-batches 40',
    '<%= config.bin %> <%= command.id %> --measure --measure-tokens 512',
  ]
  static override flags = {
    preset: Flags.option({
      options: PAPER_MODEL_NAMES,
      default: 'paper-27b',
      description: "model of the paper's Table 5",
    })(),
    ...pick(MODEL_FLAGS, ['layers', 'd-model', 'heads', 'seq-len', 'expansion', 'sinkhorn-iters']),
    'head-dim': int('attention dimension per head'),
    'kv-rank': int('MLA KV rank'),
    'rope-dim': int('RoPE dimension'),
    'ffn-dim': int('expert FFN width'),
    'routed-experts': int('routed experts'),
    'active-experts': int('routed experts per token', 0),
    'shared-experts': int('shared experts', 0),
    hardware: Flags.option({options: HARDWARE_NAMES, default: DEFAULTS.hardware, description: 'GPU preset'})(),
    bandwidth: positive("HBM bandwidth in TB/s [default: the hardware preset's]"),
    'bandwidth-efficiency': fraction(
      "fraction of the HBM bandwidth a streaming kernel reaches [default: the preset's]",
    ),
    tflops: positive("dense bf16 tensor-core peak in TFLOPS [default: the preset's]"),
    'vector-tflops': positive("fp32 vector peak in TFLOPS [default: the preset's]"),
    'launch-us': num("GPU-side cost of one kernel launch in µs [default: the preset's]", (v) => v >= 0, 'a number ≥ 0'),
    'p2p-bandwidth': positive("P2P bandwidth between stages in GB/s [default: the preset's network]"),
    'p2p-latency-us': num("P2P message latency in µs [default: the preset's]", (v) => v >= 0, 'a number ≥ 0'),
    'activation-bytes': activationBytesFlag(),
    'coef-bytes': numD('bytes per coefficient / φ element (fp32 = 4)', (v) => v > 0, 'a positive number', 4),
    mfu: numD(
      "fraction of the tensor peak reached by the layer's own compute (attention, FFN)",
      (v) => v > 0 && v <= 1,
      'a number in (0, 1]',
      DEFAULTS.mfu,
    ),
    'hide-fraction': numD(
      'share of FFN F_post,res time hidden under the paired attention with the high-priority stream',
      (v) => v >= 0 && v <= 1,
      'a number in [0, 1]',
      DEFAULTS.hideFraction,
    ),
    schedule: Flags.option({options: SCHEDULES, default: DEFAULTS.schedule, description: 'pipeline schedule'})(),
    'pipeline-stages': pipelineStagesFlag(),
    'micro-batches': microBatchesFlag(),
    'micro-batch-size': microBatchSizeFlag(),
    'recompute-block': {
      ...TRAIN_FLAGS['recompute-block'],
      description:
        'mHC recompute block L_r in layers (attention and FFN counted separately) [default: the pipeline stage]',
    },
    'recompute-coefficients': Flags.boolean({
      default: DEFAULTS.recomputeCoefficients,
      allowNo: true,
      description: 'recompute H_pre, H_post, H_res too instead of keeping them',
    }),
    'overlap-p2p': Flags.boolean({
      default: DEFAULTS.overlap.p2p,
      allowNo: true,
      description: 'overlap design: P2P hidden under the paired chunk (else the blocking reference runtime)',
    }),
    'high-priority-post-res': Flags.boolean({
      default: DEFAULTS.overlap.highPriorityPostRes,
      allowNo: true,
      description: 'overlap design: FFN F_post,res on a high-priority stream',
    }),
    'decouple-recompute': Flags.boolean({
      default: DEFAULTS.overlap.decoupleRecompute,
      allowNo: true,
      description: 'overlap design: recompute before the gradient arrives',
    }),
    breakdown: Flags.option({
      options: SCENARIO_IDS,
      description: 'list the kernels of this scenario [default with --verbose: mhc-paper]',
    })(),
    timeline: Flags.option({
      options: [...SCENARIO_IDS, 'baseline', 'none'],
      description:
        'draw the schedule of this scenario ("baseline": the residual network with the overlap) [default with --verbose: mhc-paper]',
    })(),
    'timeline-width': Flags.integer({min: 40, max: 400, default: 100, description: 'columns of the ASCII timeline'}),
    chart: chartFlag('the overhead against n'),
    measure: Flags.boolean({
      default: false,
      description: 'time the mHC apply path here: separate tfjs ops vs one fused op',
    }),
    backend: backendFlag('compute backend for --measure'),
    'measure-tokens': Flags.integer({min: 1, max: 65_536, default: 1024, description: 'tokens in the --measure batch'}),
    'measure-reps': Flags.integer({
      min: 1,
      max: 1000,
      default: 5,
      description: 'timed repetitions (median) for --measure',
    }),
  }

  async run() {
    const {flags} = await this.parse(ProfileTime).catch(flagError)
    if (flags.chart) assertWritableFile(flags.chart, '--chart', CHART_EXTENSIONS)
    this.verbose = flags.verbose
    if (flags['recompute-block'] === 0)
      throw new UsageError(
        '--recompute-block 0 (no recompute) is the "mHC fused" scenario of this report; give L_r ≥ 1, or leave it out for the pipeline stage',
      )

    // --- configuration: the preset, then every flag given
    const preset = PAPER_MODELS[flags.preset]
    const model: PaperModel = {...preset}
    for (const [flag, key] of Object.entries(PAPER_MODEL_FLAGS))
      if ((flags as any)[flag] !== undefined) (model as any)[key] = (flags as any)[flag]
    const base = HARDWARE[flags.hardware]
    const hw: Hardware = {
      ...base,
      bandwidth: flags.bandwidth === undefined ? base.bandwidth : flags.bandwidth * 1e12,
      bandwidthEfficiency: flags['bandwidth-efficiency'] ?? base.bandwidthEfficiency,
      tensorFlops: flags.tflops === undefined ? base.tensorFlops : flags.tflops * 1e12,
      vectorFlops: flags['vector-tflops'] === undefined ? base.vectorFlops : flags['vector-tflops'] * 1e12,
      launch: flags['launch-us'] === undefined ? base.launch : flags['launch-us'] * 1e-6,
      p2pLatency: flags['p2p-latency-us'] === undefined ? base.p2pLatency : flags['p2p-latency-us'] * 1e-6,
    }
    const cfg: TimeConfig = {
      ...paperConfig(model, hw),
      expansion: flags.expansion ?? model.expansion,
      sinkhornIters: flags['sinkhorn-iters'] ?? model.sinkhornIters,
      dtypes: {act: flags['activation-bytes'], coef: flags['coef-bytes']},
      mfu: flags.mfu,
      schedule: flags.schedule as ScheduleName,
      stages: flags['pipeline-stages'] ?? model.pipeline.stages,
      microBatches: flags['micro-batches'] ?? model.pipeline.microBatches,
      microBatchSize: flags['micro-batch-size'] ?? model.pipeline.microBatchSize,
      p2pBandwidth: flags['p2p-bandwidth'] === undefined ? hw.network : flags['p2p-bandwidth'] * 1e9,
      recomputeBlock: flags['recompute-block'], // unset: blocks are the pipeline stages (paper §4.3.2)
      recomputeCoefficients: flags['recompute-coefficients'],
      hideFraction: flags['hide-fraction'],
      overlap: {
        p2p: flags['overlap-p2p'],
        highPriorityPostRes: flags['high-priority-post-res'],
        decoupleRecompute: flags['decouple-recompute'],
      },
    }
    const usage = <T>(f: () => T): T => {
      try {
        return f()
      } catch (error) {
        if (error instanceof RangeError || error instanceof ScheduleError)
          throw new UsageError(
            error.message + (error instanceof ScheduleError ? ' (--pipeline-stages, --micro-batches)' : ''),
          )
        throw error
      }
    }

    // The same rules as a trained mHC model (n ≥ 2, t_max ≥ 1): one meaning per flag across commands.
    const problem = connectionOf({arch: 'mhc'}).problem(
      modelConfig('mhc', {expansion: cfg.expansion, sinkhornIters: cfg.sinkhornIters}),
    )
    if (problem) throw new UsageError(`--expansion ${cfg.expansion} --sinkhorn-iters ${cfg.sinkhornIters}: ${problem}`)
    if (cfg.schedule === 'dualpipe') usage(() => checkDualPipe(cfg.stages, cfg.microBatches))
    const report = usage(() => timeReport(cfg))
    const sweepNs = [2, 3, 4, 5, 6, 7, 8, 10, 12]
    const sweep = usage(() => sweepExpansion(cfg, sweepNs))

    let measure: MeasureResult | undefined
    let backend: ReturnType<typeof backendJson> | null = null
    if (flags.measure) {
      // A tfjs micro-benchmark: it needs the backend, not a model, so it builds no engine.
      backend = backendJson((await this.openEngines(flags.backend)).report)
      const {measureApplyPath} = await import('../profile/measure/apply-path.js')
      measure = await measureApplyPath(
        {
          tokens: flags['measure-tokens'],
          expansion: cfg.expansion,
          dModel: cfg.model.dModel,
          reps: flags['measure-reps'],
        },
        hw,
      )
    }

    // --- report
    const ms = (s: number) => (s * 1e3).toFixed(1)
    const us = (s: number) => (s * 1e6).toFixed(1)
    const pct = (v: number) => `${v >= 0 ? '+' : ''}${(100 * v).toFixed(1)}%`
    const tokens = tokensPerMicroBatch(cfg)
    const paper = report.scenarios.find((s) => s.scenario.id === 'mhc-paper')!
    const hc = report.scenarios.find((s) => s.scenario.id === 'hc')!
    const presetLayout =
      flags['pipeline-stages'] === undefined &&
      flags['micro-batches'] === undefined &&
      flags.layers === undefined &&
      cfg.schedule === 'dualpipe'
    const assumptions = describeAssumptions(cfg, {
      ...DEFAULTS.why,
      pipeline: presetLayout ? `not in the paper: ${model.pipeline.why}` : 'as given',
    })

    // The headline first; the assumptions and the details of each design under --verbose (and all of it in --json).
    const detail = this.verbose
    const modified = Object.keys(PAPER_MODEL_FLAGS).some((f) => (flags as any)[f] !== undefined) ? ' (modified)' : ''
    this.log(
      `mHC time overhead, ${flags.preset}${modified} on ${hw.name}: the paper's design ${pct(paper.overhead)} ` +
        `(paper: +${(100 * PAPER_OVERHEAD).toFixed(1)}% at n = 4, Δ ${(paper.overhead - PAPER_OVERHEAD) * 100 >= 0 ? '+' : ''}${((paper.overhead - PAPER_OVERHEAD) * 100).toFixed(1)} pp); ` +
        `HC unfused ${pct(hc.overhead)}`,
    )
    this.log(
      `${cfg.schedule}, PP = ${cfg.stages}, ${cfg.microBatches} micro-batches of ${tokens} tokens, n = ${cfg.expansion}; ` +
        `modelled active parameters ${(activeParams(model) / 1e9).toFixed(2)}B (paper Table 5: ${(preset.paper.activeParams / 1e9).toFixed(2)}B)`,
    )
    if (detail) {
      this.log('\nassumptions (every one is a flag)')
      this.log(
        table(
          ['assumption', 'value', 'flag', 'why'],
          assumptions.map((a) => [a.name, a.value, a.flag, wrap(a.why, 70)]),
          ['left', 'left', 'left', 'left'],
        ),
      )
    }

    this.log('\noverhead over the residual baseline (same schedule and communication model; one optimiser step)')
    this.log(
      table(
        [
          'design',
          'step',
          'baseline',
          'overhead',
          'kernels + bubbles',
          'exposed P2P',
          ...(detail ? ['mHC kernels / layer: fwd, bwd, recompute', 'launches / layer'] : []),
        ],
        report.scenarios.map((s) => [
          s.scenario.label,
          `${ms(s.mhc.makespan)} ms`,
          `${ms(s.baseline.makespan)} ms`,
          pct(s.overhead),
          pct(s.overheadCompute),
          pct(s.overheadComm),
          ...(detail
            ? [
                `${us(s.kernels.fwd)}, ${us(s.kernels.bwdInput + s.kernels.bwdWeight)}, ${us(s.kernels.recomputeTime)} µs`,
                `${s.kernels.launches.fwd} + ${s.kernels.launches.bwd} + ${s.kernels.launches.recompute}`,
              ]
            : []),
        ]),
      ),
    )
    if (detail)
      this.log(
        `residual baseline kernels / layer: ${us(report.residual.fwd)} µs forward, ${us(report.residual.bwdInput)} µs backward; ` +
          `layer compute / micro-batch: attention ${ms(report.layer.attn.F)} + ${ms(report.layer.attn.Bin)} + ${ms(report.layer.attn.W)} ms, ` +
          `FFN ${ms(report.layer.ffn.F)} + ${ms(report.layer.ffn.Bin)} + ${ms(report.layer.ffn.W)} ms (F + B_in + W)`,
      )

    const C = cfg.model.dModel
    const io = ioTable(cfg.expansion, C, cfg.sinkhornIters)
    if (detail) {
      this.log(
        '\nper-token I/O of one layer (elements; Table 2 counts the forward of residual and HC; weights excluded)',
      )
      const inC = (e: number) => `${(e / C).toFixed(2)}C`
      this.log(
        table(
          ['design', 'fwd read', 'fwd write', 'bwd read', 'bwd write', 'kernels fwd + bwd'],
          io.map((r) => [
            r.design,
            inC(r.fwd.read),
            inC(r.fwd.write),
            inC(r.bwd.read),
            inC(r.bwd.write),
            `${r.kernels.fwd} + ${r.kernels.bwd}`,
          ]),
        ),
      )
      this.log(
        `Table 2 for HC at n = ${cfg.expansion}: read (5n+1)C + n² + 2n = ${5 * cfg.expansion + 1}C + ${cfg.expansion ** 2 + 2 * cfg.expansion}, write (3n+1)C + n² + 2n = ${3 * cfg.expansion + 1}C + ${cfg.expansion ** 2 + 2 * cfg.expansion}`,
      )
    }

    if (detail || flags.breakdown) {
      const bd = report.scenarios.find((s) => s.scenario.id === (flags.breakdown ?? 'mhc-paper'))!
      const layerTotal =
        (report.layer.attn.F +
          report.layer.attn.Bin +
          report.layer.attn.W +
          report.layer.ffn.F +
          report.layer.ffn.Bin +
          report.layer.ffn.W) /
        2
      const groups = groupKernels(bd.kernels)
      this.log(
        `\nkernels of one layer: ${bd.scenario.label} (one launch each per micro-batch of ${tokens} tokens; % of the mean layer's own compute)`,
      )
      this.log(
        table(
          ['kernel', 'pass', 'launches', 'MB', 'µs', 'bound', '% of layer'],
          [
            ...groups.map((g) => [
              g.name,
              g.pass,
              g.count,
              (g.bytes / 1e6).toFixed(2),
              us(g.time),
              g.bound,
              `${((100 * g.time) / layerTotal).toFixed(2)}%`,
            ]),
            [
              'total',
              '',
              groups.reduce((a, g) => a + g.count, 0),
              (groups.reduce((a, g) => a + g.bytes, 0) / 1e6).toFixed(2),
              us(groups.reduce((a, g) => a + g.time, 0)),
              '',
              `${((100 * groups.reduce((a, g) => a + g.time, 0)) / layerTotal).toFixed(2)}%`,
            ],
          ],
          ['left', 'left', 'right', 'right', 'right', 'left', 'right'],
        ),
      )
    }

    if (detail) {
      this.log('\nexposed communication (step time minus the same schedule with free P2P)')
      this.log(
        table(
          [
            'design',
            'P2P model',
            'boundary tensor',
            'per transfer',
            'exposed (mHC)',
            'exposed (baseline)',
            'overhead from P2P',
          ],
          report.scenarios.map((s) => [
            s.scenario.label,
            s.mhc.comm === 'async' ? 'overlapped' : 'blocking',
            `${(s.mhc.costs.commBytes / 1e6).toFixed(1)} MB`,
            `${ms(s.mhc.costs.comm)} ms`,
            `${ms(s.mhc.exposedComm)} ms`,
            `${ms(s.baseline.exposedComm)} ms`,
            pct(s.overheadComm),
          ]),
        ),
      )
      if (paper.mhc.costs.parts.hidden > 0)
        this.log(
          `high-priority F_post,res hides ${ms(paper.mhc.costs.parts.hidden)} ms of every overlapped F&B pair (${ms(paper.mhc.costs.FB! + paper.mhc.costs.parts.hidden)} → ${ms(paper.mhc.costs.FB!)} ms)`,
        )
    }

    let timeline = ''
    const timelineId = flags.timeline ?? 'mhc-paper' // drawn with --verbose or --timeline; always in --json
    if (timelineId !== 'none') {
      const which =
        timelineId === 'baseline' ? paper.baseline : report.scenarios.find((s) => s.scenario.id === timelineId)!.mhc
      const title =
        timelineId === 'baseline'
          ? 'residual baseline (overlap design)'
          : SCENARIOS.find((s) => s.id === timelineId)!.label
      timeline = asciiTimeline(which.sim, cfg.stages, flags['timeline-width'])
      if (detail || flags.timeline)
        this.log(
          `\ntimeline: ${title}, ${ms(which.makespan)} ms; F/B/W = direction 0, f/b/w = direction 1${cfg.schedule === 'dualpipe' ? " (DualPipe's reverse pipe)" : ''}, ` +
            'an overlapped pair drawn as its F then its B, r = decoupled recompute, . = waiting for P2P, blank = idle',
        )
      if (detail || flags.timeline) this.log(timeline)
    }

    const shown = ['hc', 'mhc-unfused', 'mhc-fused', 'mhc-paper']
    const widen = (xs: number[]) => xs.flatMap((v) => Array.from({length: 6}, () => v))
    this.log(
      '\n' +
        chart(
          `overhead (%) against n = ${sweepNs.join(', ')} (each n spans 6 columns)`,
          shown.map((id) => widen(sweep.map((p) => 100 * p.overhead[id]))),
          shown,
          {digits: 1},
        ),
    )

    if (!detail) this.log('(assumptions, kernels, I/O, communication and the timeline: --verbose; everything: --json)')

    if (flags.chart) {
      await writeLineChartSvg(flags.chart, {
        title: `mHC time overhead over the residual baseline — ${flags.preset} on ${hw.name}, ${cfg.schedule}`,
        xTitle: 'expansion rate n',
        yTitle: 'overhead (%)',
        series: [
          ...SCENARIOS.map((sc) => ({
            name: sc.label,
            x: sweep.map((p) => p.expansion),
            y: sweep.map((p) => 100 * p.overhead[sc.id]),
          })),
          {name: 'paper (in-house, n = 4)', x: [4], y: [100 * PAPER_OVERHEAD]},
        ],
      })
      this.logToStderr(`chart written to ${flags.chart}`)
    }

    if (measure) {
      const m = measure
      this.log(
        `\ncalibration on this machine (${m.backend}, ${m.shape.tokens} tokens, n = ${m.shape.expansion}, C = ${m.shape.dModel}, median of ${m.shape.reps})`,
      )
      this.log(
        table(
          [
            'map',
            'separate ops',
            'fused op',
            'fused kernel alone',
            'measured ratio (op, kernel)',
            `model ratio (${hw.name} roofline)`,
            'byte ratio',
          ],
          (['fPre', 'fPostRes'] as const).map((k) => [
            k === 'fPre' ? 'F_pre = H_pre x_l' : 'F_post,res = H_res x_l + H_post^T F',
            `${ms(m.separate[k])} ms (${m.separate.ops[k]} ops)`,
            m.fused ? `${ms(m.fused[k])} ms` : 'n/a',
            m.fusedKernel ? `${ms(m.fusedKernel[k])} ms` : 'n/a',
            m.measuredRatio && m.kernelRatio
              ? `${m.measuredRatio[k].toFixed(2)}×, ${m.kernelRatio[k].toFixed(2)}×`
              : 'n/a',
            `${m.modelRatio[k].toFixed(2)}×`,
            `${m.byteRatio[k].toFixed(2)}×`,
          ]),
        ),
      )
      this.log(
        'reference: torch.compile on an H100 measured 2.60× (4096 tokens) and 2.20× (16384) for F_post,res at n = 4, C = 2560 (../shared/reference/infrastructure.md §4)',
      )
      this.log(
        `measured: ${m.what}${m.maxAbsError === null ? '' : `; max |separate − fused| = ${m.maxAbsError.toExponential(1)}`}`,
      )
    }

    return {
      backend,
      preset: flags.preset,
      model,
      config: cfg,
      assumptions,
      headline: {
        overhead: paper.overhead,
        paper: PAPER_OVERHEAD,
        deltaPP: 100 * (paper.overhead - PAPER_OVERHEAD),
        hcUnfused: hc.overhead,
      },
      scenarios: report.scenarios.map((s) => ({
        id: s.scenario.id,
        label: s.scenario.label,
        design: s.scenario.design,
        recompute: s.scenario.recompute,
        overlap: s.scenario.overlap,
        overhead: s.overhead,
        overheadCompute: s.overheadCompute,
        overheadComm: s.overheadComm,
        stepTime: s.mhc.makespan,
        baselineStepTime: s.baseline.makespan,
        exposedComm: s.mhc.exposedComm,
        baselineExposedComm: s.baseline.exposedComm,
        chunk: {
          F: s.mhc.costs.F,
          B: s.mhc.costs.B,
          W: s.mhc.costs.W,
          recompute: s.mhc.costs.recompute,
          FB: s.mhc.costs.FB,
          comm: s.mhc.costs.comm,
          commBytes: s.mhc.costs.commBytes,
          parts: s.mhc.costs.parts,
        },
        baselineChunk: {
          F: s.baseline.costs.F,
          B: s.baseline.costs.B,
          W: s.baseline.costs.W,
          FB: s.baseline.costs.FB,
          comm: s.baseline.costs.comm,
        },
        kernelsPerLayer: {
          fwd: s.kernels.fwd,
          bwdInput: s.kernels.bwdInput,
          bwdWeight: s.kernels.bwdWeight,
          recompute: s.kernels.recomputeTime,
          launches: s.kernels.launches,
        },
        kernels: groupKernels(s.kernels),
      })),
      layer: report.layer,
      residualKernels: {fwd: report.residual.fwd, bwd: report.residual.bwdInput},
      io,
      sweep,
      timeline,
      chart: flags.chart ?? null,
      measure: measure ?? null,
    }
  }
}

/** Breaks a long explanation over lines so the assumptions table fits a terminal. */
function wrap(s: string, width: number): string {
  const out: string[] = []
  let line = ''
  for (const w of s.split(' ')) {
    if (line && line.length + 1 + w.length > width) {
      out.push(line)
      line = w
    } else line = line ? `${line} ${w}` : w
  }

  if (line) out.push(line)
  return out.join('\n')
}
