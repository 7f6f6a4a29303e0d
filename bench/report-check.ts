import {resolve} from 'node:path'
import {pathToFileURL} from 'node:url'
// Does `mhc report` render in a real browser? Opens the HTML file in headless Chromium (Debian's, through
// playwright-core), checks that every section is there and every chart drew (each inline SVG has a size and marks:
// the curves' and gains' lines, the heatmaps' cells), that nothing tried to load from the network and the console
// stayed clean, and takes a full-page screenshot.
// Usage: node --import tsx bench/report-check.ts REPORT.html SCREENSHOT.png > RESULT.json
//        (apt-get install chromium; CHROMIUM=/path overrides /usr/bin/chromium)
import {chromium} from 'playwright-core'

type Chart = {width: number; height: number; marks: number}
type Found = {
  title: string
  summary: {present: boolean; charts: Chart[]}
  curves: {present: boolean; charts: Chart[]}
  gains: {present: boolean; charts: Chart[]}
  heatmaps: {present: boolean; charts: Chart[]}
  config: {present: boolean; columns: number} // setting, then one per run
  summaryRows: number
}

const [report, screenshot] = process.argv.slice(2)
if (!report || !screenshot) throw new Error('usage: report-check.ts REPORT.html SCREENSHOT.png')

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  // The flags the machine notes ask for: no sandbox as root, no GPU, no background network traffic.
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
})
try {
  const page = await browser.newPage({viewport: {width: 1400, height: 900}})
  const console: string[] = []
  const requests: string[] = []
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.push(`${m.type()}: ${m.text()}`)
  })
  page.on('pageerror', (e) => console.push(`pageerror: ${e.message}`))
  page.on('request', (r) => {
    if (!r.url().startsWith('file:')) requests.push(r.url())
  })
  await page.goto(pathToFileURL(resolve(report)).href, {waitUntil: 'load'})
  // A string, not a function: tsx's transform would add helpers that do not exist in the page.
  const found = (await page.evaluate(`(() => {
    const section = (id) => {
      const h = document.getElementById(id)
      const svgs = []
      for (let el = h && h.nextElementSibling; el && el.tagName !== 'H2'; el = el.nextElementSibling)
        svgs.push(...(el.tagName === 'svg' ? [el] : el.querySelectorAll('svg')))
      return {
        present: Boolean(h),
        charts: svgs.map((s) => {
          const box = s.getBoundingClientRect()
          return {
            width: Math.round(box.width),
            height: Math.round(box.height),
            marks: s.querySelectorAll('.mark-line path, .mark-rect path, .mark-symbol path').length,
          }
        }),
      }
    }
    return {
      title: document.title,
      summary: section('summary'),
      curves: section('curves'),
      gains: section('gains'),
      heatmaps: section('heatmaps'),
      config: {present: Boolean(document.getElementById('config')), columns: document.querySelectorAll('#config + table thead th').length},
      summaryRows: document.querySelectorAll('#summary + table tbody tr').length,
    }
  })()`)) as Found
  await page.screenshot({path: screenshot, fullPage: true})
  const drawn = (s: {charts: Chart[]}) =>
    s.charts.length > 0 && s.charts.every((c) => c.width > 100 && c.height > 100 && c.marks > 0)
  const ok =
    found.summary.present &&
    found.summaryRows > 0 &&
    drawn(found.curves) &&
    drawn(found.gains) &&
    drawn(found.heatmaps) &&
    found.config.present &&
    found.config.columns === found.summaryRows + 1 &&
    console.length === 0 &&
    requests.length === 0
  process.stdout.write(
    JSON.stringify(
      {browser: `Chromium ${browser.version()}`, report, screenshot, ok, ...found, console, requests},
      null,
      1,
    ) + '\n',
  )
  if (!ok) process.exitCode = 1
} finally {
  await browser.close()
}
