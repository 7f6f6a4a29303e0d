/// <reference types="@webgpu/types" />
// The WebGPU training engine for the project's model (baseline / HC / mHC), in the manner of llm.c: the model's own
// forward and backward kernels, every buffer, pipeline, bind group and uniform made once in `create`, and a training
// step replayed as one command buffer (one compute pass) that ends with the gradient norm, the clip and AdamW decided
// on the GPU. Per step the host writes the batch and the hyper-parameters and reads back 8 floats.
import {ModelConfig, numConnections} from '../../config.js'
import {BufferRange, deviceError, Gpu, grid2, Op, uncaptured} from './gpu.js'
import {
  adamwKernel,
  attnBwd,
  attnFwd,
  batchLayout,
  connBwd,
  connFwd,
  ConnOffsets,
  connUniform,
  crossEntropy,
  EMBED_PIECE,
  embedBwd,
  embedBwdPieces,
  embedFwd,
  NORM_CHUNK,
  normBwd,
  normFwd,
  REDUCE_COLS,
  reduceKernel,
  statsKernel,
  sumSquares,
  TT,
} from './kernels.js'
import {align, dims, Dims, ParamLayout, paramLayout, ParamSlot} from './layout.js'
import {chooseSplit, matmulDualOp, matmulOp, MatmulVariant} from './matmul.js'

export interface StepHyper {
  lr: number
  beta1: number
  beta2: number
  eps: number
  weightDecay: number
  gradClip: number // 0: no clipping
  t: number // 1-based step, for the bias corrections
}

export interface StepStats {
  loss: number
  gradNorm: number
  clipped: boolean
  nonFinite: boolean // the loss or the gradient norm was NaN/±Inf: nothing was updated
}

export interface ConnectionMaps {
  hPre: Float32Array[]
  hPost: Float32Array[]
  hRes: Float32Array[]
}

export interface EngineOptions {
  /** mHC: store every `skEvery`-th Sinkhorn iterate for the backward pass (default: 1 when the trace fits in 64 MiB). */
  skEvery?: number
}

type Rec = Record<string, Float32Array>

const F = 4 // bytes per float

export class WebGpuTrainer {
  readonly d: Dims
  readonly layout: ParamLayout
  readonly gpu: Gpu
  /** Ops of one training step (forward, backward, norm, AdamW), of an evaluation, and of the forward pass alone. */
  readonly trainOps: Op[] = []
  readonly evalOps: Op[] = []
  readonly forwardOps: Op[] = []
  private gradOps: Op[] = [] // trainOps without AdamW
  private bufs!: Record<string, GPUBuffer>
  private X: GPUBuffer[] = []
  private cst: GPUBuffer[] = []
  private readback!: GPUBuffer
  private busy = false

  private constructor(
    readonly device: GPUDevice,
    readonly cfg: ModelConfig,
    readonly batch: number,
    private opts: EngineOptions,
  ) {
    this.gpu = new Gpu(device)
    this.d = dims(cfg, batch)
    this.layout = paramLayout(cfg)
  }

  /** Allocates everything and builds every op; `params` (all of paramSpecs, by name) are uploaded when given. */
  static async create(
    device: GPUDevice,
    cfg: ModelConfig,
    batch: number,
    params?: Rec,
    opts: EngineOptions = {},
  ): Promise<WebGpuTrainer> {
    const e = new WebGpuTrainer(device, cfg, batch, opts)
    device.pushErrorScope('validation')
    device.pushErrorScope('out-of-memory')
    let thrown: unknown
    try {
      e.build()
    } catch (error) {
      thrown = error
    }

    const oom = await device.popErrorScope()
    const err = await device.popErrorScope()
    if (thrown || oom || err) {
      e.dispose()
      if (thrown) throw thrown
      throw new Error(`WebGPU engine: ${(oom ?? err)!.message}`)
    }

    if (params) e.writeParams(params)
    return e
  }

  private slot(name: string): ParamSlot {
    const s = this.layout.byName.get(name)
    if (!s) throw new Error(`no parameter ${name}`)
    return s
  }

  /** A parameter (or its gradient, moment) as a binding range. */
  private pr(buf: GPUBuffer, name: string): BufferRange {
    const s = this.slot(name)
    return {buffer: buf, offset: s.offset * F, size: s.size * F}
  }

  private build(): void {
    const {gpu, d, layout} = this
    const {N, C, n, V, T, B, H} = d
    const conns = numConnections(this.cfg)
    const {arch} = d
    const conn = arch !== 'baseline'
    const buf = (floats: number, label: string) => gpu.buffer(floats * F, label)
    const tiles = Math.ceil(N / TT)
    const tileGrid = grid2(tiles, gpu.maxGrid)
    const NN = n * n
    // Sinkhorn trace for the mHC backward.
    let skEvery = this.opts.skEvery ?? 1
    const budget = Math.min(64 * 2 ** 20, gpu.maxBinding)
    if (arch === 'mhc' && this.opts.skEvery === undefined)
      while (N * Math.ceil(d.iters / skEvery) * NN * F > budget && skEvery < d.iters) skEvery++
    const skFloats = arch === 'mhc' ? N * Math.ceil(Math.max(1, d.iters) / skEvery) * NN : 1

    const b: Record<string, GPUBuffer> = {
      P: buf(layout.total, 'params'),
      G: buf(layout.total, 'grads'),
      M: buf(layout.total, 'adam_m'),
      Vm: buf(layout.total, 'adam_v'),
      batch: buf(batchLayout(d).size, 'batch'),
      stats: buf(8, 'stats'),
      embPart: buf(batchLayout(d).pieces * C, 'embed_pieces'),
      zf: buf(N * C, 'zf'),
      rstdF: buf(N, 'rstdF'),
      logits: buf(N * V, 'logits'),
      losses: buf(N, 'losses'),
      dXa: buf(N * n * C, 'dXa'),
      dXb: buf(N * n * C, 'dXb'),
      dY: buf(N * C, 'dY'),
      dqkv: buf(N * 3 * C, 'dqkv'),
      dU: buf(N * d.F, 'dU'),
      da: buf(N * C, 'da'),
      dz: buf(N * C, 'dz'),
      gn: buf(Math.ceil(layout.total / NORM_CHUNK), 'gn_partials'),
      dOut: buf(conn ? N * C : 1, 'dOut'),
      dH0: buf(conn ? N * d.MS : 1, 'dH0'),
      dH1: buf(conn ? N * d.MS : 1, 'dH1'),
      gq: buf(conn ? N * d.P : 1, 'gq'),
      skm: buf(skFloats, 'sk_trace'),
    }
    b.hyper = gpu.device.createBuffer({
      size: 48,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      label: 'hyper',
    })
    this.readback = gpu.device.createBuffer({
      size: 32,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      label: 'readback',
    })
    this.bufs = b
    for (let l = 0; l <= conns; l++) this.X.push(buf(N * n * C, `X${l}`))
    const a: GPUBuffer[] = []
    const qkv: GPUBuffer[] = []
    const y: GPUBuffer[] = []
    const lse: GPUBuffer[] = []
    const u: GPUBuffer[] = []
    const out: GPUBuffer[] = []
    for (let l = 0; l < conns; l++) {
      a.push(buf(N * C, `a${l}`))
      this.cst.push(buf(N * d.CS, `cst${l}`))
      if (l % 2 === 0) {
        qkv.push(buf(N * 3 * C, `qkv${l}`))
        y.push(buf(N * C, `y${l}`))
        lse.push(buf(B * H * T, `lse${l}`))
        u.push(undefined as any)
      } else {
        qkv.push(undefined as any)
        y.push(undefined as any)
        lse.push(undefined as any)
        u.push(buf(N * d.F, `u${l}`))
      }

      out.push(conn ? buf(N * C, `out${l}`) : (undefined as any))
    }

    // Partials: per sublayer, regions for the split-K products of its two weights, the tile partials of its norm
    // weight (and connection α, b), and the split-K product of the connection projection.
    const PW = conn ? C + d.AB : C
    const regions = (sizes: number[]) => {
      const offs: number[] = []
      let o = 0
      for (const s of sizes) {
        offs.push(o)
        o += align(s)
      }

      return {offs, total: o}
    }

    const sub = (l: number) => {
      const attn = l % 2 === 0
      const w1 = attn ? [C, C] : [d.F, C] // proj / proj2: [in, out]
      const w2 = attn ? [C, 3 * C] : [C, d.F] // qkv / fc
      const s1 = chooseSplit(w1[0], w1[1], N)
      const s2 = chooseSplit(w2[0], w2[1], N)
      const s4 = conn ? chooseSplit(d.K, d.Q, N * d.R) : 0
      const r = regions([s1 * w1[0] * w1[1], s2 * w2[0] * w2[1], tiles * PW, s4 * d.K * d.Q])
      return {w1, w2, s1, s2, s4, ...r}
    }

    const sHead = chooseSplit(C, V, N)
    const head = regions([sHead * C * V, tiles * C])
    let partTotal = head.total
    for (let l = 0; l < Math.min(conns, 2); l++) partTotal = Math.max(partTotal, sub(l).total)
    const part = buf(partTotal, 'partials')
    const pr = (o: number, floats: number): BufferRange => ({
      buffer: part,
      offset: o * F,
      size: Math.max(1, floats) * F,
    })

    const jobsOp = (jobs: number[][]) => {
      // [srcOff, stride, rows, cols, dstOff] → with prefix
      const data = new Uint32Array(jobs.length * 8)
      let first = 0
      for (const [i, j] of jobs.entries()) {
        data.set([j[0], j[1], j[2], j[3], j[4], first, 0, 0], i * 8)
        first += Math.ceil(j[3] / REDUCE_COLS)
      }

      const jb = gpu.upload(data, 'jobs')
      return gpu.op(
        reduceKernel(),
        [part, {buffer: jb, offset: 0, size: data.byteLength}, b.G],
        grid2(first, gpu.maxGrid),
      )
    }

    const {P} = b
    const fwd: Op[] = []
    const bwd: Op[] = []
    const pos = this.slot('pos_emb.weight').offset
    const tok = this.slot('tok_emb.weight').offset
    fwd.push(gpu.op(embedFwd(d, tok, pos), [b.batch, P, this.X[0]], grid2(Math.ceil((N * C) / 256), gpu.maxGrid)))
    const W = (l: number, w: string) => `blocks.${l >> 1}.${l % 2 === 0 ? 'attn' : 'mlp'}.${w}`
    const cOff = (l: number): ConnOffsets => {
      const o = (s: string) => this.slot(`conn.${l}.${s}`).offset
      return {
        W: o(arch === 'hc' ? 'theta' : 'phi'),
        APRE: o('alpha_pre'),
        APOST: o('alpha_post'),
        ARES: o('alpha_res'),
        BPRE: o('b_pre'),
        BPOST: o('b_post'),
        BRES: o('b_res'),
        NW: this.slot(W(l, 'norm.weight')).offset,
      }
    }

    const cu = (l: number) => gpu.uniform(connUniform(cOff(l), d.iters, skEvery, l > 0), `conn${l}`)
    const dH = (l: number) => (l % 2 === 0 ? b.dH0 : b.dH1) // connection l's dH_post, dH_res (ping-pong)
    const nu = (w: number, rs: number, ro: number) => gpu.uniform(new Uint32Array([w, rs, ro, 0]), 'norm')
    const mergeVariant = (v: MatmulVariant): MatmulVariant => ({...v, epilogue: conn ? 'merge' : 'add'})
    const mergeDims = conn ? {ns: n, cs: d.CS, opost: d.oPost, ores: d.oRes} : {}
    const mergeBind = (l: number) => (conn ? [this.X[l], this.cst[l], this.X[l + 1]] : [this.X[l]])

    // ----- forward
    for (let l = 0; l < conns; l++) {
      const attn = l % 2 === 0
      const nw = this.slot(W(l, 'norm.weight')).offset
      if (conn) fwd.push(gpu.op(connFwd(d), [this.X[l], P, this.cst[l], a[l], cu(l)], tileGrid))
      else fwd.push(gpu.op(normFwd(d, 1), [this.X[l], P, a[l], this.cst[l], nu(nw, d.CS, d.oRH)], tileGrid))
      if (attn) {
        fwd.push(matmulOp(gpu, {}, {M: N, N: 3 * C, K: C}, [a[l], this.pr(P, W(l, 'qkv.weight')), qkv[l]]))
        fwd.push(gpu.op(attnFwd(d), [qkv[l], y[l], lse[l]], [Math.ceil(T / 64), B * H]))
        fwd.push(
          matmulOp(gpu, mergeVariant({}), {M: N, N: C, K: C, ...mergeDims}, [
            y[l],
            this.pr(P, W(l, 'proj.weight')),
            conn ? out[l] : this.X[l + 1],
            ...mergeBind(l),
          ]),
        )
      } else {
        fwd.push(matmulOp(gpu, {}, {M: N, N: d.F, K: C}, [a[l], this.pr(P, W(l, 'fc.weight')), u[l]]))
        fwd.push(
          matmulOp(gpu, mergeVariant({gelu: true}), {M: N, N: C, K: d.F, ...mergeDims}, [
            u[l],
            this.pr(P, W(l, 'proj.weight')),
            conn ? out[l] : this.X[l + 1],
            ...mergeBind(l),
          ]),
        )
      }
    }

    const fwdBody = fwd.slice()
    const normW = this.slot('norm.weight').offset
    fwd.push(gpu.op(normFwd(d, n), [this.X[conns], P, b.zf, b.rstdF, nu(normW, 1, 0)], tileGrid))
    fwd.push(matmulOp(gpu, {}, {M: N, N: V, K: C}, [b.zf, this.pr(P, 'lm_head.weight'), b.logits]))
    fwd.push(gpu.op(crossEntropy(d), [b.logits, b.batch, b.losses], grid2(Math.ceil(N / 4), gpu.maxGrid)))

    // ----- backward: head
    // Each backward matmul pair (activation gradient A·Bᵀ, weight gradient Aᵀ·B of the same output gradient) is one dispatch.
    bwd.push(
      matmulDualOp(
        gpu,
        {tb: true},
        {M: N, N: C, K: V},
        [b.logits, this.pr(P, 'lm_head.weight'), b.dz],
        {ta: true},
        {M: C, N: V, K: N, split: sHead},
        [b.zf, b.logits, pr(head.offs[0], sHead * C * V)],
      ),
    )
    let cur = b.dXa
    let nxt = b.dXb
    // The final norm's backward also does the merge backward of the top connection (dOut, dH for it).
    bwd.push(
      gpu.op(
        normBwd(d, n, false, conn),
        [
          b.dz,
          this.X[conns],
          P,
          b.rstdF,
          cur,
          pr(head.offs[1], tiles * C),
          nu(normW, 1, 0),
          ...(conn ? [out[conns - 1], this.X[conns - 1], this.cst[conns - 1], b.dOut, dH(conns - 1)] : []),
        ],
        tileGrid,
      ),
    )
    bwd.push(
      jobsOp([
        [head.offs[0], C * V, sHead, C * V, this.slot('lm_head.weight').offset],
        [head.offs[1], C, tiles, C, normW],
      ]),
    )
    // ----- backward: sublayers, last to first
    for (let l = conns - 1; l >= 0; l--) {
      const attn = l % 2 === 0
      const s = sub(l)
      const nw = this.slot(W(l, 'norm.weight')).offset
      const gOut: GPUBuffer = conn ? b.dOut : cur
      const [w1, w2] = attn ? ['proj.weight', 'qkv.weight'] : ['proj.weight', 'fc.weight']
      if (attn) {
        bwd.push(
          matmulDualOp(
            gpu,
            {tb: true},
            {M: N, N: C, K: C},
            [gOut, this.pr(P, W(l, w1)), b.dY],
            {ta: true},
            {M: C, N: C, K: N, split: s.s1},
            [y[l], gOut, pr(s.offs[0], s.s1 * C * C)],
          ),
        )
        bwd.push(gpu.op(attnBwd(d), [qkv[l], y[l], b.dY, lse[l], b.dqkv], [Math.ceil(T / 64), B * H, 2]))
        bwd.push(
          matmulDualOp(
            gpu,
            {tb: true},
            {M: N, N: C, K: 3 * C},
            [b.dqkv, this.pr(P, W(l, w2)), b.da],
            {ta: true},
            {M: C, N: 3 * C, K: N, split: s.s2},
            [a[l], b.dqkv, pr(s.offs[1], s.s2 * 3 * C * C)],
          ),
        )
      } else {
        bwd.push(
          matmulDualOp(
            gpu,
            {tb: true, epilogue: 'geluBwd'},
            {M: N, N: d.F, K: C, ldr: d.F},
            [gOut, this.pr(P, W(l, w1)), b.dU, u[l]],
            {ta: true, gelu: true},
            {M: d.F, N: C, K: N, split: s.s1},
            [u[l], gOut, pr(s.offs[0], s.s1 * d.F * C)],
          ),
        )
        bwd.push(
          matmulDualOp(
            gpu,
            {tb: true},
            {M: N, N: C, K: d.F},
            [b.dU, this.pr(P, W(l, w2)), b.da],
            {ta: true},
            {M: C, N: d.F, K: N, split: s.s2},
            [a[l], b.dU, pr(s.offs[1], s.s2 * C * d.F)],
          ),
        )
      }

      const jobs: number[][] = [
        [s.offs[0], s.w1[0] * s.w1[1], s.s1, s.w1[0] * s.w1[1], this.slot(W(l, w1)).offset],
        [s.offs[1], s.w2[0] * s.w2[1], s.s2, s.w2[0] * s.w2[1], this.slot(W(l, w2)).offset],
        [s.offs[2], PW, tiles, C, nw],
      ]
      if (conn) {
        const o = cOff(l)
        const p = Math.max(l - 1, 0) // connection l−1's merge backward rides along (unused for l = 0)
        bwd.push(
          gpu.op(
            connBwd(d),
            [
              cur,
              b.da,
              this.X[l],
              this.cst[l],
              P,
              dH(l),
              nxt,
              b.gq,
              pr(s.offs[2], tiles * PW),
              b.skm,
              cu(l),
              out[p],
              this.X[p],
              this.cst[p],
              b.dOut,
              dH(l - 1 + 2),
            ],
            tileGrid,
          ),
        )
        bwd.push(
          matmulOp(gpu, {ta: true}, {M: d.K, N: d.Q, K: N * d.R, split: s.s4}, [
            this.X[l],
            b.gq,
            pr(s.offs[3], s.s4 * d.K * d.Q),
          ]),
        )
        jobs.push(
          [s.offs[3], d.K * d.Q, s.s4, d.K * d.Q, o.W],
          [s.offs[2] + C, PW, tiles, 1, o.APRE],
          [s.offs[2] + C + 1, PW, tiles, 1, o.APOST],
          [s.offs[2] + C + 2, PW, tiles, 1, o.ARES],
          [s.offs[2] + C + 3, PW, tiles, n, o.BPRE],
          [s.offs[2] + C + 3 + n, PW, tiles, n, o.BPOST],
          [s.offs[2] + C + 3 + 2 * n, PW, tiles, NN, o.BRES],
        )
      } else {
        bwd.push(
          gpu.op(
            normBwd(d, 1, true),
            [b.da, this.X[l], P, this.cst[l], nxt, pr(s.offs[2], tiles * C), nu(nw, d.CS, d.oRH), cur],
            tileGrid,
          ),
        )
      }

      bwd.push(jobsOp(jobs))
      ;[cur, nxt] = [nxt, cur]
    }

    bwd.push(
      gpu.op(
        embedBwdPieces(d),
        [cur, b.batch, b.embPart],
        grid2(Math.ceil((batchLayout(d).pieces * C) / 256), gpu.maxGrid),
      ),
    )
    bwd.push(
      gpu.op(embedBwd(d, tok, pos), [cur, b.batch, b.embPart, b.G], grid2(Math.ceil(((V + T) * C) / 256), gpu.maxGrid)),
    )
    const ngn = Math.ceil(layout.total / NORM_CHUNK)
    bwd.push(gpu.op(sumSquares(layout.total), [b.G, b.gn], grid2(ngn, gpu.maxGrid)))
    bwd.push(gpu.op(statsKernel(ngn), [b.losses, b.gn, b.hyper, b.stats], [1]))
    const adam = gpu.op(
      adamwKernel(layout.total, layout.decayEnd),
      [P, b.G, b.M, b.Vm, b.stats, b.hyper],
      grid2(Math.ceil(layout.total / 4 / 256), gpu.maxGrid),
    )

    this.forwardOps.push(...fwdBody)
    this.gradOps = [...fwd, ...bwd]
    this.trainOps.push(...fwd, ...bwd, adam)
    this.evalOps.push(...fwd, gpu.op(statsKernel(0), [b.losses, b.gn, b.hyper, b.stats], [1]))
  }

  /** Tokens (and targets) → the batch buffer (batchLayout): x | y | positions sorted by token id | start of each id | pieces. */
  private writeBatch(x: Int32Array | ArrayLike<number>, y?: Int32Array | ArrayLike<number>): number {
    const {N, V, T} = this.d
    if (x.length % T !== 0 || x.length === 0 || x.length > N)
      throw new Error(`batch of ${x.length} tokens: need whole sequences of ${T}, at most ${N}`)
    if (y && y.length !== x.length) throw new Error('x and y differ in length')
    const L = batchLayout(this.d)
    const data = new Int32Array(L.size)
    const count = new Int32Array(V + 1)
    for (let i = 0; i < N; i++) {
      const v = i < x.length ? x[i] : 0
      const w = y && i < y.length ? y[i] : 0
      if (!(Number.isInteger(v) && Number.isInteger(w) && v >= 0 && v < V && w >= 0 && w < V))
        throw new Error(`token ${v}/${w} outside the vocabulary [0, ${V})`)
      data[i] = v
      data[N + i] = w
      count[v + 1]++
    }

    for (let v = 0; v < V; v++) count[v + 1] += count[v]
    data.set(count, L.start)
    const fill = count.slice(0, V)
    for (let i = 0; i < N; i++) data[L.perm + fill[data[i]]++] = i
    // Pieces of at most EMBED_PIECE positions, each within one token id, in id order.
    let p = 0
    for (let v = 0; v < V; v++) {
      data[L.pstart + v] = p
      for (let a = count[v]; a < count[v + 1]; a += EMBED_PIECE, p++) {
        data[L.prange + 2 * p] = a
        data[L.prange + 2 * p + 1] = Math.min(a + EMBED_PIECE, count[v + 1])
      }
    }

    data[L.pstart + V] = p
    this.gpu.write(this.bufs.batch, data)
    return x.length
  }

  private writeHyper(h: Partial<StepHyper>, count: number): void {
    const b1 = h.beta1 ?? 0.9
    const b2 = h.beta2 ?? 0.999
    const lr = h.lr ?? 0
    const t = h.t ?? 1
    const f = new Float32Array([
      lr,
      b1,
      1 - b1,
      b2,
      1 - b2,
      1 - b1 ** t,
      1 - b2 ** t,
      h.eps ?? 1e-8,
      1 - lr * (h.weightDecay ?? 0),
      h.gradClip ?? 0,
      0,
      0,
    ])
    new Uint32Array(f.buffer)[10] = count
    this.gpu.write(this.bufs.hyper, f)
  }

  private async stats(ops: Op[]): Promise<Float32Array> {
    if (this.busy) throw new Error('WebGpuTrainer: one call at a time (await the previous one)')
    this.busy = true
    const errorsBefore = uncaptured.length
    try {
      // The forward pass is submitted on its own: the GPU runs it while the host encodes the backward pass.
      this.gpu.submit(
        ops,
        (enc) => enc.copyBufferToBuffer(this.bufs.stats, 0, this.readback, 0, 32),
        this.forwardOps.length,
      )
      await this.readback.mapAsync(GPUMapMode.READ)
      const s = new Float32Array(this.readback.getMappedRange().slice(0))
      this.readback.unmap()
      // An invalid command buffer does not run, and the read-back would show the previous step's numbers as new.
      if (uncaptured.length > errorsBefore) throw new Error(`WebGPU error in this step: ${uncaptured[errorsBefore]}`)
      return s
    } catch (error) {
      throw deviceError(this.device, error)
    } finally {
      this.busy = false
    }
  }

  /** One optimiser step on a full batch (batch·seqLen tokens): forward, backward, clip, AdamW, all on the GPU. */
  async trainStep(
    x: Int32Array | ArrayLike<number>,
    y: Int32Array | ArrayLike<number>,
    hp: StepHyper,
  ): Promise<StepStats> {
    if (x.length !== this.d.N) throw new Error(`trainStep needs ${this.d.N} tokens, got ${x.length}`)
    this.writeBatch(x, y)
    this.writeHyper(hp, this.d.N)
    const s = await this.stats(this.trainOps)
    return {loss: s[0], gradNorm: s[1], clipped: s[4] === 1, nonFinite: s[3] !== 1}
  }

  /** Forward and backward without the update; the gradients (by parameter name) are read back. For tests. */
  async gradients(
    x: Int32Array | ArrayLike<number>,
    y: Int32Array | ArrayLike<number>,
  ): Promise<{loss: number; gradNorm: number; grads: Rec}> {
    if (x.length !== this.d.N) throw new Error(`gradients needs ${this.d.N} tokens, got ${x.length}`)
    this.writeBatch(x, y)
    this.writeHyper({}, this.d.N)
    const s = await this.stats(this.gradOps)
    return {loss: s[0], gradNorm: s[1], grads: this.split(await this.gpu.readF32(this.bufs.G))}
  }

  /** Mean cross-entropy of whole sequences (at most batch of them; fewer are padded and left out of the mean). */
  async evaluate(x: Int32Array | ArrayLike<number>, y: Int32Array | ArrayLike<number>): Promise<number> {
    let total = 0
    for (let i = 0; i < x.length; i += this.d.N) {
      const xs = Array.prototype.slice.call(x, i, i + this.d.N) as number[]
      const ys = Array.prototype.slice.call(y, i, i + this.d.N) as number[]
      const count = this.writeBatch(xs, ys)
      this.writeHyper({}, count)
      total += (await this.stats(this.evalOps))[0] * count
    }

    return total / x.length
  }

  /** Every connection's H_pre [rows, n], H_post [rows, n], H_res [rows, n, n] (row-major) for whole sequences x. */
  async collectMaps(x: Int32Array | ArrayLike<number>): Promise<ConnectionMaps> {
    const {n, CS, N} = this.d
    if (this.d.arch === 'baseline') throw new Error('collectMaps: the baseline has no connection maps')
    if (this.busy) throw new Error('WebGpuTrainer: one call at a time (await the previous one)')
    const res: ConnectionMaps = {hPre: [], hPost: [], hRes: []}
    const conns = this.cst.length
    const parts: Float32Array[][] = Array.from({length: conns}, () => [])
    this.busy = true // the batch buffer is ours until the last read
    try {
      for (let i = 0; i < x.length; i += N) {
        const count = this.writeBatch(Array.prototype.slice.call(x, i, i + N) as number[])
        this.gpu.submit(this.forwardOps) // queue order: any step submitted before has finished with the batch buffer
        for (let l = 0; l < conns; l++) parts[l].push(await this.gpu.readF32(this.cst[l], 0, count * CS))
      }
    } finally {
      this.busy = false
    }

    for (let l = 0; l < conns; l++) {
      const rows = parts[l].reduce((a, p) => a + p.length / CS, 0)
      const hPost = new Float32Array(rows * n)
      const hPre = new Float32Array(rows * n)
      const hRes = new Float32Array(rows * n * n)
      let r = 0
      for (const p of parts[l])
        for (let t = 0; t < p.length / CS; t++, r++) {
          hPre.set(p.subarray(t * CS + this.d.oPre, t * CS + this.d.oPre + n), r * n)
          hPost.set(p.subarray(t * CS + this.d.oPost, t * CS + this.d.oPost + n), r * n)
          hRes.set(p.subarray(t * CS + this.d.oRes, t * CS + this.d.oRes + n * n), r * n * n)
        }

      res.hPre.push(hPre)
      res.hPost.push(hPost)
      res.hRes.push(hRes)
    }

    return res
  }

  private split(flat: Float32Array): Rec {
    const out: Rec = {}
    for (const s of this.layout.slots) out[s.name] = flat.slice(s.offset, s.offset + s.size)
    return out
  }

  private writeRec(buf: GPUBuffer, rec: Rec, what: string): void {
    for (const s of this.layout.slots) {
      const v = rec[s.name]
      if (!v) throw new Error(`${what}: missing ${s.name}`)
      if (v.length !== s.size) throw new Error(`${what}: ${s.name} has ${v.length} values, expected ${s.size}`)
      this.gpu.write(buf, v instanceof Float32Array ? v : Float32Array.from(v), s.offset * F)
    }
  }

  async readParams(): Promise<Rec> {
    return this.split(await this.gpu.readF32(this.bufs.P))
  }

  async readOptimizer(): Promise<{m: Rec; v: Rec}> {
    return {m: this.split(await this.gpu.readF32(this.bufs.M)), v: this.split(await this.gpu.readF32(this.bufs.Vm))}
  }

  writeParams(p: Rec): void {
    this.writeRec(this.bufs.P, p, 'writeParams')
  }

  writeOptimizer(o: {m: Rec; v: Rec}): void {
    this.writeRec(this.bufs.M, o.m, 'writeOptimizer')
    this.writeRec(this.bufs.Vm, o.v, 'writeOptimizer')
  }

  /** Dispatches per training step, evaluation and forward pass. */
  get dispatches(): {train: number; eval: number; forward: number} {
    return {train: this.trainOps.length, eval: this.evalOps.length, forward: this.forwardOps.length}
  }

  dispose(): void {
    this.gpu.dispose()
    this.readback?.destroy()
    this.bufs?.hyper?.destroy()
  }
}
