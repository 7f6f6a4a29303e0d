// Terminal charts (src/cli/render.ts) and the curves picture (src/cli/svg.ts): gaps, the step axis, the data drawn,
// and the PNG actually holding the lines and the text.
import assert from 'node:assert/strict'
import {test} from 'node:test'
import {PNG} from 'pngjs'

import {chart, fillGaps} from '../../src/cli/render.js'
import {runCurvesSpec, specToSvg, svgToPng} from '../../src/cli/svg.js'

test('fillGaps holds the last finite value, and the first one before it', () => {
  assert.deepEqual(fillGaps([Number.NaN, 2, Number.NaN, Infinity, 5, Number.NaN]), [2, 2, 2, 2, 5, 5])
  assert.deepEqual(fillGaps([Number.NaN]), [Number.NaN])
})

test('chart: NaN and Inf do not break it, a series with nothing finite is named, the step axis spans the plot', () => {
  const text = chart(
    'loss',
    [[3, Number.NaN, 2, 1, Infinity, 0.5], Array.from({length: 6}).fill(Number.NaN) as number[]],
    ['train', 'val'],
    {
      x: {from: 10, to: 60, title: 'step'},
    },
  )
  const lines = text.split('\n')
  assert.match(text, /\(no finite values: val\)/)
  const rule = lines.find((l) => l.includes('┬'))!
  const labels = lines[lines.indexOf(rule) + 1]
  // The plot's first column is where the first label starts; the last label ends near the last column.
  const first = lines.find((l) => l.includes('┼') || l.includes('┤'))!
  const column = first.search(/[┼┤]/) // where point 0 is drawn
  assert.equal(rule.indexOf('┬'), column)
  assert.equal(labels.indexOf('10'), column)
  assert.match(labels, /60 {2}step$/)
  assert.equal(rule.length, column + 6) // six points
  assert.equal(chart('empty', [[Number.NaN]], ['x']), 'empty: no finite values')
})

const runs = [
  {
    name: 'runs/a',
    steps: Array.from({length: 1200}, (_, i) => ({step: i + 1, loss: 3 - i / 1000, gradNorm: 1, lr: 0.001})),
    evals: [
      {step: 600, valLoss: 2.5},
      {step: 1200, valLoss: 2},
    ],
  },
  {
    name: 'runs/b',
    steps: [
      {step: 1, loss: 4, gradNorm: Number.NaN, lr: 0.002},
      {step: 600, loss: 3.5, gradNorm: Number.NaN, lr: 0.002},
      {step: 1200, loss: 3.2, gradNorm: Number.NaN, lr: 0.002},
    ],
    evals: [],
  },
]

test('runCurvesSpec: every quantity of every run, long runs averaged in buckets, non-finite points left out', () => {
  const values = (runCurvesSpec(runs) as any).data.values as any[]
  const of = (run: string, panel: string, series: string) =>
    values.filter((v) => v.run === run && v.panel.startsWith(panel) && v.series === series)
  const train = of('runs/a', 'loss', 'train')
  assert.equal(train.length, 600) // 1200 steps in buckets of two
  assert.equal(train[0].step, 1.5)
  assert.ok(Math.abs(train[0].value - 2.9995) < 1e-12, String(train[0].value)) // the mean of 3 and 2.999
  assert.deepEqual(
    of('runs/a', 'loss', 'validation').map((v) => [v.step, v.value]),
    [
      [600, 2.5],
      [1200, 2],
    ],
  )
  assert.equal(of('runs/b', 'global', 'train').length, 0) // its gradient norms are all NaN
  assert.deepEqual(
    of('runs/b', 'learning', 'train').map((v) => v.step),
    [1, 600, 1200],
  )
})

test('the PNG holds the runs in their colours and readable text', async () => {
  const svg = await specToSvg(runCurvesSpec(runs, 'TITLE'))
  const png = PNG.sync.read(Buffer.from(await svgToPng(svg, 1)))
  const width = Number(/<svg[^>]*\swidth="([\d.]+)"/.exec(svg)![1])
  assert.equal(png.width, Math.round(width))
  const count = (hex: string, x0 = 0, y0 = 0, x1 = png.width, y1 = png.height) => {
    const [r, g, b] = [1, 3, 5].map((i) => Number.parseInt(hex.slice(i, i + 2), 16))
    let n = 0
    for (let y = y0; y < y1; y++)
      for (let x = x0; x < x1; x++) {
        const i = 4 * (y * png.width + x)
        if (Math.abs(png.data[i] - r) + Math.abs(png.data[i + 1] - g) + Math.abs(png.data[i + 2] - b) < 40) n++
      }

    return n
  }

  // Vega's first two category colours: runs/a blue, runs/b orange.
  assert.ok(count('#4c78a8') > 300, `blue pixels: ${count('#4c78a8')}`)
  assert.ok(count('#f58518') > 100, `orange pixels: ${count('#f58518')}`)
  // The title is drawn as glyphs (fonts found): dark pixels in the top-left corner.
  assert.ok(count('#000000', 0, 0, 120, 24) > 30, 'no title text: no font was found for the PNG')
})
