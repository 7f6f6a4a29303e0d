// Collecting maps through an engine, and the analysis of them, against a naive float64 recomputation.
import assert from 'node:assert/strict'
import {join} from 'node:path'
import {it} from 'node:test'
import {fileURLToPath} from 'node:url'

import {openEngines} from '../../../src/model/engines/index.js'
import {loadCorpus} from '../../../src/model/io/data.js'
import {readCheckpoint} from '../../../src/model/train/run-dir.js'
import {analyzeGains} from '../../../src/profile/analysis/gain.js'
import {checkpointMaps} from '../../../src/profile/analysis/maps.js'

const repo = fileURLToPath(new URL('../../..', import.meta.url))

it('composite gains of a real model equal a naive float64 recomputation from its per-token maps', async () => {
  const engines = await openEngines({choice: 'wasm', source: 'flag'})
  const ck = readCheckpoint(join(repo, 'fixtures', 'hc'))
  const corpus = loadCorpus()
  const maps = await checkpointMaps(engines, ck, corpus.val, 128)
  const n = ck.manifest.model.expansion
  const a = analyzeGains(maps.hRes, n)
  const L = maps.hRes.length
  for (const l of [0, 3, L - 1]) {
    let sum = 0
    let worst = 0
    for (let t = 0; t < maps.tokens; t++) {
      // P = H_{L−1} ··· H_l with plain loops: start from H_{L−1}, multiply by H_i on the right
      const at = (i: number) =>
        Array.from({length: n}, (_, r) => Array.from({length: n}, (_, c) => maps.hRes[i][t * n * n + r * n + c]))
      let p = at(L - 1)
      for (let i = L - 2; i >= l; i--) {
        const h = at(i)
        p = p.map((row) => h[0].map((_, c) => row.reduce((s, v, k) => s + v * h[k][c], 0)))
      }

      const fwd = Math.max(...p.map((row) => row.reduce((s, v) => s + Math.abs(v), 0)))
      sum += fwd
      worst = Math.max(worst, fwd)
    }

    assert.ok(
      Math.abs(a.layers[l].composite.forward.mean - sum / maps.tokens) < 1e-9 * Math.max(1, sum / maps.tokens),
      `layer ${l}`,
    )
    assert.ok(Math.abs(a.layers[l].composite.forward.max - worst) < 1e-9 * Math.max(1, worst))
  }
})
