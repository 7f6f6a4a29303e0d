// The oclif house style (eslint-config-oclif), with prettier (@oclif/prettier-config) owning the formatting. The rules
// turned off below clash with how this project is written on purpose; each says why.
import {includeIgnoreFile} from '@eslint/compat'
import oclif from 'eslint-config-oclif'
import prettier from 'eslint-config-prettier'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

const gitignore = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '.gitignore')

export default [
  includeIgnoreFile(gitignore),
  {ignores: ['fixtures/**', 'bench/results/**', 'bench/reference/**']},
  ...oclif,
  prettier,
  {
    rules: {
      // Order carries meaning here: configs and JSON results list fields in the paper's (and the reader's) order,
      // unions and switch cases in the order the text explains them. Imports stay sorted.
      'perfectionist/sort-array-includes': 'off',
      'perfectionist/sort-classes': 'off',
      'perfectionist/sort-interfaces': 'off',
      'perfectionist/sort-maps': 'off',
      'perfectionist/sort-object-types': 'off',
      'perfectionist/sort-objects': 'off',
      'perfectionist/sort-switch-case': 'off',
      'perfectionist/sort-union-types': 'off',
      // Tests run on node:test, not mocha.
      ...Object.fromEntries(
        Object.keys(oclif.find((c) => c.plugins?.mocha)?.plugins.mocha.rules ?? {}).map((r) => [`mocha/${r}`, 'off']),
      ),
      // engines pins Node 20 (checked on 20.20), where fs.cpSync, node:test's describe and friends work as used.
      'n/no-unsupported-features/node-builtins': 'off',
      // l >> 1 (the block of sublayer l) and x >>> 0 (a uint32 RNG state) are the intended operations.
      'no-bitwise': 'off',
      // Training steps and device read-backs are sequential by design.
      'no-await-in-loop': 'off',
      // JSON read from disk and oclif's parsed flags are `any` until validated, which the code does at once.
      '@typescript-eslint/no-explicit-any': 'off',
      // Numeric kernels and the model's maths read best as the loops and closures they are.
      complexity: 'off',
      'max-depth': 'off',
      'max-params': 'off',
      'unicorn/consistent-function-scoping': 'off',
      'unicorn/no-array-callback-reference': 'off',
      'unicorn/no-array-reduce': 'off',
      'unicorn/no-magic-array-flat-depth': 'off',
      // Its fix turns typedArray.slice() into [...typedArray], a plain array: wrong for the tensors this code handles.
      'unicorn/prefer-spread': 'off',
      // An explicit `undefined` (no problem, no value) says what it means.
      'unicorn/no-useless-undefined': 'off',
      // Its fix rewrites `v < 0n ? 0n : v` as Math.max(v, 0n), which throws on a BigInt.
      'unicorn/prefer-math-min-max': 'off',
      // TypeScript checks names (the WebGPU globals come from @webgpu/types), as typescript-eslint advises.
      'no-undef': 'off',
      // Indexed loops over typed arrays are V8's fast path (and its fix breaks on ArrayLike).
      'unicorn/no-for-loop': 'off',
      // A step is a list of kernels pushed in the order they run.
      'unicorn/no-array-push-push': 'off',
      // new Array<number>(R).fill(0) says what it is.
      'unicorn/no-new-array': 'off',
      // F is the paper's name for a sublayer; tok_s is a cli-progress token; data_offsets is the safetensors format.
      camelcase: ['error', {allow: ['^tok_s$', '^data_offsets$']}],
      'new-cap': ['error', {capIsNew: false}],
    },
  },
]
