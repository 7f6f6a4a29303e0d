import assert from 'node:assert/strict'
// WebGPU engine kernels against float64 references written here: the tiled matmul (every stored layout, split-K,
// every epilogue and the GELU prologue) and causal attention (forward, dq, dk, dv) at shapes that are not multiples
// of the tiles. The connection, norm, embedding and loss kernels are checked through whole-model gradients
// (gradients.test.ts) against the tfjs implementation.
import {test} from 'node:test'

import {attnBwd, attnFwd} from '../../../../src/model/engines/webgpu/kernels.js'
import {dims} from '../../../../src/model/engines/webgpu/layout.js'
import {chooseSplit, matmulDualOp, matmulOp, MatmulVariant} from '../../../../src/model/engines/webgpu/matmul.js'
import {Rng} from '../../../../src/model/rng.js'
import {device, noDeviceErrors, randn, relErr} from './helpers.js'

const {gpu, skip} = await device()

const sig = (z: number) => 1 / (1 + Math.exp(-z))
const gelu = (x: number) => x * sig(1.702 * x)
const geluGrad = (x: number) => sig(1.702 * x) + 1.702 * x * sig(1.702 * x) * (1 - sig(1.702 * x))

test('matmul: A·B, A·Bᵀ, Aᵀ·B, Aᵀ·Bᵀ at awkward shapes and split-K equal float64', {skip}, async () => {
  const g = gpu!
  const rng = new Rng(1)
  // Scalar loads (some extent not a multiple of 4) and vec4 loads (all multiples of 4, not of the 64×64×16 tile).
  const shapes: [number, number, number][] = [
    [1, 1, 1],
    [5, 7, 3],
    [70, 65, 130],
    [64, 64, 64],
    [1, 200, 17],
    [129, 3, 33],
    [68, 36, 20],
    [132, 8, 100],
  ]
  for (const [M, N, K] of shapes) {
    for (const v of [{}, {ta: true}, {tb: true}, {ta: true, tb: true}] as MatmulVariant[]) {
      for (const split of [1, 3]) {
        const a = randn(rng, M * K)
        const b = randn(rng, K * N)
        const ref = new Float64Array(M * N)
        for (let m = 0; m < M; m++)
          for (let n = 0; n < N; n++) {
            let s = 0
            for (let k = 0; k < K; k++) s += a[v.ta ? k * M + m : m * K + k] * b[v.tb ? n * K + k : k * N + n]
            ref[m * N + n] = s
          }

        const A = g.upload(a)
        const B = g.upload(b)
        const C = g.buffer(M * N * 4 * split)
        g.submit([matmulOp(g, v, {M, N, K, split}, [A, B, C])])
        const c = await g.readF32(C, 0, M * N * split)
        const out = new Float64Array(M * N)
        for (let s = 0; s < split; s++) for (let i = 0; i < M * N; i++) out[i] += c[s * M * N + i]
        const e = relErr(out, ref)
        assert.ok(e < 2e-6, `${M}×${N}×${K} ${JSON.stringify(v)} split ${split}: relative error ${e}`)
      }
    }
  }

  g.dispose()
})

test('matmul: chooseSplit covers K with non-empty, 16-aligned ranges', () => {
  for (const [M, N, K] of [
    [128, 384, 1024],
    [256, 256, 4096],
    [1024, 24, 4096],
    [32, 32, 17],
    [64, 64, 100],
  ]) {
    const s = chooseSplit(M, N, K)
    const kc = Math.ceil(Math.ceil(K / s) / 16) * 16
    assert.ok(s >= 1 && kc * s >= K && kc * (s - 1) < K, `${M} ${N} ${K}: split ${s}, ${kc} per split`)
  }
})

test('matmul epilogues: residual add, GELU prologue and GELU′ epilogue, the HC/mHC merge', {skip}, async () => {
  for (const shape of [
    [37, 70, 45],
    [36, 68, 44],
  ] as const)
    await epilogues(shape)
})

async function epilogues([M, N, K]: readonly [number, number, number]) {
  const g = gpu!
  const rng = new Rng(2)
  const a = randn(rng, M * K)
  const b = randn(rng, K * N, 0.3)
  const prod = (ga: boolean) => {
    const r = new Float64Array(M * N)
    for (let m = 0; m < M; m++)
      for (let n = 0; n < N; n++) {
        let s = 0
        for (let k = 0; k < K; k++) s += (ga ? gelu(a[m * K + k]) : a[m * K + k]) * b[k * N + n]
        r[m * N + n] = s
      }

    return r
  }

  const p = prod(false)
  const pg = prod(true)
  const A = g.upload(a)
  const B = g.upload(b)
  const run = async (v: MatmulVariant, extra: GPUBuffer[], dimsExtra = {}, outs = 1) => {
    const C = g.buffer(M * N * 4)
    const o = extra.length === 3 ? [extra[0], extra[1], g.buffer(M * outs * N * 4)] : extra
    g.submit([matmulOp(g, v, {M, N, K, ...dimsExtra}, [A, B, C, ...o])])
    return {
      c: await g.readF32(C, 0, M * N),
      x: o.length === 3 ? await g.readF32(o[2] as GPUBuffer, 0, M * outs * N) : undefined,
    }
  }

  const r = randn(rng, M * N)
  const add = await run({epilogue: 'add'}, [g.upload(r)])
  assert.ok(
    relErr(
      add.c,
      p.map((v, i) => v + r[i]),
    ) < 2e-6,
    'add',
  )
  const gl = await run({gelu: true}, [])
  assert.ok(relErr(gl.c, pg) < 2e-6, 'gelu prologue')
  const gb = await run({epilogue: 'geluBwd'}, [g.upload(r)])
  assert.ok(
    relErr(
      gb.c,
      p.map((v, i) => v * geluGrad(r[i])),
    ) < 2e-6,
    'gelu′ epilogue',
  )
  for (const ns of [1, 3, 8]) {
    // cst rows: [H_pre (ns) | H_post (ns) | H_res (ns²) | pad], row length cs
    const cs = 2 * ns + ns * ns + 3
    const cst = randn(rng, M * cs)
    const x = randn(rng, M * ns * N)
    const mg = await run(
      {epilogue: 'merge'},
      [g.upload(x), g.upload(cst), undefined as any],
      {ns, cs, opost: ns, ores: 2 * ns},
      ns,
    )
    assert.ok(relErr(mg.c, p) < 2e-6, `merge n=${ns}: out`)
    const ref = new Float64Array(M * ns * N)
    for (let m = 0; m < M; m++)
      for (let i = 0; i < ns; i++)
        for (let n = 0; n < N; n++) {
          let s = cst[m * cs + ns + i] * p[m * N + n]
          for (let j = 0; j < ns; j++) s += cst[m * cs + 2 * ns + i * ns + j] * x[(m * ns + j) * N + n]
          ref[(m * ns + i) * N + n] = s
        }

    assert.ok(relErr(mg.x!, ref) < 2e-6, `merge n=${ns}: x_new`)
  }

  g.dispose()
}

test(
  'matmul: two problems in one dispatch (A·Bᵀ with GELU′, Aᵀ·B split-K with GELU) equal the single ops',
  {skip},
  async () => {
    const g = gpu!
    const rng = new Rng(4)
    for (const [M, N, K] of [
      [70, 36, 33],
      [64, 128, 32],
    ]) {
      const dy = g.upload(randn(rng, M * N))
      const w = g.upload(randn(rng, K * N))
      const u = g.upload(randn(rng, M * K))
      const v1: MatmulVariant = {tb: true, epilogue: 'geluBwd'}
      const v2: MatmulVariant = {ta: true, gelu: true}
      const d1 = {M, N: K, K: N}
      const d2 = {M: K, N, K: M, split: 3}
      const [c1, c2, e1, e2] = [
        g.buffer(M * K * 4),
        g.buffer(3 * K * N * 4),
        g.buffer(M * K * 4),
        g.buffer(3 * K * N * 4),
      ]
      g.submit([
        matmulDualOp(g, v1, d1, [dy, w, c1, u], v2, d2, [u, dy, c2]),
        matmulOp(g, v1, d1, [dy, w, e1, u]),
        matmulOp(g, v2, d2, [u, dy, e2]),
      ])
      assert.deepEqual(await g.readF32(c1), await g.readF32(e1), `${M} ${N} ${K}: first problem`)
      assert.deepEqual(await g.readF32(c2), await g.readF32(e2), `${M} ${N} ${K}: second problem`)
      assert.ok((await g.readF32(c1)).some((x) => x !== 0) && (await g.readF32(c2)).some((x) => x !== 0))
    }

    g.dispose()
  },
)

/** Causal attention in float64 from a [N, 3C] qkv; returns y [N, C] and, given dy, dqkv [N, 3C]. */
function attentionRef(qkv: Float32Array, dy: Float32Array, B: number, T: number, H: number, D: number) {
  const C = H * D
  const y = new Float64Array(B * T * C)
  const dq = new Float64Array(B * T * 3 * C)
  const sc = 1 / Math.sqrt(D)
  const at = (b: number, t: number, part: number, h: number, e: number) =>
    qkv[(b * T + t) * 3 * C + part * C + h * D + e]
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const P: number[][] = []
      for (let i = 0; i < T; i++) {
        const s = Array.from({length: i + 1}, (_, j) => {
          let v = 0
          for (let e = 0; e < D; e++) v += at(b, i, 0, h, e) * at(b, j, 1, h, e)
          return v * sc
        })
        const mx = Math.max(...s)
        const ex = s.map((v) => Math.exp(v - mx))
        const z = ex.reduce((x, v) => x + v, 0)
        P.push(ex.map((v) => v / z))
        for (let e = 0; e < D; e++)
          y[(b * T + i) * C + h * D + e] = P[i].reduce((acc, p, j) => acc + p * at(b, j, 2, h, e), 0)
      }

      for (let i = 0; i < T; i++) {
        const g = (e: number) => dy[(b * T + i) * C + h * D + e]
        const dp = P[i].map((_, j) => {
          let v = 0
          for (let e = 0; e < D; e++) v += g(e) * at(b, j, 2, h, e)
          return v
        })
        const delta = P[i].reduce((acc, p, j) => acc + p * dp[j], 0)
        for (let j = 0; j <= i; j++) {
          const ds = P[i][j] * (dp[j] - delta) * sc
          for (let e = 0; e < D; e++) {
            dq[(b * T + i) * 3 * C + h * D + e] += ds * at(b, j, 1, h, e)
            dq[(b * T + j) * 3 * C + C + h * D + e] += ds * at(b, i, 0, h, e)
            dq[(b * T + j) * 3 * C + 2 * C + h * D + e] += P[i][j] * g(e)
          }
        }
      }
    }

  return {y, dqkv: dq}
}

test(
  'attention: forward, dq, dk, dv equal float64 (T = 1, T not a multiple of 64, odd head sizes)',
  {skip},
  async () => {
    const g = gpu!
    const rng = new Rng(3)
    for (const [B, T, H, D] of [
      [2, 1, 2, 3],
      [2, 7, 3, 5],
      [1, 70, 2, 40],
      [3, 65, 1, 8],
    ]) {
      const d = dims(
        {
          arch: 'baseline',
          vocabSize: 8,
          seqLen: T,
          layers: 1,
          dModel: H * D,
          heads: H,
          mlpRatio: 1,
          expansion: 1,
          sinkhornIters: 0,
          gateInit: 0,
          normEps: 1e-20,
        },
        B,
      )
      const C = H * D
      const qkv = randn(rng, B * T * 3 * C)
      const dy = randn(rng, B * T * C)
      const ref = attentionRef(qkv, dy, B, T, H, D)
      const DQ = g.buffer(B * T * 3 * C * 4)
      const DY = g.upload(dy)
      const L = g.buffer(B * H * T * 4)
      const Q = g.upload(qkv)
      const Y = g.buffer(B * T * C * 4)
      g.submit([
        g.op(attnFwd(d), [Q, Y, L], [Math.ceil(T / 64), B * H]),
        g.op(attnBwd(d), [Q, Y, DY, L, DQ], [Math.ceil(T / 64), B * H, 2]),
      ])
      const y = await g.readF32(Y, 0, B * T * C)
      const dq = await g.readF32(DQ, 0, B * T * 3 * C)
      assert.ok(relErr(y, ref.y) < 2e-6, `B=${B} T=${T} H=${H} D=${D}: y error ${relErr(y, ref.y)}`)
      for (const [part, name] of [
        [0, 'dq'],
        [1, 'dk'],
        [2, 'dv'],
      ] as const) {
        const pick = (a: ArrayLike<number>) =>
          Float64Array.from({length: B * T * C}, (_, i) => a[Math.floor(i / C) * 3 * C + part * C + (i % C)])
        const e = relErr(pick(dq), pick(ref.dqkv))
        assert.ok(e < 5e-6, `B=${B} T=${T} H=${H} D=${D}: ${name} error ${e}`)
      }
    }

    g.dispose()
  },
)

test('no WebGPU validation or device errors were raised', {skip}, noDeviceErrors)
