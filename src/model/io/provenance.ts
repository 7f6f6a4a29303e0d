// Which mhc wrote a file: the package version and, when it runs from a git checkout, the commit (with "+dirty" when
// tracked files differ from it), so a checkpoint can be traced back to the code that trained it.
import {execFileSync} from 'node:child_process'
import {existsSync, readFileSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

let cached: {version: string; commit?: string} | undefined

/** The package root: the nearest directory above this file with mhc's package.json (also from a bundle in the tree). */
function packageRoot(): string | undefined {
  for (let dir = dirname(fileURLToPath(import.meta.url)); dir !== dirname(dir); dir = dirname(dir)) {
    const p = join(dir, 'package.json')
    if (existsSync(p)) {
      try {
        if (JSON.parse(readFileSync(p, 'utf8')).name === 'mhc') return dir
      } catch {
        /* not ours: keep looking */
      }
    }
  }

  return undefined
}

function git(root: string, args: string[]): string | undefined {
  try {
    return execFileSync('git', ['-C', root, ...args], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
      timeout: 5000,
    }).trim()
  } catch {
    return undefined // no git, or not a repository
  }
}

export function toolVersion(): {version: string; commit?: string} {
  if (cached) return cached
  const root = packageRoot()
  const version = root ? String(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version) : 'unknown'
  // Only the package's own repository: an install inside someone else's checkout must not report their commit.
  const head = root && existsSync(join(root, '.git')) ? git(root, ['rev-parse', 'HEAD']) : undefined
  const dirty = head && git(root!, ['status', '--porcelain', '--untracked-files=no'])
  cached = {version, ...(head ? {commit: head + (dirty ? '+dirty' : '')} : {})}
  return cached
}
