// Kernel I/O and roofline timing of the residual-stream maintenance around one layer (attention or FFN), per token.
//
// Four designs:
//   residual     x + F(x): one merge kernel (paper Table 2).
//   hc           HC as Table 2 counts it: coefficients, H_pre, H_post, H_res, merge (five kernels).
//   mhc-unfused  mHC written op by op (how autograd frameworks run Eq. 7–9): RMSNorm of the nC vector, the φ
//                projection, every scale/bias/activation as its own kernel, Sinkhorn-Knopp as exp + 2·t_max
//                normalisations, then the same four apply kernels as HC.
//   mhc-fused    the paper's §4.3.1: Eq. 14–15 (φ GEMM and the norm r in one pass over x, RMSNorm reordered after
//                the matmul), Eq. 16–18 (one kernel), Eq. 19 (Sinkhorn in one kernel with a recomputing backward),
//                F_pre, and F_post,res fused with the residual merge.
// Elements are counted per token, as Table 2 does; tensors of weights (φ, θ, b) are read once per kernel launch.
// Time of a kernel = max(bytes / bandwidth, flops / peak) + launch latency, for a micro-batch of tokens.

export const DESIGNS = ['residual', 'hc', 'mhc-unfused', 'mhc-fused'] as const
export type Design = (typeof DESIGNS)[number]

/** bf16 activations, fp32 coefficients and weights (paper Eq. 10–19). */
export type DType = 'act' | 'coef'
export interface Access {
  what: string
  elems: number
  dtype: DType
  perLaunch?: boolean
}
export type Pass = 'fwd' | 'bwd'
export type FlopUnit = 'tensor' | 'vector'

export interface KernelSpec {
  name: string
  pass: Pass
  reads: Access[]
  writes: Access[]
  /** Per-token flops, on tensor cores (matmuls) or vector units (everything else). */
  flops: number
  flopUnit: FlopUnit
  /** Part of F_post,res (H_res, H_post, merge): what the paper moves to a high-priority stream for FFN layers. */
  postRes?: boolean
  /** A weight-gradient kernel (dφ, dθ): can be deferred as zero-bubble "W" work. */
  weightGrad?: boolean
  /** Recomputed in the backward pass when the mHC activations are discarded (§4.3.2). */
  recompute?: boolean
  /** Computes the coefficients H_pre, H_post, H_res (not needed again when they are stored). */
  coefficient?: boolean
}

/** One layer's shape in the paper's quantities: n streams of width C, t_max Sinkhorn iterations. */
export interface Shape {
  expansion: number
  dModel: number
  sinkhornIters: number
}

const act = (what: string, elems: number): Access => ({what, elems, dtype: 'act'})
const coef = (what: string, elems: number): Access => ({what, elems, dtype: 'coef'})
const weight = (what: string, elems: number): Access => ({what, elems, dtype: 'coef', perLaunch: true})

/** Every kernel of one layer's residual-stream maintenance, forward then backward. */
export function kernelSpecs(design: Design, s: Shape): KernelSpec[] {
  const {expansion: n, dModel: C, sinkhornIters: tmax} = s
  const X = n * C // the widened stream
  const nc = n * n + 2 * n // H̃_pre, H̃_post, H̃_res
  const k = (
    name: string,
    pass: Pass,
    reads: Access[],
    writes: Access[],
    flops: number,
    flopUnit: FlopUnit = 'vector',
    extra: Partial<KernelSpec> = {},
  ): KernelSpec => ({name, pass, reads, writes, flops, flopUnit, ...extra})
  if (design === 'residual') {
    return [
      k('residual merge', 'fwd', [act('x_l', C), act('F(x_l)', C)], [act('x_l+1', C)], C),
      // x_l feeds both the skip and the branch, so its gradient is a sum.
      k('residual grad merge', 'bwd', [act('dx_l+1', C), act('dx (branch)', C)], [act('dx_l', C)], C),
    ]
  }

  // The apply kernels are shared by HC and unfused mHC: Table 2's H_pre, H_post, H_res and merge rows.
  const apply: KernelSpec[] = [
    k('H_pre x_l', 'fwd', [act('x_l', X), coef('H_pre', n)], [act('h', C)], 2 * X, 'vector', {recompute: true}),
    k('H_post^T F', 'fwd', [act('F(h)', C), coef('H_post', n)], [act('post', X)], X, 'vector', {
      postRes: true,
      recompute: true,
    }),
    k('H_res x_l', 'fwd', [act('x_l', X), coef('H_res', n * n)], [act('res', X)], 2 * n * X, 'vector', {
      postRes: true,
      recompute: true,
    }),
    k('residual merge', 'fwd', [act('res', X), act('post', X)], [act('x_l+1', X)], X, 'vector', {
      postRes: true,
      recompute: true,
    }),
  ]
  // Autograd backward of the apply kernels: one kernel per input gradient; the merge just passes dy on (no kernel);
  // dx_l collects three contributions (H_res, H_pre, coefficient path), so two accumulations.
  const applyBwd: KernelSpec[] = [
    k('H_res bwd: dx', 'bwd', [act('dx_l+1', X), coef('H_res', n * n)], [act('dx (res)', X)], 2 * n * X, 'vector', {
      postRes: true,
    }),
    k('H_res bwd: dH_res', 'bwd', [act('dx_l+1', X), act('x_l', X)], [coef('dH_res', n * n)], 2 * n * X, 'vector', {
      postRes: true,
    }),
    k('H_post bwd: dF', 'bwd', [act('dx_l+1', X), coef('H_post', n)], [act('dF', C)], 2 * X, 'vector', {postRes: true}),
    k('H_post bwd: dH_post', 'bwd', [act('dx_l+1', X), act('F(h)', C)], [coef('dH_post', n)], 2 * X, 'vector', {
      postRes: true,
    }),
    k('H_pre bwd: dx', 'bwd', [act('dh', C), coef('H_pre', n)], [act('dx (pre)', X)], X),
    k('H_pre bwd: dH_pre', 'bwd', [act('dh', C), act('x_l', X)], [coef('dH_pre', n)], 2 * X),
    k('grad accumulate', 'bwd', [act('dx (res)', X), act('dx (pre)', X)], [act('dx', X)], X),
    k('grad accumulate', 'bwd', [act('dx', X), act('dx (coef)', X)], [act('dx_l', X)], X),
  ]
  if (design === 'hc') {
    return [
      // Table 2 counts RMSNorm, the θ projections, tanh, α and b as one pass over x.
      k(
        'coefficients (Eq. 5)',
        'fwd',
        [act('x_l', X), weight('θ, b', C * (n + 2) + nc)],
        [coef('H_pre', n), coef('H_post', n), coef('H_res', n * n)],
        2 * X * (n + 2) + 4 * X,
        'tensor',
        {recompute: true, coefficient: true},
      ),
      ...apply,
      k(
        'coefficients bwd: dx',
        'bwd',
        [act('x_l', X), coef('dH', nc), weight('θ', C * (n + 2))],
        [act('dx (coef)', X)],
        2 * X * (n + 2) + 4 * X,
        'tensor',
      ),
      k(
        'coefficients bwd: dθ',
        'bwd',
        [act('x_l', X), coef('dH', nc)],
        [weight('dθ', C * (n + 2))],
        2 * X * (n + 2),
        'tensor',
        {weightGrad: true},
      ),
      ...applyBwd,
    ]
  }

  if (design === 'mhc-unfused') {
    const small = (name: string, e: number, flopsPer = 1): KernelSpec[] => [
      k(name, 'fwd', [coef('in', e)], [coef('out', e)], flopsPer * e, 'vector', {recompute: true, coefficient: true}),
      k(`${name} bwd`, 'bwd', [coef('d out', e), coef('in', e)], [coef('d in', e)], 2 * flopsPer * e),
    ]
    const norm = (i: number, axis: string): KernelSpec[] => [
      k(`SK ${axis} normalisation ${i}`, 'fwd', [coef('M', n * n)], [coef("M'", n * n)], 2 * n * n, 'vector', {
        recompute: true,
        coefficient: true,
      }),
      // div backward (numerator and denominator) and the broadcast of the sum's gradient: three autograd kernels.
      ...[0, 1, 2].map((j) =>
        k(
          `SK ${axis} normalisation ${i} bwd.${j}`,
          'bwd',
          [coef("dM'", n * n), coef('M', n * n)],
          [coef('dM', n * n)],
          2 * n * n,
        ),
      ),
    ]
    const sk: KernelSpec[] = []
    for (let t = 1; t <= tmax; t++) sk.push(...norm(t, 'column'), ...norm(t, 'row'))
    return [
      k('RMSNorm(vec x_l)', 'fwd', [act('x_l', X)], [act("x'", X)], 4 * X, 'vector', {
        recompute: true,
        coefficient: true,
      }),
      k("x' φ", 'fwd', [act("x'", X), weight('φ', X * nc)], [coef('H̃', nc)], 2 * X * nc, 'tensor', {
        recompute: true,
        coefficient: true,
      }),
      ...small('α_pre ·', n),
      ...small('+ b_pre', n),
      ...small('σ (pre)', n, 4),
      ...small('α_post ·', n),
      ...small('+ b_post', n),
      ...small('σ (post)', n, 4),
      ...small('2 · (post)', n),
      ...small('α_res ·', n * n),
      ...small('+ b_res', n * n),
      ...small('exp (SK M0)', n * n, 4),
      ...sk,
      ...apply,
      k("x' φ bwd: dx'", 'bwd', [coef('dH̃', nc), weight('φ', X * nc)], [act("dx'", X)], 2 * X * nc, 'tensor'),
      k("x' φ bwd: dφ", 'bwd', [act("x'", X), coef('dH̃', nc)], [weight('dφ', X * nc)], 2 * X * nc, 'tensor', {
        weightGrad: true,
      }),
      k('RMSNorm bwd', 'bwd', [act("dx'", X), act('x_l', X)], [act('dx (coef)', X)], 6 * X),
      ...applyBwd,
    ].sort((a, b) => (a.pass === b.pass ? 0 : a.pass === 'fwd' ? -1 : 1))
  }

  // mhc-fused (§4.3.1). RMSNorm's weight is absorbed in φ and its division moved after the GEMM (Eq. 14–16).
  return [
    k(
      'Eq. 14–15: x φ and r = ‖x‖/√(nC)',
      'fwd',
      [act('x_l', X), weight('φ', X * nc)],
      [coef('H̃', nc), coef('r', 1)],
      2 * X * nc,
      'tensor',
      {recompute: true, coefficient: true},
    ),
    k(
      'Eq. 16–18: 1/r, α, b, σ, 2σ',
      'fwd',
      [coef('H̃', nc), coef('r', 1), weight('α, b', 3 + nc)],
      [coef('H_pre, H_post', 2 * n), coef('H̃_res', n * n)],
      6 * nc,
      'vector',
      {recompute: true, coefficient: true},
    ),
    k(
      'Eq. 19: Sinkhorn-Knopp',
      'fwd',
      [coef('H̃_res', n * n)],
      [coef('H_res', n * n)],
      (2 + 4 * tmax) * n * n,
      'vector',
      {recompute: true, coefficient: true},
    ),
    k('F_pre = H_pre x_l', 'fwd', [act('x_l', X), coef('H_pre', n)], [act('h', C)], 2 * X, 'vector', {recompute: true}),
    k(
      'F_post,res = H_res x_l + H_post^T F',
      'fwd',
      [act('x_l', X), act('F(h)', C), coef('H_res, H_post', n * n + n)],
      [act('x_l+1', X)],
      2 * n * X + 2 * X,
      'vector',
      {postRes: true, recompute: true},
    ),
    // Backward: dx_l, dF, dH_res and dH_post from one read of dx_l+1, x_l and F.
    k(
      'F_post,res bwd',
      'bwd',
      [act('dx_l+1', X), act('x_l', X), act('F(h)', C), coef('H_res, H_post', n * n + n)],
      [act('dx (res)', X), act('dF', C), coef('dH_res, dH_post', n * n + n)],
      4 * n * X + 4 * X,
      'vector',
      {postRes: true},
    ),
    // F_pre's backward adds its contribution into dx in the same pass (read-modify-write).
    k(
      'F_pre bwd',
      'bwd',
      [act('dh', C), act('x_l', X), act('dx (res)', X), coef('H_pre', n)],
      [act('dx', X), coef('dH_pre', n)],
      4 * X,
    ),
    k(
      'Eq. 19 bwd (recomputes SK on chip)',
      'bwd',
      [coef('H̃_res', n * n), coef('dH_res', n * n)],
      [coef('dH̃_res', n * n)],
      3 * (2 + 4 * tmax) * n * n,
    ),
    k('Eq. 16–18 bwd', 'bwd', [coef('H̃, r', nc + 1), coef('dH', nc)], [coef('dH̃, dr', nc + 1)], 8 * nc),
    // "The backward pass — comprising two matrix multiplications — is similarly consolidated into a single kernel".
    k(
      'Eq. 14–15 bwd: dx and dφ in one kernel',
      'bwd',
      [act('x_l', X), act('dx', X), coef('dH̃, r', nc + 1), weight('φ', X * nc)],
      [act('dx_l', X), weight('dφ', X * nc)],
      4 * X * nc + 4 * X,
      'tensor',
    ),
  ]
}

/** Extra kernel of the recompute pass: the pre-norm inside F, RMSNorm(H_pre x_l), is transient too (Table 3). */
export function recomputeExtras(design: Design, s: Shape): KernelSpec[] {
  if (design === 'residual') return []
  return [
    {
      name: 'RMSNorm(H_pre x_l) (pre-norm of F)',
      pass: 'fwd',
      reads: [act('h', s.dModel), weight('norm weight', s.dModel)],
      writes: [act('RMSNorm(h)', s.dModel)],
      flops: 4 * s.dModel,
      flopUnit: 'vector',
      recompute: true,
    },
  ]
}

export interface IOCount {
  read: number
  write: number
}

/** Per-token elements read and written by a pass (weights read once per launch are left out, as in Table 2). */
export function ioElements(specs: KernelSpec[], pass: Pass = 'fwd', dtype?: DType): IOCount {
  const sum = (xs: Access[]) =>
    xs.filter((a) => !a.perLaunch && (dtype === undefined || a.dtype === dtype)).reduce((t, a) => t + a.elems, 0)
  const ks = specs.filter((k) => k.pass === pass)
  return {read: ks.reduce((t, k) => t + sum(k.reads), 0), write: ks.reduce((t, k) => t + sum(k.writes), 0)}
}

// ---------------------------------------------------------------------------------------------------------------
// Hardware

export interface Hardware {
  name: string
  /** HBM bandwidth, bytes/s (spec sheet). */
  bandwidth: number
  /** Fraction of the HBM bandwidth a streaming kernel reaches. */
  bandwidthEfficiency: number
  /** Dense bf16 tensor-core peak, flop/s. */
  tensorFlops: number
  /** fp32 vector (non-tensor) peak, flop/s: elementwise and Sinkhorn work. */
  vectorFlops: number
  /** GPU-side cost of one kernel boundary, s. */
  launch: number
  /** Scale-up (NVLink) and scale-out (InfiniBand) bandwidth per GPU and direction, bytes/s. */
  nvlink: number
  network: number
  /** One P2P message's fixed latency, s. */
  p2pLatency: number
  source: string
}

export const HARDWARE: Record<string, Hardware> = {
  h800: {
    name: 'H800',
    bandwidth: 3.35e12,
    bandwidthEfficiency: 0.8,
    tensorFlops: 989e12,
    vectorFlops: 67e12,
    launch: 2e-6,
    nvlink: 160e9,
    network: 50e9,
    p2pLatency: 10e-6,
    source:
      'H800 SXM: H100 compute and HBM3 with export-limited NVLink; 160 GB/s NVLink and 50 GB/s IB achieved per DeepSeek-V3 §3.2.2',
  },
  h100: {
    name: 'H100',
    bandwidth: 3.35e12,
    bandwidthEfficiency: 0.8,
    tensorFlops: 989e12,
    vectorFlops: 67e12,
    launch: 2e-6,
    nvlink: 450e9,
    network: 50e9,
    p2pLatency: 10e-6,
    source: 'H100 SXM spec sheet (3.35 TB/s, 989 TFLOPS bf16 dense, 67 TFLOPS fp32); 400 Gb/s NDR IB per GPU',
  },
  h200: {
    name: 'H200',
    bandwidth: 4.8e12,
    bandwidthEfficiency: 0.8,
    tensorFlops: 989e12,
    vectorFlops: 67e12,
    launch: 2e-6,
    nvlink: 450e9,
    network: 50e9,
    p2pLatency: 10e-6,
    source: 'H200 SXM spec sheet (4.8 TB/s HBM3e, H100 compute); 400 Gb/s NDR IB per GPU',
  },
}
export const HARDWARE_NAMES = Object.keys(HARDWARE)

export interface DTypeBytes {
  act: number
  coef: number
}
export const PAPER_DTYPES: DTypeBytes = {act: 2, coef: 4} // bf16 x_l, fp32 φ, b and coefficients (Eq. 10–13)

export interface KernelTime {
  name: string
  pass: Pass
  bytes: number
  flops: number
  /** Roofline time without the launch, and with it; which roof bound it. */
  memory: number
  compute: number
  time: number
  bound: 'memory' | 'compute'
  postRes: boolean
  weightGrad: boolean
}

/** Roofline time of one launch of a kernel over `tokens` tokens. */
export function kernelTime(k: KernelSpec, hw: Hardware, dt: DTypeBytes, tokens: number): KernelTime {
  const bytesOf = (xs: Access[]) => xs.reduce((t, a) => t + a.elems * dt[a.dtype] * (a.perLaunch ? 1 : tokens), 0)
  const bytes = bytesOf(k.reads) + bytesOf(k.writes)
  const flops = k.flops * tokens
  const memory = bytes / (hw.bandwidth * hw.bandwidthEfficiency)
  const compute = flops / (k.flopUnit === 'tensor' ? hw.tensorFlops : hw.vectorFlops)
  return {
    name: k.name,
    pass: k.pass,
    bytes,
    flops,
    memory,
    compute,
    time: Math.max(memory, compute) + hw.launch,
    bound: memory >= compute ? 'memory' : 'compute',
    postRes: Boolean(k.postRes),
    weightGrad: Boolean(k.weightGrad),
  }
}

export interface LayerKernelTimes {
  design: Design
  kernels: KernelTime[]
  /** Recompute pass (forward kernels again, §4.3.2); empty unless asked for. */
  recompute: KernelTime[]
  fwd: number
  /** Backward kernels except weight gradients. */
  bwdInput: number
  /** Weight-gradient kernels (deferrable W work). */
  bwdWeight: number
  recomputeTime: number
  /** F_post,res time (forward, backward, recompute): what the high-priority stream can overlap. */
  postResFwd: number
  postResBwd: number
  postResRecompute: number
  launches: {fwd: number; bwd: number; recompute: number}
}

/**
 * Times of one layer's kernels for a micro-batch of `tokens` tokens. With `recompute`, the forward kernels run again
 * in the backward pass: always F_pre and the pre-norm of F (their outputs feed F's backward), F_post,res unless
 * `skipPostResRecompute` (the last layer of a recompute block, whose output is the next block's stored input), and
 * the coefficient kernels only with `recomputeCoefficients` (H_pre, H_post, H_res are n² + 2n fp32 per token, small
 * enough to keep: Table 3 leaves these "lightweight coefficients" out of the activations it discards).
 */
export function layerKernelTimes(
  design: Design,
  s: Shape,
  hw: Hardware,
  dt: DTypeBytes,
  tokens: number,
  opts: {recompute?: boolean; skipPostResRecompute?: boolean; recomputeCoefficients?: boolean} = {},
): LayerKernelTimes {
  const specs = kernelSpecs(design, s)
  const kernels = specs.map((k) => kernelTime(k, hw, dt, tokens))
  const again = (k: KernelSpec) =>
    k.pass === 'fwd' &&
    k.recompute &&
    !(opts.skipPostResRecompute && k.postRes) &&
    (opts.recomputeCoefficients || !k.coefficient)
  const recSpecs =
    opts.recompute && design !== 'residual' ? [...specs.filter(again), ...recomputeExtras(design, s)] : []
  const recompute = recSpecs.map((k) => ({...kernelTime(k, hw, dt, tokens), name: `recompute: ${k.name}`}))
  const sum = (ks: KernelTime[]) => ks.reduce((t, k) => t + k.time, 0)
  const fwd = kernels.filter((k) => k.pass === 'fwd')
  const bwd = kernels.filter((k) => k.pass === 'bwd')
  return {
    design,
    kernels,
    recompute,
    fwd: sum(fwd),
    bwdInput: sum(bwd.filter((k) => !k.weightGrad)),
    bwdWeight: sum(bwd.filter((k) => k.weightGrad)),
    recomputeTime: sum(recompute),
    postResFwd: sum(fwd.filter((k) => k.postRes)),
    postResBwd: sum(bwd.filter((k) => k.postRes)),
    postResRecompute: sum(recompute.filter((k) => k.postRes)),
    launches: {fwd: fwd.length, bwd: bwd.length, recompute: recompute.length},
  }
}
