// Shared command behaviour: one-line errors with meaningful exit codes, also under --json.
import {Command, Flags, Interfaces} from '@oclif/core'
import {closest, distance} from 'fastest-levenshtein'
import {accessSync, constants, existsSync, realpathSync, statfsSync, statSync} from 'node:fs'
import {basename, dirname, extname, isAbsolute, relative, resolve} from 'node:path'

import type {EngineOptions, Engines} from '../model/engines/index.js'

import {BackendName, describeBackend, memoryBudget, resolveBackendChoice} from '../model/engines/backends.js'
import {InputError, NonFiniteError} from '../model/errors.js'
import {TrainingEstimate, trainingMemoryEstimate, TrainingShape} from '../profile/cost-models/memory.js'

// oclif's parser output shapes (not exported by name).
type FlagOutput = {[name: string]: any}
type ArgOutput = {[name: string]: any}

/** A flag or flag combination the user can fix: exit 2. */
export class UsageError extends InputError {}

/**
 * Exit codes, the same in every command (README, "Exit codes"): 1 is a gate that failed and nothing else; an
 * unexpected failure is 70 (EX_SOFTWARE in sysexits.h), so a CI job never mistakes a crash for a verdict.
 */
export const EXIT = {ok: 0, gateFailed: 1, badInput: 2, diverged: 3, internal: 70, sigint: 130, sigterm: 143} as const

export abstract class BaseCommand extends Command {
  static override enableJsonFlag = true
  static baseFlags = {
    verbose: Flags.boolean({
      description:
        'more detail (profile-time, profile-memory: every assumption and table) and stack traces of errors (also DEBUG=mhc)',
      default: false,
      helpGroup: 'GLOBAL',
    }),
  }
  protected verbose = false

  /** oclif's parse, with a suggestion when a flag does not exist. */
  protected override async parse<F extends FlagOutput, B extends FlagOutput, A extends ArgOutput>(
    options?: Interfaces.Input<F, B, A>,
    argv?: string[],
  ): Promise<Interfaces.ParserOutput<F, B, A>> {
    try {
      return await super.parse(options, argv)
    } catch (error) {
      const known = Object.keys({...options?.flags, ...options?.baseFlags, json: true})
      throw new UsageError(suggestFlag(oneLine(error), known))
    }
  }

  protected override async catch(err: any): Promise<any> {
    if (err?.code === 'EEXIT') return super.catch(err) // this.exit(n): deliberate, silent
    const {message, exit} = this.classify(err)
    process.exitCode = exit
    // Printed here rather than by oclif, which wraps long messages over several lines and, under --json,
    // always exits 1 whatever the error's exit code.
    if (this.jsonEnabled()) this.logJson({error: {message, exit, name: err?.name ?? 'Error'}})
    else process.stderr.write(`Error: ${message}\n`)
    this.exit(exit)
  }

  private classify(err: any): {message: string; exit: number} {
    const debug = this.verbose || process.argv.includes('--verbose') || /\bmhc\b|\*/.test(process.env.DEBUG ?? '')
    if (debug && err?.stack) process.stderr.write(err.stack + '\n')
    return {message: oneLine(err), exit: exitCodeFor(err)}
  }

  /**
   * Opens the engines on a backend: --backend, else $MHC_BACKEND, else the config file, else auto. Loads the engine's
   * code only now, and says which backend runs in one line on stderr (suppressed under --json, where the result
   * carries it as `backend`).
   */
  /** `needs`: the model and options the command will create, when known (an engine that cannot run them is skipped). */
  protected async openEngines(flag: string | undefined, needs: Partial<EngineOptions> = {}): Promise<Engines> {
    const choice = resolveBackendChoice(flag, this.config.configDir)
    const {openEngines} = await import('../model/engines/index.js')
    const engines = await openEngines(choice, needs)
    this.logToStderr(describeBackend(engines.report))
    return engines
  }
}

/** The exit code of an error (EXIT): flags and input 2, divergence 3, anything unexpected 70. */
export function exitCodeFor(err: any): number {
  if (err?.oclif?.exit !== undefined) return err.oclif.exit // oclif's own parse errors: 2
  if (err instanceof InputError) return EXIT.badInput
  if (err instanceof NonFiniteError) return EXIT.diverged
  return EXIT.internal
}

/** Error text as one line: oclif's flag errors span several lines and end with a help hint. */
export function oneLine(err: any): string {
  const lines = String(err?.message ?? err)
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('See more help'))
  return lines.map((l, i) => (i === 0 && lines.length > 1 && /^Parsing --\S+$/.test(l) ? l + ':' : l)).join(' ')
}

// Kernel pseudo-filesystems: writing a run there fails in strange ways (a recursive mkdir under /proc spins forever).
const PSEUDO_FS: Record<number, string> = {
  0x9f_a0: 'proc',
  0x62_65_65_72: 'sysfs',
  0x27_e0_eb: 'cgroup',
  0x63_67_72_70: 'cgroup2',
  0x64_62_67_20: 'debugfs',
  0x74_72_61_63: 'tracefs',
  0x73_63_66_73: 'securityfs',
  0x61_65_67_6c: 'pstore',
  0xca_fe_4a_11: 'bpf',
  0x1c_d1: 'devpts',
}

/** Fails (exit 2) unless `dir` is a directory we can write, or could be created inside one: checked before any work. */
export function assertWritableDir(dir: string, flag: string): void {
  let p = resolve(dir)
  while (!existsSync(p) && dirname(p) !== p) p = dirname(p)
  const real = realpathSync(p)
  let fsType: string | undefined = /^\/proc(\/|$)/.test(real) ? 'proc' : /^\/sys(\/|$)/.test(real) ? 'sysfs' : undefined
  try {
    fsType ??= PSEUDO_FS[statfsSync(real).type]
  } catch {
    /* statfs unsupported: the path test above still holds */
  }

  if (fsType)
    throw new UsageError(`${flag} ${dir}: ${real} is on the kernel's ${fsType} filesystem, not a place for files`)
  if (!statSync(p).isDirectory()) throw new UsageError(`${flag} ${dir}: ${p} is not a directory`)
  try {
    accessSync(p, constants.W_OK)
  } catch {
    throw new UsageError(`${flag} ${dir}: ${p} is not writable`)
  }
}

/** Fails (exit 2) unless `file` can be written: not a directory, in an existing, writable directory. */
export function assertWritableFile(file: string, flag: string, extensions?: string[]): void {
  if ((existsSync(file) && statSync(file).isDirectory()) || /[/\\]$/.test(file))
    throw new UsageError(`${flag} ${file} is a directory`)
  if (extensions && !extensions.includes(extname(file).toLowerCase())) {
    throw new UsageError(
      `${flag} ${file}: writes ${extensions.join(' or ')} only (got "${extname(file) || 'no extension'}")`,
    )
  }

  const dir = dirname(resolve(file))
  if (!existsSync(dir)) throw new UsageError(`${flag} ${file}: directory ${dirname(file)} does not exist`)
  assertWritableDir(dir, flag)
}

/**
 * The command as the user ran it, so that printed commands work when pasted: the bin name when it runs installed or
 * linked (`mhc`), else the script's path from here (`./bin/run.js`).
 */
export function invocation(bin: string): string {
  const script = process.argv[1] ?? bin
  if (basename(script) === bin) return bin
  const rel = relative(process.cwd(), script)
  if (rel.startsWith('..') || isAbsolute(rel)) return shellQuote(script)
  return shellQuote(rel.startsWith('.') ? rel : `./${rel}`)
}

/** A word a POSIX shell reads back as it is. */
export const shellQuote = (w: string) => (/^[\w./:@%+=-]+$/.test(w) ? w : `'${w.replaceAll("'", `'\\''`)}'`)

/** The nearest name, when it is near enough to be a typo (at most a third of its letters differ, or two). */
export function didYouMean(word: string, names: string[]): string | undefined {
  if (names.length === 0) return undefined
  const near = closest(word.toLowerCase(), names)
  return distance(word.toLowerCase(), near) <= Math.max(2, Math.floor(word.length / 3)) ? near : undefined
}

/** oclif's "Nonexistent flag: --stpes" with the flag meant: "(did you mean --steps?)". */
export function suggestFlag(message: string, flags: string[]): string {
  const m = /^Nonexistent flags?: (.+)$/.exec(message)
  if (!m) return message
  const hints = m[1].split(/,\s*/).flatMap((given) => {
    const near = didYouMean(given.replace(/^-+/, '').replace(/=.*$/, ''), flags)
    return near ? [`--${near}`] : []
  })
  return hints.length > 0 ? `${message} (did you mean ${hints.join(', ')}?)` : message
}

/** For `this.parse(...).catch(flagError)`: every flag problem is bad input (exit 2), in one line. */
export function flagError(err: any): never {
  throw new UsageError(oneLine(err))
}

const gib = (b: number) => `${(b / 2 ** 30).toFixed(b < 2 ** 30 ? 2 : 1)} GiB`

/**
 * Refuses (exit 2), before anything is allocated, a training run whose estimated memory exceeds the backend's. On
 * the GPU backends (webgpu, tfjs-webgpu) the memory is the device's, which WebGPU does not report and the tfjs
 * estimate does not describe: there the device's own allocation failure is the refusal (the webgpu engine turns it
 * into the same exit 2 before the first step).
 */
export function assertFits(shape: TrainingShape, backend: BackendName): TrainingEstimate | undefined {
  if (backend === 'webgpu' || backend === 'tfjs-webgpu') return undefined
  const e = trainingMemoryEstimate(shape)
  const budget = memoryBudget(backend)
  // The estimate lands within 5% of tfjs's own peak at the presets and within 14% over all 27 fitted shapes
  // (bench/results/memory-estimate-tfjs.json); the allocator needs room beyond that, so only 90% of the budget is offered.
  const usable = 0.9 * budget.bytes
  if (e.bytes > usable) {
    const maxBatch = Math.floor((usable - e.state) / e.perSequence)
    throw new UsageError(
      `this model does not fit: training needs about ${gib(e.bytes)} (${gib(e.state)} for ${(shape.params / 1e6).toFixed(1)}M parameters with ` +
        `gradients and AdamW moments, ${gib(e.activations)} of activations for ${shape.batch}×${shape.seqLen} tokens), but ${budget.what}; ` +
        (maxBatch >= 1 ? `--batch ${maxBatch} would fit, or ` : '') +
        'use fewer --layers, a smaller --d-model, or --recompute-block',
    )
  }

  return e
}
