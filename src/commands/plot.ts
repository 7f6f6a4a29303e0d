import {Args, Flags} from '@oclif/core'
import {statSync} from 'node:fs'
import {join, resolve} from 'node:path'

import {assertWritableFile, BaseCommand, flagError, UsageError} from '../cli/base.js'
import {chart, table} from '../cli/render.js'
import {CHART_FILE_EXTENSIONS, RunCurves, runCurvesSpec, specToSvg, writeChartFile} from '../cli/svg.js'
import {readRunSteps} from '../model/train/run-dir.js'

export default class Plot extends BaseCommand {
  static override description = `Training curves of one or more runs in one picture: train and validation loss, gradient norm and learning rate against step.

Reads each run directory's metrics.jsonl. Prints a summary table and the train loss in the terminal; --out writes the full picture as SVG or PNG (by the extension; repeatable).`
  static override examples = [
    '<%= config.bin %> <%= command.id %> runs/hc runs/mhc --out curves.svg --out curves.png',
    '<%= config.bin %> <%= command.id %> runs/mhc --json',
  ]
  static override strict = false // any number of runs
  static override args = {run: Args.string({required: true, description: 'run directory (more may follow)'})}
  static override flags = {
    out: Flags.string({multiple: true, description: 'write the picture to this .svg or .png file (repeatable)'}),
    title: Flags.string({description: 'title of the picture [default: the run names]'}),
  }

  async run() {
    const {argv, flags} = await this.parse(Plot).catch(flagError)
    this.verbose = flags.verbose
    for (const out of flags.out ?? []) assertWritableFile(out, '--out', CHART_FILE_EXTENSIONS)
    const dirs = argv as string[]
    const twice = dirs.find((d, i) => dirs.findIndex((e) => resolve(e) === resolve(d)) !== i)
    if (twice) throw new UsageError(`${twice} is given twice`)
    const runs: RunCurves[] = dirs.map((dir) => {
      if (!statSync(dir, {throwIfNoEntry: false})?.isDirectory())
        throw new UsageError(`${dir}: not a run directory (metrics.jsonl expected inside)`)
      const {steps, evals, tornLastLine} = readRunSteps(dir)
      if (tornLastLine) this.logToStderr(`note: ${join(dir, 'metrics.jsonl')} ends in a torn line (skipped)`)
      if (steps.length === 0) throw new UsageError(`${dir}: metrics.jsonl holds no training steps`)
      return {name: dir, steps, evals}
    })

    const summary = runs.map((r) => {
      const finite = r.evals.filter((e) => Number.isFinite(e.valLoss))
      const best = finite.reduce<(typeof finite)[number] | undefined>(
        (b, e) => (!b || e.valLoss < b.valLoss ? e : b),
        undefined,
      )
      return {
        run: r.name,
        steps: r.steps.at(-1)!.step,
        trainLoss: r.steps.at(-1)!.loss,
        valLoss: r.evals.at(-1)?.valLoss ?? null,
        bestValLoss: best?.valLoss ?? null,
        bestStep: best?.step ?? null,
      }
    })
    const f = (v: null | number) => (v === null ? '-' : v.toFixed(4))
    this.log(
      table(
        ['run', 'steps', 'train loss (last)', 'val loss (last)', 'best val loss (step)'],
        summary.map((s) => [
          s.run,
          s.steps,
          f(s.trainLoss),
          f(s.valLoss),
          s.bestValLoss === null ? '-' : `${f(s.bestValLoss)} (${s.bestStep})`,
        ]),
      ),
    )
    // The terminal chart shares one step grid: a run shorter than the longest is held at its last value.
    const last = Math.max(...summary.map((s) => s.steps))
    const grid = (r: RunCurves) => {
      const at = new Map(r.steps.map((s) => [s.step, s.loss]))
      return Array.from({length: last}, (_, i) => at.get(i + 1) ?? Number.NaN)
    }

    this.log(
      chart(
        'train loss (nats/byte)',
        runs.map(grid),
        runs.map((r) => r.name),
        {x: {from: 1, to: last, title: 'step'}},
      ),
    )

    const files = flags.out ?? []
    if (files.length > 0) {
      const svg = await specToSvg(runCurvesSpec(runs, flags.title ?? runs.map((r) => r.name).join(' vs ')))
      for (const out of files) {
        await writeChartFile(out, svg)
        this.logToStderr(`wrote ${out}`)
      }
    }

    return {runs: summary, files}
  }
}
