import {Args, Flags} from '@oclif/core'
import {basename} from 'node:path'

import {assertWritableFile, BaseCommand, flagError} from '../cli/base.js'
import {backendFlag, tokensFlag} from '../cli/flags.js'
import {renderReport, ReportRun} from '../cli/report.js'
import {numConnections} from '../model/config.js'
import {connectionOf} from '../model/connections/index.js'
import {backendJson} from '../model/engines/backends.js'
import {writeFileAtomic} from '../model/io/atomic.js'
import {checkpointCorpus} from '../model/io/data.js'
import {parameterCount} from '../model/params.js'
import {readCheckpoint, readRunSteps} from '../model/train/run-dir.js'
import {analyzeGains, identityLayers} from '../profile/analysis/gain.js'
import {checkpointMaps} from '../profile/analysis/maps.js'

export default class Report extends BaseCommand {
  static override description = `One self-contained HTML file about one or more runs: a summary, the training curves, the gains of H_res over depth, H_res heatmaps and each run's configuration.

Each run directory needs its metrics.jsonl and a checkpoint (its latest is analysed, on validation text of its own corpus or --data). The charts are inline SVG: the file opens anywhere, offline.`
  static override examples = [
    '<%= config.bin %> <%= command.id %> runs/hc runs/mhc --out report.html',
    '<%= config.bin %> <%= command.id %> runs/mhc --out mhc.html --tokens 1024 --title "mHC, n = 4"',
  ]
  static override strict = false // any number of runs
  static override args = {run: Args.string({required: true, description: 'run directory (more may follow)'})}
  static override flags = {
    out: Flags.string({required: true, description: 'the HTML file to write'}),
    title: Flags.string({description: 'page title [default: the run names]'}),
    data: Flags.string({description: 'text to sample for the gains [default: each run corpus]'}),
    tokens: tokensFlag(),
    backend: backendFlag(),
  }

  async run() {
    const {argv, flags} = await this.parse(Report).catch(flagError)
    this.verbose = flags.verbose
    assertWritableFile(flags.out, '--out', ['.html', '.htm'])
    // Everything is read and checked before any work.
    const inputs = (argv as string[]).map((dir) => {
      const metrics = readRunSteps(dir)
      const ck = readCheckpoint(dir)
      const {model} = ck.manifest
      const needsMaps = connectionOf(model).coefficients !== 'none'
      const corpus = needsMaps ? checkpointCorpus(ck.manifest.data, flags.data, model.seqLen + 1, false) : undefined
      return {dir, metrics, ck, corpus}
    })
    const engines = inputs.some((i) => i.corpus) ? await this.openEngines(flags.backend) : undefined

    const runs: ReportRun[] = []
    for (const {dir, metrics, ck, corpus} of inputs) {
      const {model, train, step, data, mhc} = ck.manifest
      let analysis
      let tokens = 0
      if (corpus) {
        const maps = await checkpointMaps(engines!, ck, corpus.val, flags.tokens)
        analysis = analyzeGains(maps.hRes, model.expansion)
        tokens = maps.tokens
      }

      runs.push({
        name: dir,
        steps: metrics.steps,
        evals: metrics.evals,
        checkpoint: ck.dir,
        step,
        model,
        train,
        data: data.source,
        mhc,
        params: parameterCount(model),
        layers: analysis?.layers ?? identityLayers(numConnections(model)),
        analysis,
        tokens,
      })
    }

    const title = flags.title ?? `mhc report: ${runs.map((r) => basename(r.name)).join(', ')}`
    const html = await renderReport(runs, {title, generated: new Date().toISOString()})
    writeFileAtomic(flags.out, html)
    this.log(
      `wrote ${flags.out} (${(html.length / 1024).toFixed(0)} KiB): ${runs.length} run${runs.length === 1 ? '' : 's'}`,
    )
    return {
      out: flags.out,
      bytes: Buffer.byteLength(html),
      backend: engines ? backendJson(engines.report) : null,
      runs: runs.map((r) => ({
        run: r.name,
        checkpoint: r.checkpoint,
        step: r.step,
        arch: r.model.arch,
        tokens: r.tokens,
      })),
    }
  }
}
