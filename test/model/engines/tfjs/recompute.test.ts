// Activation recomputation (paper §4.3.2): same gradients, less memory.
import assert from 'node:assert/strict'
import {before, test} from 'node:test'

import {Arch, ModelConfig, modelConfig} from '../../../../src/model/config.js'
import {selectBackend, tf} from '../../../../src/model/engines/tfjs/backend.js'
import {initParams, loss} from '../../../../src/model/engines/tfjs/network.js'
import {blockParamNames, paramSpecs} from '../../../../src/model/params.js'
import {Rng} from '../../../../src/model/rng.js'

type Params = Record<string, tf.Variable>

before(async () => {
  await selectBackend('wasm')
})

const cfg = (arch: Arch, o: Partial<ModelConfig> = {}): ModelConfig =>
  modelConfig(arch, {seqLen: 16, layers: 3, dModel: 16, heads: 2, mlpRatio: 2, ...o})
const tokens = (rng: Rng, b: number, t: number) =>
  tf.tensor2d(
    Int32Array.from({length: b * t}, () => rng.int(256)),
    [b, t],
    'int32',
  )

function grads(p: Params, c: ModelConfig, x: tf.Tensor2D, y: tf.Tensor2D, Lr: number): Record<string, Float32Array> {
  const names = Object.keys(p)
  return tf.tidy(() => {
    const {grads: g} = tf.variableGrads(
      () => loss(p, c, x, y, Lr),
      names.map((k) => p[k]),
    )
    return Object.fromEntries(names.map((k) => [k, g[p[k].name].dataSync() as Float32Array]))
  }) as unknown as Record<string, Float32Array>
}

test('blockParamNames: the weights of exactly the sublayers in the block', () => {
  const c = cfg('mhc')
  assert.deepEqual(
    blockParamNames(c, 1, 3).filter((n) => n.startsWith('blocks.')),
    [
      'blocks.0.mlp.norm.weight',
      'blocks.0.mlp.fc.weight',
      'blocks.0.mlp.proj.weight',
      'blocks.1.attn.norm.weight',
      'blocks.1.attn.qkv.weight',
      'blocks.1.attn.proj.weight',
    ],
  )
  assert.deepEqual(
    blockParamNames(c, 1, 3)
      .filter((n) => n.startsWith('conn.'))
      .map((n) => n.split('.')[1]),
    [...Array.from({length: 7}, () => '1'), ...Array.from({length: 7}, () => '2')],
  )
  // every sublayer parameter belongs to exactly one block of any partition
  const all = [0, 2, 4].flatMap((s) => blockParamNames(c, s, s + 2))
  assert.deepEqual(
    [...all].sort(),
    paramSpecs(c)
      .map((s) => s.name)
      .filter((n) => /^(blocks|conn)\./.test(n))
      .sort(),
  )
})

for (const arch of ['baseline', 'hc', 'mhc'] as const) {
  test(`${arch}: gradients with recompute blocks of 1, 2, 4 and 6 layers equal those without`, () => {
    const c = cfg(arch)
    const p = initParams(c, 5)
    const rng = new Rng(9)
    const [x, y] = [tokens(rng, 2, c.seqLen), tokens(rng, 2, c.seqLen)]
    const ref = grads(p, c, x, y, 0)
    for (const Lr of [1, 2, 4, 6]) {
      const g = grads(p, c, x, y, Lr)
      for (const [name, r] of Object.entries(ref)) {
        const scale = Math.max(1e-6, ...Array.from(r, Math.abs))
        const diff = r.reduce((m, v, i) => Math.max(m, Math.abs(v - g[name][i])), 0)
        assert.ok(diff <= 1e-5 * scale + 1e-9, `L_r=${Lr} ${name}: max |Δgrad| ${diff} (scale ${scale})`)
      }
    }

    tf.dispose([x, y, ...Object.values(p)])
  })
}

test('recompute lowers the peak memory of a training step where the activations dominate', async () => {
  // 6 blocks = 12 layers, wide tokens axis, small weights: activations dwarf parameters, so keeping only block
  // inputs must cut the peak (the memory model predicts a drop by several times).
  const c = cfg('mhc', {layers: 6, seqLen: 64, dModel: 32})
  const p = initParams(c, 1)
  const rng = new Rng(2)
  const [x, y] = [tokens(rng, 8, c.seqLen), tokens(rng, 8, c.seqLen)]
  const peak = async (Lr: number) => {
    const info = await tf.profile(() => {
      tf.tidy(() => {
        const {value, grads: g} = tf.variableGrads(() => loss(p, c, x, y, Lr), Object.values(p))
        value.dataSync()
        for (const t of Object.values(g)) t.dataSync()
      })
    })
    return info.peakBytes
  }

  const [plain, every3] = [await peak(0), await peak(3)]
  assert.ok(every3 < 0.7 * plain, `peak with L_r = 3: ${every3} bytes, without: ${plain}`)
  tf.dispose([x, y, ...Object.values(p)])
})
