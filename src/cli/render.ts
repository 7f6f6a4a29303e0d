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

export function chart(
  title: string,
  series: number[][],
  legend: string[],
  opts: {height?: number; digits?: number} = {},
): string {
  const finite = series.map((s) => downsample(s).map((v) => (Number.isFinite(v) ? v : Number.NaN)))
  if (finite.every((s) => s.filter(Number.isFinite).length === 0)) return `${title}: no finite values`
  const colors = process.stdout.isTTY
    ? [asciichart.blue, asciichart.red, asciichart.green, asciichart.magenta]
    : undefined
  const plot = asciichart.plot(finite, {
    height: opts.height ?? 10,
    colors: colors?.slice(0, finite.length),
    format: (x: number) => x.toFixed(opts.digits ?? 3).padStart(9),
  })
  const key =
    legend.length <= 1
      ? ''
      : colors
        ? '  ' + legend.map((l, i) => `${['blue', 'red', 'green', 'magenta'][i]}=${l}`).join('  ')
        : `  (series: ${legend.join('; ')}; colours need a terminal, or see the chart file)`
  return `${title}${key}\n${plot}`
}

export function progressBar(label: string, total: number, enabled: boolean) {
  if (!enabled) return {start() {}, update(_v: number, _p?: object) {}, stop() {}}
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${label} |{bar}| {value}/{total} | loss {loss} | val {val} | {tok_s} tok/s | eta {remaining}`,
      noTTYOutput: !process.stderr.isTTY,
      notTTYSchedule: 5000,
      etaBuffer: 50,
      hideCursor: true,
    },
    cliProgress.Presets.shades_classic,
  )
  return {
    start: (value = 0) => bar.start(total, value, {loss: '-', val: '-', tok_s: '-', remaining: '-'}),
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
