// Shared test scaffolding: the CLI as a real child process (real exit codes; @oclif/test's capture breaks node:test's
// child-process protocol, see ../shared/reference/ecosystem.md §1.6), killed if it hangs.
import {ChildProcess, spawn} from 'node:child_process'
import {mkdtempSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'

export const repo = fileURLToPath(new URL('..', import.meta.url))
// tsx by URL, so that a child started in another working directory still finds it.
const TSX = import.meta.resolve('tsx')

// The user's own ~/.config/mhc/config.json must not steer the tests: every child reads an empty one.
export const EMPTY_CONFIG = join(mkdtempSync(join(tmpdir(), 'mhc-config-')), 'config.json')
writeFileSync(EMPTY_CONFIG, '{}\n')

export interface CliResult {
  status: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  timedOut: boolean
}

export interface CliOptions {
  cwd?: string
  /** Added to the environment; an undefined value removes the variable. */
  env?: Record<string, string | undefined>
  timeoutMs?: number
  /** Node options before the CLI (e.g. a module hook: ['--import', file]). */
  nodeArgs?: string[]
}

/**
 * Starts `mhc ...args` from the sources (bin/dev.js under tsx) and hands back the child (tests that signal it) and its
 * result. tfjs-node-gpu and the user's config file are kept out unless the caller's env says otherwise, DEBUG is
 * cleared (it adds stack traces), and a child that outlives `timeoutMs` is killed with SIGKILL (then `timedOut` is
 * true and the test fails on its status).
 */
export function startCli(
  args: string[],
  opts: CliOptions = {},
): {child: ChildProcess; done: Promise<CliResult>; stderr: () => string} {
  const env: NodeJS.ProcessEnv = {...process.env, MHC_NO_TFJS_NODE: '1', MHC_CONFIG: EMPTY_CONFIG, ...opts.env}
  delete env.DEBUG
  for (const [k, v] of Object.entries(opts.env ?? {})) if (v === undefined) delete env[k]
  const child = spawn(
    process.execPath,
    [...(opts.nodeArgs ?? []), '--import', TSX, join(repo, 'bin', 'dev.js'), ...args],
    {cwd: opts.cwd ?? repo, env},
  )
  let stdout = ''
  let stderr = ''
  let timedOut = false
  child.stdout!.setEncoding('utf8').on('data', (d) => {
    stdout += d
  })
  child.stderr!.setEncoding('utf8').on('data', (d) => {
    stderr += d
  })
  const done = new Promise<CliResult>((resolve, reject) => {
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, opts.timeoutMs ?? 120_000)
    child.on('error', reject)
    child.on('close', (status, signal) => {
      clearTimeout(timer)
      resolve({status, signal, stdout, stderr, timedOut})
    })
  })
  return {child, done, stderr: () => stderr}
}

/** Runs `mhc ...args` to the end (see startCli). */
export const runCli = (args: string[], opts: CliOptions = {}): Promise<CliResult> => startCli(args, opts).done

export const showRun = (r: CliResult) =>
  `exit ${r.status}${r.signal ? ` (${r.signal})` : ''}${r.timedOut ? ' TIMED OUT' : ''}\n--- stdout:\n${r.stdout.slice(-2500)}\n--- stderr:\n${r.stderr.slice(-2500)}`
