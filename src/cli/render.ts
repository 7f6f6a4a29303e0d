// Terminal rendering shared by commands: tables, charts, progress bars. No maths here.
import asciichart from 'asciichart'
import cliProgress from 'cli-progress'
import Table from 'cli-table3'

export function table(head: string[], rows: (string | number)[][], align?: ('left' | 'right' | 'center')[]): string {
  const t = new Table({
    head,
    style: {head: [], border: []},
    colAligns: align ?? head.map((_, i) => (i === 0 ? 'left' : 'right')),
  })
  for (const r of rows) t.push(r.map(String))
  return t.toString()
}

/** Averages a long series down to at most `width` points so the chart fits a terminal. */
export function downsample(xs: number[], width = 72): number[] {
  if (xs.length <= width) return xs
  const out: number[] = []
  for (let i = 0; i < width; i++) {
    const a = Math.floor((i * xs.length) / width)
    const b = Math.max(a + 1, Math.floor(((i + 1) * xs.length) / width))
    const slice = xs.slice(a, b).filter(Number.isFinite)
    out.push(slice.length > 0 ? slice.reduce((s, v) => s + v, 0) / slice.length : Number.NaN)
  }

  return out
}

/** Non-finite points take the previous finite value (the first finite one before it): asciichart cannot draw gaps. */
export function fillGaps(xs: number[]): number[] {
  let last = xs.find(Number.isFinite) ?? Number.NaN
  return xs.map((v) => {
    if (Number.isFinite(v)) last = v
    return last
  })
}

/**
 * A terminal line chart (asciichart) of series that share an x grid. Series are averaged down to fit 72 columns; one
 * with no finite value is left out and said so. With `x`, an axis under the plot labels the first and last x (e.g.
 * steps) and three ticks between.
 */
export function chart(
  title: string,
  series: number[][],
  legend: string[],
  opts: {height?: number; digits?: number; x?: {from: number; to: number; title?: string}} = {},
): string {
  const shown = series.map((s, i) => ({s: downsample(s), name: legend[i]})).filter((e) => e.s.some(Number.isFinite))
  if (shown.length === 0) return `${title}: no finite values`
  const missing = legend.filter((name) => !shown.some((e) => e.name === name))
  const data = shown.map((e) => fillGaps(e.s))
  const values = data.flat()
  const colors = process.stdout.isTTY
    ? [asciichart.blue, asciichart.red, asciichart.green, asciichart.magenta]
    : undefined
  const labelWidth = 9
  const plot = asciichart.plot(data, {
    height: opts.height ?? 10,
    min: Math.min(...values),
    max: Math.max(...values),
    colors: colors?.slice(0, data.length),
    format: (x: number) => x.toFixed(opts.digits ?? 3).padStart(labelWidth),
  })
  const names = shown.map((e) => e.name)
  const key =
    names.length <= 1
      ? ''
      : colors
        ? '  ' + names.map((l, i) => `${['blue', 'red', 'green', 'magenta'][i]}=${l}`).join('  ')
        : `  (series: ${names.join('; ')}; colours need a terminal, or see the chart file)`
  const note = missing.length > 0 ? `\n  (no finite values: ${missing.join(', ')})` : ''
  // asciichart puts point i at column labelWidth + 1 + i (point 0 on the y axis itself).
  const axis = opts.x ? '\n' + xAxis(opts.x, Math.max(...data.map((d) => d.length)), labelWidth + 1) : ''
  const head = title.length + key.length > 120 ? `${title}\n${key.trimStart()}` : `${title}${key}` // fit 120 columns
  return `${head}\n${plot}${axis}${note}`
}

/** The x axis under an asciichart plot whose points start at column `left`: a rule, then five labelled ticks. */
function xAxis(x: {from: number; to: number; title?: string}, width: number, left: number): string {
  const rule = [...(' '.repeat(left) + '─'.repeat(width))]
  const labels = [...' '.repeat(left + width + 8)]
  for (const f of [0, 1, 0.5, 0.25, 0.75]) {
    // the ends first: a label that would touch another is left out
    const col = Math.round(f * (width - 1))
    const text = String(Math.round(x.from + f * (x.to - x.from)))
    rule[left + col] = '┬'
    // The first label starts at its tick, the last ends at its tick, the others are centred on theirs.
    const at = left + col - (f === 0 ? 0 : f === 1 ? text.length - 1 : Math.floor(text.length / 2))
    const start = Math.min(Math.max(0, at), labels.length - text.length)
    if (labels.slice(start - 1, start + text.length + 1).every((c) => c === ' '))
      labels.splice(start, text.length, ...text)
  }

  return `${rule.join('')}\n${labels.join('').trimEnd()}${x.title ? `  ${x.title}` : ''}`
}

/**
 * A progress bar on stderr (cli-progress); a no-op when disabled (--json, --no-progress). The default format is
 * training's; `format` gives another, with its own {payload} fields.
 */
export function progressBar(label: string, total: number, enabled: boolean, format?: string) {
  if (!enabled) return {start(_v = 0, _p?: object) {}, update(_v: number, _p?: object) {}, stop() {}}
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${label} |{bar}| ${format ?? '{value}/{total} | loss {loss} | val {val} | {tok_s} tok/s | eta {remaining}'}`,
      noTTYOutput: !process.stderr.isTTY,
      notTTYSchedule: 5000,
      etaBuffer: 50,
      hideCursor: true,
    },
    cliProgress.Presets.shades_classic,
  )
  return {
    start: (value = 0, p?: object) => bar.start(total, value, p ?? {loss: '-', val: '-', tok_s: '-', remaining: '-'}),
    update: (v: number, p?: object) => bar.update(v, p),
    stop: () => bar.stop(),
  }
}

const SHADES = [' ', '░', '▒', '▓', '█']

/**
 * An n×n matrix as a small text heatmap, in the manner of the paper's Fig. 8: each cell shows its value and a shade
 * for |value| relative to the largest entry; row sums (forward gain) on the right, column sums (backward gain) below.
 */
export function heatmap(title: string, m: number[][], digits = 2): string {
  const n = m.length
  const maxAbs = Math.max(...m.flat().map(Math.abs), 1e-12)
  const w = Math.max(6, ...m.flat().map((v) => v.toFixed(digits).length + 2))
  const cell = (v: number) => {
    const shade = SHADES[Math.min(SHADES.length - 1, Math.round((Math.abs(v) / maxAbs) * (SHADES.length - 1)))]
    return (shade + v.toFixed(digits)).padStart(w)
  }

  const rowSums = m.map((r) => r.reduce((a, v) => a + v, 0))
  const colSums = m[0].map((_, j) => m.reduce((a, r) => a + r[j], 0))
  const lines = [title, ' '.repeat(4) + m[0].map((_, j) => `j=${j}`.padStart(w)).join('') + ' │ row sum']
  for (const [i, r] of m.entries())
    lines.push(`i=${i} `.padEnd(4) + r.map(cell).join('') + ' │ ' + rowSums[i].toFixed(digits))
  lines.push(
    ' '.repeat(4) + '─'.repeat(w * n) + '─┘',
    'col'.padEnd(4) + colSums.map((v) => v.toFixed(digits).padStart(w)).join('') + '   (column sums)',
  )
  return lines.join('\n')
}

/** Two blocks of text side by side. */
export function sideBySide(a: string, b: string, gap = 4): string {
  const la = a.split('\n')
  const lb = b.split('\n')
  const w = Math.max(...la.map((l) => l.length))
  return Array.from(
    {length: Math.max(la.length, lb.length)},
    (_, i) => (la[i] ?? '').padEnd(w + gap) + (lb[i] ?? ''),
  ).join('\n')
}
