// `mhc report`: one self-contained HTML file about one or more runs (no scripts, no links out: the charts are inline
// SVG), to keep beside a paper draft or attach to a CI job: a summary, the training curves, the gains of H_res over
// depth, the token-mean H_res heatmaps, and each run's configuration.
import type {ModelConfig, TrainConfig} from '../model/config.js'
import type {GainAnalysis, LayerGains} from '../profile/analysis/gain.js'

import {gainChart, heatmapSpec, renderLineChartSvg, RunCurves, runCurvesSpec, specToSvg} from './svg.js'

export interface ReportRun extends RunCurves {
  checkpoint: string
  step: number
  model: ModelConfig
  train: TrainConfig
  data: string
  mhc?: {version: string; commit?: string}
  params: number
  layers: LayerGains[]
  analysis?: GainAnalysis // hc/mhc: the maps' analysis (the baseline's H_res is the identity)
  tokens: number
}

const esc = (s: unknown) =>
  String(s).replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;').replaceAll('"', '&quot;')
const num = (v: number | undefined, d = 4) => (v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(d))
const gain = (v: number) => (v >= 1000 ? v.toExponential(2) : v.toFixed(3))

function table(head: string[], rows: (number | string)[][]): string {
  const tr = (cells: (number | string)[], tag: string) =>
    `<tr>${cells.map((c) => `<${tag}>${esc(c)}</${tag}>`).join('')}</tr>`
  return `<table><thead>${tr(head, 'th')}</thead><tbody>${rows.map((r) => tr(r, 'td')).join('')}</tbody></table>`
}

/** Strips the XML prolog so that an SVG can sit inside HTML. */
const inline = (svg: string) => svg.replace(/^<\?xml[^>]*>\s*/, '')

export async function renderReport(runs: ReportRun[], o: {title: string; generated: string}): Promise<string> {
  const last = (r: ReportRun) => r.steps.at(-1)
  const bestVal = (r: ReportRun) => Math.min(...r.evals.map((e) => e.valLoss).filter(Number.isFinite))
  const worst = (r: ReportRun, k: 'composite' | 'single', d: 'backward' | 'forward') =>
    Math.max(...r.layers.map((l) => l[k][d].mean))
  const summary = table(
    [
      'run',
      'arch',
      'n',
      'parameters',
      'step',
      'train loss',
      'val loss',
      'best val loss',
      'max single gain (fwd/bwd)',
      'max composite gain (fwd/bwd)',
    ],
    runs.map((r) => [
      r.name,
      r.model.arch,
      r.model.arch === 'baseline' ? 1 : r.model.expansion,
      r.params.toLocaleString('en-US'),
      r.step,
      num(last(r)?.loss),
      num(r.evals.at(-1)?.valLoss),
      num(bestVal(r)),
      `${gain(worst(r, 'single', 'forward'))} / ${gain(worst(r, 'single', 'backward'))}`,
      `${gain(worst(r, 'composite', 'forward'))} / ${gain(worst(r, 'composite', 'backward'))}`,
    ]),
  )

  const curves = inline(await specToSvg(runCurvesSpec(runs, 'training curves')))
  const all = runs.flatMap((r) => r.layers.flatMap((l) => [l.single.forward.mean, l.composite.backward.mean]))
  const logY = Math.max(...all) / Math.max(1e-12, Math.min(...all)) > 10
  const gains = inline(
    await renderLineChartSvg(
      gainChart(
        runs.map((r) => ({label: `${r.name} (${r.model.arch})`, layers: r.layers})),
        logY,
      ),
    ),
  )

  const heatmaps: string[] = []
  for (const r of runs) {
    if (!r.analysis) {
      heatmaps.push(`<h3>${esc(r.name)}</h3><p>A residual connection: H_res is the identity (n = 1).</p>`)
      continue
    }

    const L = r.analysis.meanSingle.length
    const layers = [...new Set([0, L - 1, Math.floor(L / 2)])]
    const svgs = await Promise.all(
      layers.flatMap((l) => [
        specToSvg(heatmapSpec(r.analysis!.meanSingle[l], `H_res of layer ${l}`)),
        specToSvg(heatmapSpec(r.analysis!.meanComposite[l], `H_res_${L - 1}···H_res_${l}`)),
      ]),
    )
    heatmaps.push(
      `<h3>${esc(r.name)} (${esc(r.model.arch)}, ${r.tokens} tokens)</h3><div class="row">${svgs.map((s) => `<figure>${inline(s)}</figure>`).join('')}</div>`,
    )
  }

  // One table, a column per run, so that differences between runs line up.
  const settings = (r: ReportRun): [string, unknown][] => [
    ['checkpoint', r.checkpoint],
    ['corpus', r.data],
    ['mhc', r.mhc ? `${r.mhc.version}${r.mhc.commit ? ` (${r.mhc.commit.slice(0, 12)})` : ''}` : 'not recorded'],
    ...Object.entries(r.model).map(([k, v]): [string, unknown] => [`model.${k}`, v]),
    ...Object.entries(r.train).map(([k, v]): [string, unknown] => [`train.${k}`, v]),
  ]
  const keys = [...new Set(runs.flatMap((r) => settings(r).map(([k]) => k)))]
  const values = runs.map((r) => new Map(settings(r)))
  const configs = table(
    ['setting', ...runs.map((r) => r.name)],
    keys.map((k) => [k, ...values.map((v) => (v.has(k) ? String(v.get(k)) : '–'))]),
  )

  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(o.title)}</title>
<style>
body{font-family:sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.row{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}svg{max-width:100%;height:auto}
.meta{color:#666;font-size:.9em}
</style></head><body>
<h1>${esc(o.title)}</h1>
<p class="meta">Generated by mhc report on ${esc(o.generated)}. Gains are Amax gains of H_res (forward = max absolute row sum, backward = max absolute column sum), averaged over the sampled tokens; composite = H_res,L−1···H_res,l.</p>
<h2 id="summary">Summary</h2>${summary}
<h2 id="curves">Training curves</h2><figure>${curves}</figure>
<h2 id="gains">Gains of H_res over depth</h2><figure>${gains}</figure>
<h2 id="heatmaps">H_res heatmaps (token mean)</h2>${heatmaps.join('\n')}
<h2 id="config">Configuration</h2>${configs}
</body></html>
`
}
