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
  const view = new vega.View(vega.parse(vl.compile(spec).spec), {renderer: 'none'})
  try {
    return await view.toSVG()
  } finally {
    view.finalize()
  }
}

export async function writeLineChartSvg(path: string, c: LineChart): Promise<void> {
  writeFileAtomic(path, await renderLineChartSvg(c))
}
