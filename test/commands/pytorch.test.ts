// mhc export / mhc import as a user runs them: the round trip of a fixture through PyTorch's layouts gives the same
// weights and the same analyze-gain --json; bf16 input; bad input leaves nothing written and names what is wrong.
import assert from 'node:assert/strict'
import {existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, before, describe, it} from 'node:test'

import {readCheckpointDir} from '../../src/model/io/checkpoint.js'
import {decodeSafetensors, encodeSafetensors, type NamedTensor} from '../../src/model/io/safetensors.js'
import {repo, runCli, showRun} from '../helpers.js'

let tmp = ''
before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'mhc-export-'))
})
after(() => rmSync(tmp, {recursive: true, force: true}))

const errorLines = (stderr: string) => stderr.split('\n').filter((l) => l.startsWith('Error:'))

describe('export → import round trip', {concurrency: 2}, () => {
  for (const fixture of ['hc', 'mhc']) {
    it(`${fixture}: identical weights and identical analyze-gain --json`, async () => {
      const exported = join(tmp, `${fixture}-torch`)
      const imported = join(tmp, `${fixture}-back`)
      let r = await runCli(['export', join(repo, 'fixtures', fixture), '--out', exported, '--json'])
      assert.equal(r.status, 0, showRun(r))
      assert.equal(JSON.parse(r.stdout).step, 150)
      r = await runCli(['import', exported, '--out', imported, '--json'])
      assert.equal(r.status, 0, showRun(r))
      assert.equal(r.stderr, '', 'an export of ours says everything: nothing is filled in')
      const original = readCheckpointDir(join(repo, 'fixtures', fixture, 'ckpt-000150'))
      const back = readCheckpointDir(imported)
      for (const [name, values] of Object.entries(original.params)) assert.deepEqual(back.params[name], values, name)
      for (const k of ['model', 'train', 'step', 'data', 'rng', 'metrics'] as const)
        assert.deepEqual(back.manifest[k], original.manifest[k], k)

      const gains = await Promise.all(
        [join(repo, 'fixtures', fixture), imported].map((p) =>
          runCli(['analyze-gain', p, '--json', '--tokens', '512', '--backend', 'wasm']),
        ),
      )
      for (const g of gains) assert.equal(g.status, 0, showRun(g))
      const [a, b] = gains.map((g) => JSON.parse(g.stdout))
      assert.notEqual(a.runs[0].checkpoint, b.runs[0].checkpoint)
      for (const j of [a, b]) delete j.runs[0].checkpoint
      assert.deepEqual(b, a)
    })
  }
})

describe('import of other precisions and names', () => {
  it('bf16 tensors import widened exactly, and the model analyses', async () => {
    const exported = join(tmp, 'mhc-bf16')
    let r = await runCli(['export', join(repo, 'fixtures', 'mhc'), '--out', exported])
    assert.equal(r.status, 0, showRun(r))
    // bf16 by truncation: the upper 16 bits of each f32, so the expected values are the f32 values with the low 16
    // bits cleared, computed here independently of the decoder.
    const file = join(exported, 'model.safetensors')
    const {tensors} = decodeSafetensors(readFileSync(file))
    const bf16: Record<string, NamedTensor> = {}
    const expected: Record<string, Float32Array> = {}
    for (const [name, t] of Object.entries(tensors)) {
      const bits = new Uint32Array((t.data as Float32Array).slice().buffer)
      const raw = new Uint8Array(2 * bits.length)
      for (let i = 0; i < bits.length; i++) {
        raw[2 * i] = (bits[i] >>> 16) & 0xff
        raw[2 * i + 1] = bits[i] >>> 24
        bits[i] &= 0xff_ff_00_00
      }

      bf16[name] = {dtype: 'BF16', shape: t.shape, data: raw}
      expected[name] = new Float32Array(bits.buffer)
    }

    writeFileSync(file, encodeSafetensors(bf16))
    const out = join(tmp, 'mhc-bf16-ckpt')
    r = await runCli(['import', exported, '--out', out])
    assert.equal(r.status, 0, showRun(r))
    const back = readCheckpointDir(out).params
    // Linear matrices were transposed on export; compare a non-linear tensor directly and a linear one transposed.
    assert.deepEqual(back['conn.3.b_res'], expected['conn.3.b_res'])
    const [out0, in0] = tensors['conn.0.phi'].shape
    for (let o = 0; o < out0; o += 7)
      for (let i = 0; i < in0; i += 5)
        assert.equal(back['conn.0.phi'][i * out0 + o], expected['conn.0.phi'][o * in0 + i], `phi[${o}, ${i}]`)
    r = await runCli(['analyze-gain', out, '--tokens', '256', '--json', '--backend', 'wasm'])
    assert.equal(r.status, 0, showRun(r))
  })

  it('a key-map mismatch is one error naming every problem, and nothing is written', async () => {
    const exported = join(tmp, 'hc-named')
    let r = await runCli(['export', join(repo, 'fixtures', 'hc'), '--out', exported])
    assert.equal(r.status, 0, showRun(r))
    const map = join(tmp, 'map.json')
    writeFileSync(map, JSON.stringify({'conn.2.theta': 'hc.2.proj', 'blocks.9.mlp.fc.weight': 'x'}))
    const out = join(tmp, 'never', 'ckpt')
    r = await runCli(['import', exported, '--out', out, '--key-map', map])
    assert.equal(r.status, 2, showRun(r))
    const lines = errorLines(r.stderr)
    assert.equal(lines.length, 1, r.stderr)
    assert.match(lines[0], /3 problems/)
    assert.match(lines[0], /key map names blocks\.9\.mlp\.fc\.weight, which this hc model does not have/)
    assert.match(lines[0], /missing hc\.2\.proj \(our conn\.2\.theta\)/)
    assert.match(lines[0], /unexpected conn\.2\.theta$/) // the file's own name, which the map moved away from
    assert.ok(!existsSync(join(tmp, 'never')), 'nothing written')
  })

  it('export refuses a non-empty --out and leaves it as it was', async () => {
    const dir = join(tmp, 'occupied')
    mkdirSync(dir)
    writeFileSync(join(dir, 'notes.txt'), 'keep me')
    const r = await runCli(['export', join(repo, 'fixtures', 'baseline'), '--out', dir])
    assert.equal(r.status, 2, showRun(r))
    assert.match(errorLines(r.stderr)[0], /exists and is not empty/)
    assert.deepEqual(readdirSync(dir), ['notes.txt'])
    assert.equal(readFileSync(join(dir, 'notes.txt'), 'utf8'), 'keep me')
  })

  it('a foreign config.json (model only) imports, saying what it filled in', async () => {
    const exported = join(tmp, 'baseline-foreign')
    let r = await runCli(['export', join(repo, 'fixtures', 'baseline'), '--out', exported])
    assert.equal(r.status, 0, showRun(r))
    const {model} = JSON.parse(readFileSync(join(exported, 'config.json'), 'utf8'))
    const config = join(tmp, 'their-config.json')
    writeFileSync(config, JSON.stringify({model}))
    rmSync(join(exported, 'config.json'))
    const out = join(tmp, 'baseline-foreign-ckpt')
    r = await runCli(['import', exported, '--config', config, '--out', out])
    assert.equal(r.status, 0, showRun(r))
    assert.match(r.stderr, /does not record the step \(0 used\), the training config \(the default preset's used\)/)
    const back = readCheckpointDir(out)
    assert.equal(back.manifest.step, 0)
    assert.equal(back.manifest.data.source, 'moby-dick')
  })
})
