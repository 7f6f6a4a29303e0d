// Reference outputs of OUR implementation (tfjs, wasm backend) for the PyTorch / numpy parity checks.
// For each fixture checkpoint (fixtures/{baseline,hc,mhc}/ckpt-000150), OUTDIR/<fixture>.safetensors holds:
//   forward, on `--windows` fixed validation windows of the corpus the checkpoint was trained on:
//     tokens, targets (I32 [B, T]), logits (F32 [B·T, V]), loss (F32 []),
//     maps.<l>.h_pre [N, n], maps.<l>.h_post [N, n], maps.<l>.h_res [N, n, n] for every connection l (hc/mhc)
//   one training step resumed from the checkpoint (its AdamW moments, step 150 → 151, its data RNG), run by our
//   trainStep with gradient clipping at half the batch's gradient norm, so clipping is exercised:
//     step.tokens, step.targets (I32, the batch trainStep draws), grad.<param> (gradients before clipping),
//     after.<param> (weights after the step); lr, clip, gradient norm and loss in the metadata (full precision);
//   gain.tokens (I32 [S, T]): the windows `mhc analyze-gain` computes the maps on by default (--tokens 4096), so that
//     python/record_maps.py can record the same tokens in PyTorch.
// and OUTDIR/exports/<fixture>/: the checkpoint as `mhc export` writes it (what python/mhc_ref.py loads).
// Usage (from the repository root): node --import tsx bench/reference/expected.ts OUTDIR [--windows 4]
import {mkdirSync, rmSync} from 'node:fs'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {parseArgs} from 'node:util'

import {selectBackend, tf} from '../../src/model/engines/tfjs/backend.js'
import {TfjsEngine} from '../../src/model/engines/tfjs/engine.js'
import {crossEntropy, forward, gradients} from '../../src/model/engines/tfjs/network.js'
import {DEFAULT_GAIN_TOKENS} from '../../src/cli/flags.js'
import {stateOf} from '../../src/model/io/checkpoint.js'
import {checkpointCorpus, evalWindows, sampleBatch, windowsToBatch} from '../../src/model/io/data.js'
import {exportCheckpoint} from '../../src/model/io/pytorch.js'
import {NamedTensor, writeSafetensorsFile} from '../../src/model/io/safetensors.js'
import {Rng} from '../../src/model/rng.js'
import {lrAt, restore, takeStep} from '../../src/model/train/loop.js'
import {readCheckpoint} from '../../src/model/train/run-dir.js'
import {mapWindows} from '../../src/profile/analysis/maps.js'

const FIXTURES = ['baseline', 'hc', 'mhc']
const ROOT = fileURLToPath(new URL('../..', import.meta.url))

const {positionals, values: a} = parseArgs({allowPositionals: true, options: {windows: {default: '4', type: 'string'}}})
const outDir = positionals[0]
if (!outDir) throw new Error('usage: node --import tsx bench/reference/expected.ts OUTDIR [--windows 4]')
mkdirSync(outDir, {recursive: true})
const report = await selectBackend('wasm')

const f32 = async (t: tf.Tensor): Promise<NamedTensor> => ({
  data: Float32Array.from((await t.data()) as Float32Array),
  dtype: 'F32',
  shape: t.shape,
})
const i32 = (x: Int32Array, shape: number[]): NamedTensor => ({data: Int32Array.from(x), dtype: 'I32', shape})

for (const name of FIXTURES) {
  const dir = join(ROOT, 'fixtures', name, 'ckpt-000150')
  const data = readCheckpoint(dir, {optimizer: true})
  const cfg = data.manifest.model
  const corpus = checkpointCorpus(data.manifest.data, undefined, cfg.seqLen + 1, false)
  const tensors: Record<string, NamedTensor> = {}
  const engine = new TfjsEngine({model: cfg})
  const tc = data.manifest.train
  const pos = restore(engine, tc, stateOf(data))
  const params = engine.variables.params as Record<string, tf.Variable>

  // Forward pass with the maps.
  const offsets = evalWindows(corpus.val, Number(a.windows), cfg.seqLen)
  const w = windowsToBatch(corpus.val, offsets, cfg.seqLen)
  const x = tf.tensor2d(w.x, [w.size, cfg.seqLen], 'int32')
  const y = tf.tensor2d(w.y, [w.size, cfg.seqLen], 'int32')
  const {logits, maps} = forward(params, cfg, x, {captureMaps: true})
  const loss = crossEntropy(logits, y, cfg.vocabSize)
  Object.assign(tensors, {
    logits: await f32(logits),
    loss: await f32(loss),
    targets: i32(w.y, [w.size, cfg.seqLen]),
    tokens: i32(w.x, [w.size, cfg.seqLen]),
  })
  for (const [l, m] of maps.entries()) {
    tensors[`maps.${l}.h_pre`] = await f32(m.hPre)
    tensors[`maps.${l}.h_post`] = await f32(m.hPost)
    tensors[`maps.${l}.h_res`] = await f32(m.hRes)
  }

  const gain = windowsToBatch(corpus.val, mapWindows(corpus.val, DEFAULT_GAIN_TOKENS, cfg.seqLen), cfg.seqLen)
  tensors['gain.tokens'] = i32(gain.x, [gain.size, cfg.seqLen])
  const exportDir = join(outDir, 'exports', name)
  rmSync(exportDir, {force: true, recursive: true})
  exportCheckpoint(readCheckpoint(dir), exportDir)
  const lossValue = (await loss.data())[0]
  tf.dispose([x, y, logits, loss, ...maps.flatMap((m) => [m.hPre, m.hPost, m.hRes])])

  // One training step from the checkpoint's state. The batch is the one takeStep draws: the same RNG state.
  const batch = sampleBatch(corpus.train, tc.batch, cfg.seqLen, Object.assign(new Rng(0), {state: pos.dataRng.state}))
  const bx = tf.tensor2d(batch.x, [batch.size, cfg.seqLen], 'int32')
  const by = tf.tensor2d(batch.y, [batch.size, cfg.seqLen], 'int32')
  const g = gradients(params, cfg, bx, by)
  const sq = Object.values(g.grads).reduce(
    (acc, t) => acc + (t.dataSync() as Float32Array).reduce((s, v) => s + v * v, 0),
    0,
  )
  const gradNorm = Math.sqrt(sq)
  const clip = gradNorm / 2
  tensors['step.tokens'] = i32(batch.x, [batch.size, cfg.seqLen])
  tensors['step.targets'] = i32(batch.y, [batch.size, cfg.seqLen])
  for (const [k, t] of Object.entries(g.grads)) tensors[`grad.${k}`] = await f32(t)
  const gradLoss = (await g.loss.data())[0]
  tf.dispose([bx, by, g.loss, ...Object.values(g.grads)])
  const stepTc = {...tc, gradClip: clip}
  const lr = lrAt(pos.step, stepTc)
  const r = await takeStep(engine, pos, stepTc, corpus.train)
  if (r.loss !== gradLoss)
    throw new Error(`${name}: the step's batch is not the one drawn here (loss ${r.loss} vs ${gradLoss})`)
  if (!r.clipped) throw new Error(`${name}: the step was not clipped`)
  const after = await engine.readState()
  for (const [k, v] of Object.entries(after.params))
    tensors[`after.${k}`] = {data: v, dtype: 'F32', shape: params[k].shape}

  const file = join(outDir, `${name}.safetensors`)
  writeSafetensorsFile(file, tensors, {
    backend: report.backend,
    checkpoint: `fixtures/${name}/ckpt-000150`,
    fixture: name,
    loss: String(lossValue),
    model: JSON.stringify(cfg),
    offsets: JSON.stringify(offsets),
    split: 'val',
    step: JSON.stringify({
      adamEps: tc.adamEps,
      beta1: tc.beta1,
      beta2: tc.beta2,
      from: data.manifest.step,
      gradClip: clip,
      gradNorm: r.gradNorm,
      gradNormHost: gradNorm,
      loss: r.loss,
      lr,
      weightDecay: tc.weightDecay,
    }),
    tfjs: tf.version.tfjs,
  })
  console.log(
    `${file}: ${offsets.length} windows of ${cfg.seqLen} bytes (val offsets ${offsets.join(', ')}), loss ${lossValue.toFixed(6)}, ` +
      `${maps.length} layers of maps; step ${r.step}: loss ${r.loss.toFixed(6)}, grad norm ${r.gradNorm.toFixed(6)}, clip ${clip.toFixed(6)}, lr ${lr}`,
  )
  engine.dispose()
}
