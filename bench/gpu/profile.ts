// The WebGPU trainer alone, for kernel work: ms/step and tokens/s of a preset-like model after warm-up, and with
// --profile the GPU time per kernel from timestamp queries (bench/gpu/bench.ts is the comparison benchmark).
//
//   node .bundle/profile.mjs --preset small --arch all --steps 50 --profile
//   options: --preset tiny|small|deep|medium  --arch baseline|hc|mhc|all  --steps N (50)  --warmup N (5)
//            --batch B (the preset's)  --seq-len T  --d-model C  --layers L  --expansion n
//            --profile (per-kernel GPU times)  --backend gpu|software  --robust (keep Dawn's index clamping)  --json
import {Arch, ARCHS, ModelConfig, PRESETS} from '../../src/model/config.js'
import {Op, requestDevice} from '../../src/model/engines/webgpu/gpu.js'
import {WebGpuTrainer} from '../../src/model/engines/webgpu/trainer.js'
import {initParamData} from '../../src/model/params.js'
import {Rng} from '../../src/model/rng.js'

function args(argv: string[]): Record<string, string | true> {
  const out: Record<string, string | true> = {}
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`)
    const next = argv[i + 1]
    if (next === undefined || next.startsWith('--')) out[a.slice(2)] = true
    else out[a.slice(2)] = argv[++i]
  }

  return out
}

/**
 * GPU time per op name (µs per step), each op in its own timed compute pass; without timestamp queries, the wall time
 * of submitting each op alone and waiting for it (includes the submit and wait overhead).
 */
async function profile(device: GPUDevice, ops: Op[]): Promise<Map<string, {us: number; count: number}>> {
  if (!device.features.has('timestamp-query')) {
    const by = new Map<string, {us: number; count: number}>()
    for (const o of ops) {
      const t = performance.now()
      const enc = device.createCommandEncoder()
      const pass = enc.beginComputePass()
      pass.setPipeline(o.pipeline)
      pass.setBindGroup(0, o.bindGroup)
      pass.dispatchWorkgroups(o.grid[0], o.grid[1], o.grid[2])
      pass.end()
      device.queue.submit([enc.finish()])
      await device.queue.onSubmittedWorkDone()
      const e = by.get(o.name) ?? {us: 0, count: 0}
      e.us += (performance.now() - t) * 1000
      e.count++
      by.set(o.name, e)
    }

    return by
  }

  const qs = device.createQuerySet({type: 'timestamp', count: 2 * ops.length})
  const resolve = device.createBuffer({
    size: 16 * ops.length,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  })
  const read = device.createBuffer({size: 16 * ops.length, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST})
  const enc = device.createCommandEncoder()
  for (const [i, o] of ops.entries()) {
    const pass = enc.beginComputePass({
      timestampWrites: {querySet: qs, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1},
    })
    pass.setPipeline(o.pipeline)
    pass.setBindGroup(0, o.bindGroup)
    pass.dispatchWorkgroups(o.grid[0], o.grid[1], o.grid[2])
    pass.end()
  }

  enc.resolveQuerySet(qs, 0, 2 * ops.length, resolve, 0)
  enc.copyBufferToBuffer(resolve, 0, read, 0, 16 * ops.length)
  device.queue.submit([enc.finish()])
  await read.mapAsync(GPUMapMode.READ)
  const t = new BigUint64Array(read.getMappedRange().slice(0))
  read.unmap()
  const by = new Map<string, {us: number; count: number}>()
  for (const [i, o] of ops.entries()) {
    const us = Number(t[2 * i + 1] - t[2 * i]) / 1000
    const e = by.get(o.name) ?? {us: 0, count: 0}
    e.us += us
    e.count++
    by.set(o.name, e)
  }

  qs.destroy()
  resolve.destroy()
  read.destroy()
  return by
}

async function main(): Promise<void> {
  const a = args(process.argv.slice(2))
  const preset = String(a.preset ?? 'small')
  if (!PRESETS[preset]) throw new Error(`unknown preset ${preset} (${Object.keys(PRESETS).join(', ')})`)
  const archs: readonly Arch[] = a.arch === undefined || a.arch === 'all' ? ARCHS : [a.arch as Arch]
  const steps = Number(a.steps ?? 50)
  const warmup = Number(a.warmup ?? 5)
  const p = PRESETS[preset]
  const batch = Number(a.batch ?? p.train.batch)
  const over: Partial<ModelConfig> = {}
  if (a['seq-len']) over.seqLen = Number(a['seq-len'])
  if (a['d-model']) over.dModel = Number(a['d-model'])
  if (a.layers) over.layers = Number(a.layers)
  if (a.expansion) over.expansion = Number(a.expansion)
  const backend = a.backend === 'software' ? 'software' : 'gpu'
  const device = await requestDevice({
    backend,
    robustness: a.robust === true,
    features: a.profile ? ['timestamp-query'] : [],
    disableToggles: a.profile ? ['timestamp_quantization'] : [],
  })
  const info = (device as GPUDevice & {adapterInfo?: GPUAdapterInfo}).adapterInfo
  if (!a.json && info)
    console.log(
      `adapter: ${[info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' / ')}`,
    )
  const results = []
  for (const arch of archs) {
    const cfg: ModelConfig = {arch, ...p.model, ...over}
    const N = batch * cfg.seqLen
    const t0 = performance.now()
    const eng = await WebGpuTrainer.create(device, cfg, batch, initParamData(cfg, 1))
    const createMs = performance.now() - t0
    const rng = new Rng(2)
    const tokens = () => Int32Array.from({length: N}, () => rng.int(cfg.vocabSize))
    const batches = Array.from({length: 4}, () => ({x: tokens(), y: tokens()}))
    const hp = (t: number) => ({lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 1, t})
    const t1 = performance.now()
    let last = await eng.trainStep(batches[0].x, batches[0].y, hp(1))
    const firstMs = performance.now() - t1
    for (let i = 1; i < warmup; i++) last = await eng.trainStep(batches[i % 4].x, batches[i % 4].y, hp(i + 1))
    const times: number[] = []
    for (let i = 0; i < steps; i++) {
      const s = performance.now()
      last = await eng.trainStep(batches[i % 4].x, batches[i % 4].y, hp(warmup + i + 1))
      times.push(performance.now() - s)
    }

    const mean = times.reduce((x, y) => x + y, 0) / times.length
    const median = times.slice().sort((x, y) => x - y)[Math.floor(times.length / 2)]
    const r = {
      preset,
      arch,
      batch,
      seqLen: cfg.seqLen,
      dModel: cfg.dModel,
      layers: cfg.layers,
      expansion: arch === 'baseline' ? 1 : cfg.expansion,
      dispatches: eng.dispatches.train,
      pipelines: eng.gpu.pipelineCount,
      createMs: Number(createMs.toFixed(1)),
      firstStepMs: Number(firstMs.toFixed(1)),
      msPerStep: Number(mean.toFixed(3)),
      medianMs: Number(median.toFixed(3)),
      tokensPerSec: Math.round(N / (mean / 1000)),
      loss: last.loss,
    }
    results.push(r)
    if (!a.json) {
      console.log(
        `${preset} ${arch.padEnd(8)} B=${batch} T=${cfg.seqLen} C=${cfg.dModel} L=${cfg.layers}${arch === 'baseline' ? '' : ` n=${cfg.expansion}`}: ` +
          `${mean.toFixed(2)} ms/step (median ${median.toFixed(2)}), ${r.tokensPerSec.toLocaleString('en-US')} tokens/s, ${r.dispatches} dispatches, ` +
          `first step ${firstMs.toFixed(0)} ms, create ${createMs.toFixed(0)} ms, loss ${last.loss.toFixed(4)}`,
      )
    }

    if (a.profile) {
      const runs = 5
      const acc = new Map<string, {us: number; count: number}>()
      for (let i = 0; i < runs; i++)
        for (const [k, v] of await profile(device, eng.trainOps)) {
          const e = acc.get(k) ?? {us: 0, count: 0}
          acc.set(k, {us: e.us + v.us / runs, count: v.count})
        }

      const total = [...acc.values()].reduce((x, v) => x + v.us, 0)
      console.log(
        device.features.has('timestamp-query')
          ? `  GPU time, each dispatch in its own pass: ${(total / 1000).toFixed(3)} ms per step`
          : `  no timestamp queries: wall time of each dispatch submitted alone: ${(total / 1000).toFixed(3)} ms per step`,
      )
      for (const [k, v] of [...acc].sort((x, y) => y[1].us - x[1].us)) {
        console.log(
          `  ${k.padEnd(24)} ${v.count.toString().padStart(4)} × ${(v.us / v.count).toFixed(1).padStart(8)} µs = ${(v.us / 1000).toFixed(3).padStart(8)} ms (${((100 * v.us) / total).toFixed(1)}%)`,
        )
      }
    }

    eng.dispose()
  }

  if (a.json) console.log(JSON.stringify(results, null, 2))
  device.destroy()
}

await main()
