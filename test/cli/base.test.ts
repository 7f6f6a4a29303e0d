// Shared command behaviour: the exit-code table and output-path checks.
import assert from 'node:assert/strict'
import {describe, it} from 'node:test'

import {EXIT, exitCodeFor, UsageError} from '../../src/cli/base.js'
import {InputError, NonFiniteError} from '../../src/model/errors.js'

describe('one exit-code table', () => {
  it('1 is only a failed gate; bad input 2; divergence 3; anything unexpected 70', () => {
    assert.deepEqual(EXIT, {ok: 0, gateFailed: 1, badInput: 2, diverged: 3, internal: 70, sigint: 130, sigterm: 143})
    assert.equal(exitCodeFor(new InputError('x')), 2)
    assert.equal(exitCodeFor(new UsageError('x')), 2)
    assert.equal(exitCodeFor({oclif: {exit: 2}, message: 'Nonexistent flag'}), 2)
    assert.equal(exitCodeFor(new NonFiniteError('nan')), 3)
    assert.equal(exitCodeFor(new TypeError('cannot read properties of undefined')), 70)
    assert.equal(exitCodeFor(new Error('ENOSPC')), 70)
  })
})
