// Chart files a person can open: Vega-Lite specs rendered to SVG headlessly (no browser, no canvas).
import * as vega from 'vega'
import * as vl from 'vega-lite'

import {writeFileAtomic} from '../model/io/atomic.js'

export interface Series {
  name: string
  x: number[]
  y: number[]
  panel?: string
}

export interface LineChart {
  title: string
  xTitle: string
  yTitle: string
  series: Series[]
  logY?: boolean
}

export async function renderLineChartSvg(c: LineChart): Promise<string> {
  const values = c.series.flatMap((s) =>
    s.x
      .map((x, i) => ({x, y: s.y[i], series: s.name, panel: s.panel ?? ''}))
      .filter((d) => Number.isFinite(d.y) && (!c.logY || d.y > 0)),
  )
  const panelOrder = [...new Set(values.map((v) => v.panel))]
  const panels = panelOrder.length > 1
  const layer = {
    mark: {type: 'line', point: true, strokeWidth: 2},
    encoding: {
      x: {field: 'x', type: 'quantitative', title: c.xTitle, axis: {tickMinStep: 1}},
      y: {field: 'y', type: 'quantitative', title: c.yTitle, scale: c.logY ? {type: 'log'} : {zero: false}},
      color: {field: 'series', type: 'nominal', title: null, legend: {orient: 'bottom', labelLimit: 400, columns: 2}},
    },
  }
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: c.title,
    data: {values},
    ...(panels
      ? {
          facet: {column: {field: 'panel', type: 'nominal', title: null, sort: panelOrder}},
          spec: {width: 460, height: 300, ...layer},
        }
      : {width: 560, height: 300, ...layer}),
    config: {font: 'sans-serif'},
  } as vl.TopLevelSpec
  return specToSvg(spec)
}

/** The Amax gains of H_res over depth, forward and backward panels, single and composite per run (the paper's Fig. 3 and 7). */
export function gainChart(
  runs: {label: string; layers: {layer: number; single: GainPair; composite: GainPair}[]}[],
  logY: boolean,
): LineChart {
  return {
    title: 'Amax gain of H_res over depth (mean over tokens): forward = max row sum, backward = max column sum',
    xTitle: 'layer l (attention and MLP counted separately)',
    yTitle: logY ? 'Amax gain (log scale)' : 'Amax gain',
    logY,
    series: runs.flatMap((r) =>
      (['forward', 'backward'] as const).flatMap((d) => [
        {
          name: `${r.label} composite H_{L-1}···H_l`,
          panel: `${d} gain`,
          x: r.layers.map((l) => l.layer),
          y: r.layers.map((l) => l.composite[d].mean),
        },
        {
          name: `${r.label} single H_l`,
          panel: `${d} gain`,
          x: r.layers.map((l) => l.layer),
          y: r.layers.map((l) => l.single[d].mean),
        },
      ]),
    ),
  }
}

type GainPair = {forward: {mean: number}; backward: {mean: number}}

/** An n×n matrix as a heatmap with its values written in (the paper's Fig. 8), rows = output streams. */
export function heatmapSpec(m: number[][], title: string): vl.TopLevelSpec {
  const values = m.flatMap((row, i) => row.map((v, j) => ({i, j, v})))
  const max = Math.max(...values.map((d) => Math.abs(d.v)), 1e-12)
  const cell = Math.max(28, Math.min(48, Math.floor(240 / m.length)))
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {text: title, fontSize: 12},
    data: {values},
    width: cell * m.length,
    height: cell * m.length,
    encoding: {
      x: {field: 'j', type: 'ordinal', title: 'input stream j'},
      y: {field: 'i', type: 'ordinal', title: 'output stream i'},
    },
    layer: [
      {
        mark: 'rect',
        encoding: {color: {field: 'v', type: 'quantitative', scale: {scheme: 'blues', domain: [0, max]}, legend: null}},
      },
      {
        mark: {type: 'text', fontSize: 10},
        encoding: {
          text: {field: 'v', type: 'quantitative', format: '.2f'},
          color: {condition: {test: `abs(datum.v) > ${max / 2}`, value: 'white'}, value: 'black'},
        },
      },
    ],
    config: {font: 'sans-serif'},
  } as unknown as vl.TopLevelSpec
}

export async function writeLineChartSvg(path: string, c: LineChart): Promise<void> {
  writeFileAtomic(path, await renderLineChartSvg(c))
}

// ---------------------------------------------------------------------------------------------------------------
// Training curves of several runs in one picture (mhc plot, mhc report).

export interface RunCurves {
  name: string
  steps: {step: number; loss: number; gradNorm: number; lr?: number}[]
  evals: {step: number; valLoss: number}[]
}

const PANELS = ['loss (nats/byte)', 'global gradient norm', 'learning rate']

/** Averages consecutive points down to at most `max` (x the mean step of each bucket), so long runs stay small files. */
function thin(points: {x: number; y: number}[], max = 600): {x: number; y: number}[] {
  if (points.length <= max) return points
  const out: {x: number; y: number}[] = []
  for (let b = 0; b < max; b++) {
    const part = points.slice(Math.floor((b * points.length) / max), Math.floor(((b + 1) * points.length) / max))
    const ok = part.filter((p) => Number.isFinite(p.y))
    if (ok.length > 0)
      out.push({x: ok.reduce((s, p) => s + p.x, 0) / ok.length, y: ok.reduce((s, p) => s + p.y, 0) / ok.length})
  }

  return out
}

/** The Vega-Lite spec: one panel per quantity (own y scale), a colour per run, validation dashed with points. */
export function runCurvesSpec(runs: RunCurves[], title = 'training curves'): vl.TopLevelSpec {
  const values = runs.flatMap((r) => {
    const rows = (panel: string, series: string, pts: {x: number; y: number}[]) =>
      thin(pts)
        .filter((p) => Number.isFinite(p.y))
        .map((p) => ({run: r.name, panel, series, step: p.x, value: p.y}))
    return [
      ...rows(
        PANELS[0],
        'train',
        r.steps.map((s) => ({x: s.step, y: s.loss})),
      ),
      ...rows(
        PANELS[0],
        'validation',
        r.evals.map((e) => ({x: e.step, y: e.valLoss})),
      ),
      ...rows(
        PANELS[1],
        'train',
        r.steps.map((s) => ({x: s.step, y: s.gradNorm})),
      ),
      ...rows(
        PANELS[2],
        'train',
        r.steps.filter((s) => s.lr !== undefined).map((s) => ({x: s.step, y: s.lr!})),
      ),
    ]
  })
  const x = {field: 'step', type: 'quantitative', title: 'step'}
  const y = {field: 'value', type: 'quantitative', title: null, scale: {zero: false}}
  const color = {field: 'run', type: 'nominal', title: null, legend: {orient: 'bottom', labelLimit: 600, columns: 1}}
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    data: {values},
    facet: {field: 'panel', type: 'nominal', title: null, sort: PANELS},
    columns: 3,
    spec: {
      width: 340,
      height: 240,
      layer: [
        {
          mark: {type: 'line', strokeWidth: 1.5},
          encoding: {
            x,
            y,
            color,
            strokeDash: {field: 'series', type: 'nominal', title: null, legend: {orient: 'bottom'}},
            detail: {field: 'series'},
          },
        },
        {
          transform: [{filter: "datum.series === 'validation'"}],
          mark: {type: 'point', filled: true, size: 30},
          encoding: {x, y, color},
        },
      ],
    },
    resolve: {scale: {y: 'independent'}},
    config: {font: 'sans-serif'},
  } as unknown as vl.TopLevelSpec
}

export async function specToSvg(spec: vl.TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(vl.compile(spec).spec), {renderer: 'none'})
  try {
    return await view.toSVG()
  } finally {
    view.finalize()
  }
}

/** An SVG rasterised to PNG (resvg; system fonts, DejaVu Sans where "sans-serif" is asked for), `scale` × its size. */
export async function svgToPng(svg: string, scale = 2): Promise<Uint8Array> {
  const {Resvg} = await import('@resvg/resvg-js')
  const width = Number(/<svg[^>]*\swidth="([\d.]+)"/.exec(svg)?.[1] ?? 800)
  const r = new Resvg(svg, {
    background: 'white',
    fitTo: {mode: 'width', value: Math.round(width * scale)},
    font: {loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans', sansSerifFamily: 'DejaVu Sans'},
  })
  return r.render().asPng()
}

export const CHART_FILE_EXTENSIONS = ['.svg', '.png']

/** Writes a chart as SVG or PNG, by the file's extension (atomically). */
export async function writeChartFile(path: string, svg: string): Promise<void> {
  writeFileAtomic(path, path.toLowerCase().endsWith('.png') ? await svgToPng(svg) : svg)
}
