import {Args, Flags} from '@oclif/core'

import type {CheckpointData} from '../model/io/checkpoint.js'

import {assertWritableFile, BaseCommand, flagError, UsageError} from '../cli/base.js'
import {backendFlag, CHART_EXTENSIONS, chartFlag, gateFlags, tokensFlag} from '../cli/flags.js'
import {chart, heatmap, sideBySide, table} from '../cli/render.js'
import {gainChart, writeLineChartSvg} from '../cli/svg.js'
import {numConnections} from '../model/config.js'
import {connectionOf} from '../model/connections/index.js'
import {backendJson} from '../model/engines/backends.js'
import {writeFileAtomic} from '../model/io/atomic.js'
import {checkpointCorpus, type Corpus} from '../model/io/data.js'
import {type MapsFile, readMapsFile, writeMapsFile} from '../model/io/maps-file.js'
import {readCheckpoint} from '../model/train/run-dir.js'
import {
  analyzeGains,
  checkGates,
  describeGate,
  GainAnalysis,
  GateRule,
  identityLayers,
  LayerGains,
} from '../profile/analysis/gain.js'
import {checkpointMaps} from '../profile/analysis/maps.js'

export default class AnalyzeGain extends BaseCommand {
  static override description = `Propagation gains of H_res and of its products across layers (the paper's Fig. 3 and 7).

For every layer l (attention and MLP counted separately) and every token of a validation sample: the Amax gain of
H_res_l (forward = max absolute row sum, backward = max absolute column sum) and of the composite mapping
H_res_{L-1}···H_res_l (paper Eq. 4), averaged over tokens as the paper does ("mean") and for the worst token ("max").
Gates (--max-gain, --max-composite-gain; each bounds forward and backward) exit 1 naming the worst layer; bad
input exits 2.`
  static override examples = [
    '<%= config.bin %> <%= command.id %> runs/mhc',
    '<%= config.bin %> <%= command.id %> runs/mhc --maps torch-maps.safetensors',
    '<%= config.bin %> <%= command.id %> runs/hc runs/mhc --chart gains.svg --csv gains.csv',
    '<%= config.bin %> <%= command.id %> runs/mhc --max-gain 1.05 --max-composite-gain 2 --json',
    '<%= config.bin %> <%= command.id %> runs/mhc --heatmap-layers 0,7',
  ]
  static override strict = false // any number of checkpoints
  static override args = {
    checkpoint: Args.string({description: 'checkpoint or run directory (more may follow)'}),
  }
  static override flags = {
    maps: Flags.string({
      multiple: true,
      description:
        'a maps file from any framework (safetensors, h_res.{l} [tokens, n, n]; see README), analysed like a checkpoint (repeatable)',
    }),
    data: Flags.string({description: 'text to sample (its validation split) [default: each checkpoint corpus]'}),
    tokens: tokensFlag(),
    'heatmap-layers': Flags.string({
      description: 'layers to print as heatmaps, e.g. "0,7" [default: first and middle]',
    }),
    ...gateFlags(),
    csv: Flags.string({description: 'write every layer of every checkpoint as CSV'}),
    'save-maps': Flags.string({
      description: "write the checkpoint's maps (H_pre, H_post, H_res of every token and layer) as a maps file",
    }),
    chart: chartFlag('the gains over depth'),
    prefix: Flags.boolean({
      default: false,
      description: 'also show the product from the first layer up to l in the table',
    }),
    backend: backendFlag(),
  }

  async run() {
    const {argv, flags} = await this.parse(AnalyzeGain).catch(flagError)
    this.verbose = flags.verbose
    const paths = argv as string[]
    const mapsFiles = flags.maps ?? []
    if (paths.length === 0 && mapsFiles.length === 0)
      throw new UsageError('give a checkpoint or run directory, or --maps FILE')
    const rules: GateRule[] = (
      [
        ['single', flags['max-gain'], '--max-gain'],
        ['composite', flags['max-composite-gain'], '--max-composite-gain'],
      ] as const
    )
      .filter(([, t]) => t !== undefined)
      .map(([quantity, threshold, flag]) => ({quantity, threshold: threshold!, flag}))
    const heatLayers = flags['heatmap-layers']?.split(',').map((s) => {
      const v = s.trim() === '' ? Number.NaN : Number(s.trim())
      if (!Number.isInteger(v) || v < 0)
        throw new UsageError(`--heatmap-layers expects comma-separated layer indices, got "${flags['heatmap-layers']}"`)
      return v
    })

    // Output paths, then every checkpoint and its text, before any work: a bad path fails fast, not after the analysis.
    if (flags.csv) assertWritableFile(flags.csv, '--csv')
    if (flags['save-maps']) {
      assertWritableFile(flags['save-maps'], '--save-maps', ['.safetensors'])
      if (paths.length !== 1 || mapsFiles.length > 0)
        throw new UsageError('--save-maps writes the maps of one checkpoint: give exactly one, and no --maps')
    }

    if (flags.chart) assertWritableFile(flags.chart, '--chart', CHART_EXTENSIONS)
    type Input = {kind: 'checkpoint'; data: CheckpointData; corpus?: Corpus} | {kind: 'maps'; maps: MapsFile}
    const inputs: Input[] = [
      ...paths.map((p): Input => {
        const data = readCheckpoint(p)
        const {model} = data.manifest
        const corpus =
          connectionOf(model).coefficients === 'none'
            ? undefined
            : checkpointCorpus(data.manifest.data, flags.data, model.seqLen + 1, false)
        return {kind: 'checkpoint', data, corpus}
      }),
      ...mapsFiles.map((p): Input => ({kind: 'maps', maps: readMapsFile(p)})),
    ]
    for (const input of inputs) {
      const [where, L] =
        input.kind === 'maps'
          ? [input.maps.path, input.maps.hRes.length]
          : [input.data.dir, numConnections(input.data.manifest.model)]
      if (heatLayers?.some((l) => l >= L))
        throw new UsageError(`--heatmap-layers ${flags['heatmap-layers']}: ${where} has layers 0..${L - 1}`)
    }

    // An engine only where maps must be computed: a residual model's are the identity, a maps file has them.
    const engines = inputs.some((i) => i.kind === 'checkpoint' && i.corpus)
      ? await this.openEngines(flags.backend)
      : undefined

    const runs: {
      name: string
      arch: string
      step: number | null
      n: number
      tokens: number
      analysis?: GainAnalysis
      layers: LayerGains[]
    }[] = []
    for (const input of inputs) {
      if (input.kind === 'maps') {
        const {maps} = input
        const analysis = analyzeGains(maps.hRes, maps.n)
        runs.push({
          name: maps.path,
          arch: maps.arch ?? 'maps',
          step: null,
          n: maps.n,
          tokens: maps.tokens,
          analysis,
          layers: analysis.layers,
        })
        continue
      }

      const {data, corpus} = input
      const {model, step} = data.manifest
      if (!corpus) {
        runs.push({
          name: data.dir,
          arch: model.arch,
          step,
          n: 1,
          tokens: 0,
          layers: identityLayers(numConnections(model)),
        })
        continue
      }

      const maps = await checkpointMaps(engines!, data, corpus.val, flags.tokens)
      if (flags['save-maps']) {
        writeMapsFile(flags['save-maps'], maps, {
          n: model.expansion,
          constraint: connectionOf(model).resConstraint,
          arch: model.arch,
          layerKinds: Array.from({length: maps.hRes.length}, (_, l) => (l % 2 === 0 ? 'attn' : 'mlp')),
          source: `mhc analyze-gain ${data.dir} (step ${step}, ${maps.tokens} validation tokens)`,
        })
        this.logToStderr(`maps written to ${flags['save-maps']}`)
      }

      const analysis = analyzeGains(maps.hRes, model.expansion)
      runs.push({
        name: data.dir,
        arch: model.arch,
        step,
        n: model.expansion,
        tokens: maps.tokens,
        analysis,
        layers: analysis.layers,
      })
    }

    // --- report
    const f = (v: number) => (v >= 1000 ? v.toExponential(2) : v.toFixed(3))
    const g = (s: {mean: number; max: number}) => `${f(s.mean)} (${f(s.max)})`
    for (const r of runs) {
      this.log(
        `\n${r.name} — ${r.arch}${r.step === null ? ' (maps file)' : `, step ${r.step}`}` +
          (r.analysis
            ? `, n = ${r.n}, ${r.tokens} tokens; gains are "mean over tokens (worst token)"`
            : ': a residual connection; H_res is the identity (n = 1), so every gain is exactly 1.'),
      )
      if (!r.analysis) continue
      const head = [
        'layer',
        'single fwd',
        'single bwd',
        'composite fwd',
        'composite bwd',
        ...(flags.prefix ? ['prefix fwd', 'prefix bwd'] : []),
        'σmax(H̄)',
        'DS err',
        'min',
        '‖H̄−I‖',
      ]
      this.log(
        table(
          head,
          r.layers.map((l) => [
            `${l.layer} ${l.sublayer}`,
            g(l.single.forward),
            g(l.single.backward),
            g(l.composite.forward),
            g(l.composite.backward),
            ...(flags.prefix ? [g(l.prefix.forward), g(l.prefix.backward)] : []),
            f(l.mean.single.spectralNorm),
            Math.max(l.mean.single.rowError, l.mean.single.columnError).toExponential(1),
            l.mean.single.minEntry.toFixed(3),
            f(l.mean.single.identityDistance),
          ]),
        ),
      )
      const L = r.layers.length
      const show = heatLayers ?? [...new Set([0, Math.floor(L / 2)])]
      for (const l of show) {
        this.log(
          sideBySide(
            heatmap(`H_res of layer ${l} (token mean)`, r.analysis!.meanSingle[l]),
            heatmap(`composite H_res_${L - 1}···H_res_${l} (token mean)`, r.analysis!.meanComposite[l]),
          ),
        )
      }
    }

    if (runs.length > 1) {
      const worst = (r: (typeof runs)[number], k: 'single' | 'composite', d: 'forward' | 'backward') =>
        Math.max(...r.layers.map((l) => l[k][d].mean))
      this.log('\ncomparison (largest token-mean gain over layers)')
      this.log(
        table(
          ['checkpoint', 'arch', 'step', 'single fwd', 'single bwd', 'composite fwd', 'composite bwd'],
          runs.map((r) => [
            r.name,
            r.arch,
            r.step ?? '—',
            f(worst(r, 'single', 'forward')),
            f(worst(r, 'single', 'backward')),
            f(worst(r, 'composite', 'forward')),
            f(worst(r, 'composite', 'backward')),
          ]),
        ),
      )
    }

    // Chart: composite and single forward gains over depth, log10 when they span decades.
    const all = runs.flatMap((r) =>
      r.layers.flatMap((l) => [
        l.single.forward.mean,
        l.composite.forward.mean,
        l.single.backward.mean,
        l.composite.backward.mean,
      ]),
    )
    const logScale = Math.max(...all) / Math.max(1e-12, Math.min(...all)) > 10
    const tr = (v: number) => (logScale ? Math.log10(v) : v)
    const label = (r: (typeof runs)[number]) => `${r.arch}@${r.step ?? 'maps'}`
    this.log(
      '\n' +
        chart(
          `forward Amax gain over depth (token mean)${logScale ? ', log10' : ''}: composite H_{L-1}···H_l and single H_l`,
          runs.flatMap((r) => [
            r.layers.map((l) => tr(l.composite.forward.mean)),
            r.layers.map((l) => tr(l.single.forward.mean)),
          ]),
          runs.flatMap((r) => [`${label(r)} composite`, `${label(r)} single`]),
        ),
    )

    if (flags.chart) {
      await writeLineChartSvg(
        flags.chart,
        gainChart(
          runs.map((r) => ({label: label(r), layers: r.layers})),
          logScale,
        ),
      )
      this.logToStderr(`chart written to ${flags.chart}`)
    }

    if (flags.csv) {
      const cols = [
        'checkpoint',
        'arch',
        'step',
        'layer',
        'sublayer',
        ...['single', 'composite', 'prefix'].flatMap((k) =>
          ['forward', 'backward'].flatMap((d) => [`${k}_${d}_mean`, `${k}_${d}_max`]),
        ),
        'spectral_norm',
        'row_error',
        'column_error',
        'min_entry',
        'identity_distance',
      ]
      const rows = runs.flatMap((r) =>
        r.layers.map((l) => [
          r.name,
          r.arch,
          r.step ?? '',
          l.layer,
          l.sublayer,
          ...(['single', 'composite', 'prefix'] as const).flatMap((k) =>
            (['forward', 'backward'] as const).flatMap((d) => [l[k][d].mean, l[k][d].max]),
          ),
          l.mean.single.spectralNorm,
          l.mean.single.rowError,
          l.mean.single.columnError,
          l.mean.single.minEntry,
          l.mean.single.identityDistance,
        ]),
      )
      const esc = (v: unknown) =>
        typeof v === 'string' && /[",\n]/.test(v) ? `"${v.replaceAll('"', '""')}"` : String(v)
      writeFileAtomic(flags.csv, [cols, ...rows].map((r) => r.map(esc).join(',')).join('\n') + '\n')
      this.logToStderr(`CSV written to ${flags.csv}`)
    }

    const gates = checkGates(runs, rules, flags['gate-on'])
    for (const gate of gates) (gate.pass ? this.log.bind(this) : this.logToStderr.bind(this))(describeGate(gate))
    if (gates.some((x) => !x.pass)) process.exitCode = 1
    return {
      backend: engines ? backendJson(engines.report) : null,
      aggregate: 'mean = Amax gain averaged over the tokens of the sample (as the paper); max = worst token',
      runs: runs.map((r) => ({
        checkpoint: r.name,
        arch: r.arch,
        step: r.step,
        n: r.n,
        tokens: r.tokens,
        layers: r.layers,
        meanSingle: r.analysis?.meanSingle,
        meanComposite: r.analysis?.meanComposite,
        meanPrefix: r.analysis?.meanPrefix,
      })),
      gates,
      pass: gates.every((x) => x.pass),
    }
  }
}
