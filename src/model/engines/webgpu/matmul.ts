// Tiled fp32 matmul: a 64×64 output tile per workgroup of 256 threads, 4×4 outputs per thread, k in steps of 16
// through workgroup memory. Row-major buffers are bound as they are; the transposed operands of the backward pass
// (A·Bᵀ, Aᵀ·B) only change how a tile is loaded. Split-K (grid z) writes one partial product per split.
// Prologue: GELU applied to A as it is loaded (so the MLP never stores gelu(u)).
// Epilogues: store; add a residual (baseline); multiply by GELU'(u) (MLP backward); the HC/mHC merge
//   out = acc,  x_new[m, i, :] = Σ_j H_res[m, i, j] · x[m, j, :] + H_post[m, i] · acc.
import {BufferRange, Gpu, grid2, KernelSpec, Op} from './gpu.js'

export type Epilogue = 'store' | 'add' | 'geluBwd' | 'merge'
export interface MatmulVariant {
  ta?: boolean // A is stored [K, M] (C = Aᵀ·B)
  tb?: boolean // B is stored [N, K] (C = A·Bᵀ)
  gelu?: boolean // A ← x·σ(1.702x) as it is loaded
  epilogue?: Epilogue
  vec?: boolean // vec4 loads (matmulOp sets it when the shapes allow)
  ns?: number // merge: the number of streams (set by matmulOp from the dims)
}

export const TILE = 64
const BK = 16
const LDS = 65 // padded row of the workgroup tiles (fewer bank conflicts on the transposed loads)

/** The GELU approximation of model.ts, x·σ(1.702x), with σ(z) = 1/(1+e^{−z}). */
export const WGSL_GELU = /* wgsl */ `
fn sigm(z: f32) -> f32 { return 1.0 / (1.0 + exp(-z)); }
fn gelu(x: f32) -> f32 { return x * sigm(x * 1.702); }
fn geluGrad(x: f32) -> f32 { let s = sigm(x * 1.702); return s + x * 1.702 * s * (1.0 - s); }
`

/**
 * One matmul problem as WGSL: its bindings from `first` on (A, B, C, uniform, then the epilogue's), and a function
 * mm<t>(wid, li) that computes the output tile wid (x: column tile, y: row tile, z: split) with the workgroup's 256
 * threads. Identifiers carry the tag t, so two problems can share one shader.
 */
function mmParts(
  v: MatmulVariant,
  t: string,
  first: number,
): {bindings: KernelSpec['bindings']; decls: string; fn: string; name: string} {
  const ep = v.epilogue ?? 'store'
  const vec = Boolean(v.vec)
  const bindings: KernelSpec['bindings'] = ['read', 'read', 'rw', 'uniform']
  const at = (i: number) => `@group(0) @binding(${first + i})`
  let extra = ''
  if (ep === 'add' || ep === 'geluBwd') {
    bindings.push('read')
    extra = `${at(4)} var<storage, read> R${t}: array<f32>;`
  } else if (ep === 'merge') {
    bindings.push('read', 'read', 'rw')
    extra = `${at(4)} var<storage, read> X${t}: array<f32>;
${at(5)} var<storage, read> cst${t}: array<f32>;
${at(6)} var<storage, read_write> Xn${t}: array<f32>;`
  }

  const g = v.gelu ? 'gelu' : ''
  // Global → registers (fetch) and registers → workgroup tiles (store). Consecutive threads read consecutive
  // addresses of the stored layout. Vector path: one vec4 of A and one of B per thread and k-step (needs the row
  // lengths and the contiguous dimension to be multiples of 4).
  let fetch: string
  let store: string
  let regs: string
  if (vec) {
    regs = 'var ra = vec4f(0.0); var rb = vec4f(0.0);'
    const aF = v.ta
      ? `{ let k = k0 + li / 16u; let m = m0 + (li % 16u) * 4u; ra = vec4f(0.0); if (k < ke && m < u.M) { ra = A[(k * u.lda + m) / 4u]; } }`
      : `{ let m = m0 + li / 4u; let k = k0 + (li % 4u) * 4u; ra = vec4f(0.0); if (m < u.M && k < ke) { ra = A[(m * u.lda + k) / 4u]; } }`
    const bF = v.tb
      ? `{ let n = n0 + li / 4u; let k = k0 + (li % 4u) * 4u; rb = vec4f(0.0); if (n < u.N && k < ke) { rb = B[(n * u.ldb + k) / 4u]; } }`
      : `{ let k = k0 + li / 16u; let n = n0 + (li % 16u) * 4u; rb = vec4f(0.0); if (k < ke && n < u.N) { rb = B[(k * u.ldb + n) / 4u]; } }`
    fetch = `${aF}
      ${bF}`
    const aS = v.ta
      ? `{ let kk = li / 16u; let mm = (li % 16u) * 4u; for (var c = 0u; c < 4u; c++) { As[kk * ${LDS}u + mm + c] = ${g}(ra[c]); } }`
      : `{ let mm = li / 4u; let kk = (li % 4u) * 4u; for (var c = 0u; c < 4u; c++) { As[(kk + c) * ${LDS}u + mm] = ${g}(ra[c]); } }`
    const bS = v.tb
      ? `{ let nn = li / 4u; let kk = (li % 4u) * 4u; for (var c = 0u; c < 4u; c++) { Bs[(kk + c) * ${LDS}u + nn] = rb[c]; } }`
      : `{ let kk = li / 16u; let nn = (li % 16u) * 4u; for (var c = 0u; c < 4u; c++) { Bs[kk * ${LDS}u + nn + c] = rb[c]; } }`
    store = `${aS}
      ${bS}`
  } else {
    regs = 'var ra: array<f32, 4>; var rb: array<f32, 4>;'
    const aIdx = v.ta ? 'k * u.lda + m' : 'm * u.lda + k'
    const bIdx = v.tb ? 'n * u.ldb + k' : 'k * u.ldb + n'
    const aMap = v.ta ? 'let mm = i % 64u; let kk = i / 64u;' : 'let kk = i % 16u; let mm = i / 16u;'
    const bMap = v.tb ? 'let kk = i % 16u; let nn = i / 16u;' : 'let nn = i % 64u; let kk = i / 64u;'
    fetch = `for (var e = 0u; e < 4u; e++) {
        let i = li + e * 256u;
        { ${aMap} let m = m0 + mm; let k = k0 + kk; ra[e] = 0.0; if (m < u.M && k < ke) { ra[e] = A[${aIdx}]; } }
        { ${bMap} let n = n0 + nn; let k = k0 + kk; rb[e] = 0.0; if (n < u.N && k < ke) { rb[e] = B[${bIdx}]; } }
      }`
    store = `for (var e = 0u; e < 4u; e++) {
        let i = li + e * 256u;
        { ${aMap} As[kk * ${LDS}u + mm] = ${g}(ra[e]); }
        { ${bMap} Bs[kk * ${LDS}u + nn] = rb[e]; }
      }`
  }

  let out: string
  switch (ep) {
    case 'store': {
      out = 'Cm[wid.z * u.sstride + m * u.ldc + n] = acc;'
      break
    }

    case 'add': {
      out = 'Cm[m * u.ldc + n] = R[m * u.ldr + n] + acc;'
      break
    }

    case 'geluBwd': {
      out = 'Cm[m * u.ldc + n] = acc * geluGrad(R[m * u.ldr + n]);'
      break
    }

    default: {
      // The stream count is a shader constant, so xs stays in registers.
      const ns = v.ns ?? 1
      out = `Cm[m * u.ldc + n] = acc;
        var xs: array<f32, ${ns}>;
        for (var j = 0u; j < ${ns}u; j++) { xs[j] = X[(m * ${ns}u + j) * u.N + n]; }
        let base = m * u.cs;
        for (var i2 = 0u; i2 < ${ns}u; i2++) {
          var s = 0.0;
          for (var j = 0u; j < ${ns}u; j++) { s += cst[base + u.ores + i2 * ${ns}u + j] * xs[j]; }
          Xn[(m * ${ns}u + i2) * u.N + n] = s + cst[base + u.opost + i2] * acc;
        }`
    }
  }

  const T = vec ? 'vec4f' : 'f32'
  const decls = `${at(0)} var<storage, read> A${t}: array<${T}>;
${at(1)} var<storage, read> B${t}: array<${T}>;
${at(2)} var<storage, read_write> Cm${t}: array<f32>;
${at(3)} var<uniform> u${t}: P;
${extra}`
  const fn = /* wgsl */ `
fn mm${t}(wid: vec3u, li: u32) {
  let tx = li % 16u;
  let ty = li / 16u;
  let m0 = wid.y * 64u;
  let n0 = wid.x * 64u;
  let kb = wid.z * u.kc;
  let ke = min(u.K, kb + u.kc);
  var acc0 = vec4f(0.0); var acc1 = vec4f(0.0); var acc2 = vec4f(0.0); var acc3 = vec4f(0.0);
  ${regs}
  {
    let k0 = kb;
    ${fetch}
  }
  for (var k0 = kb; k0 < ke; k0 += 16u) {
    {
      ${store}
    }
    workgroupBarrier();
    if (k0 + 16u < ke) {
      let k0 = k0 + 16u;
      ${fetch}
    }
    for (var kk = 0u; kk < 16u; kk++) {
      let ab = kk * ${LDS}u + ty;
      let bb = kk * ${LDS}u + tx;
      let bv = vec4f(Bs[bb], Bs[bb + 16u], Bs[bb + 32u], Bs[bb + 48u]);
      acc0 = fma(vec4f(As[ab]), bv, acc0);
      acc1 = fma(vec4f(As[ab + 16u]), bv, acc1);
      acc2 = fma(vec4f(As[ab + 32u]), bv, acc2);
      acc3 = fma(vec4f(As[ab + 48u]), bv, acc3);
    }
    workgroupBarrier();
  }
  let accs = array<vec4f, 4>(acc0, acc1, acc2, acc3);
  for (var r = 0u; r < 4u; r++) {
    let m = m0 + ty + 16u * r;
    if (m >= u.M) { continue; }
    for (var c = 0u; c < 4u; c++) {
      let n = n0 + tx + 16u * c;
      if (n < u.N) {
        let acc = accs[r][c];
        ${out}
      }
    }
  }
}
`.replaceAll(/\b(u|A|B|Cm|R|X|cst|Xn)([.[])/g, (_, id, ch) => `${id}${t}${ch}`)
  const name = `${v.ta ? 'T' : 'N'}${v.tb ? 'T' : 'N'}${v.gelu ? '_gelu' : ''}_${ep}${ep === 'merge' ? (v.ns ?? 1) : ''}${vec ? '' : '_scalar'}`
  return {bindings, decls, fn, name}
}

const COMMON = /* wgsl */ `
struct P { M: u32, N: u32, K: u32, lda: u32, ldb: u32, ldc: u32, kc: u32, sstride: u32,
           ldr: u32, ns: u32, cs: u32, opost: u32, ores: u32, gx: u32, gy: u32, gz: u32 }
${WGSL_GELU}
var<workgroup> As: array<f32, ${BK * LDS}>;
var<workgroup> Bs: array<f32, ${BK * LDS}>;
`

export function matmulKernel(v: MatmulVariant): KernelSpec {
  const m = mmParts(v, '0', 0)
  const code = `${COMMON}
${m.decls}
${m.fn}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) { mm0(wid, li); }
`
  return {name: `matmul_${m.name}`, code, bindings: m.bindings}
}

/**
 * Two independent matmuls in one dispatch (the backward's A·Bᵀ for the activations and its Aᵀ·B for the weights,
 * which read the same gradient): the flat workgroup index picks the problem, then its tile.
 */
export function matmulDualKernel(v1: MatmulVariant, v2: MatmulVariant): KernelSpec {
  const m1 = mmParts(v1, '0', 0)
  const m2 = mmParts(v2, '1', m1.bindings.length)
  const code = `${COMMON}
${m1.decls}
${m2.decls}
${m1.fn}
${m2.fn}
fn tile(f: u32, gx: u32, gy: u32) -> vec3u { return vec3u(f % gx, (f / gx) % gy, f / (gx * gy)); }
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u, @builtin(local_invocation_index) li: u32) {
  let f = wid.x + wid.y * nw.x;
  let g0 = u0.gx * u0.gy * u0.gz;
  if (f < g0) { mm0(tile(f, u0.gx, u0.gy), li); }
  else if (f - g0 < u1.gx * u1.gy * u1.gz) { mm1(tile(f - g0, u1.gx, u1.gy), li); }
}
`
  return {name: `matmul2_${m1.name}+${m2.name}`, code, bindings: [...m1.bindings, ...m2.bindings]}
}

export interface MatmulDims {
  M: number
  N: number
  K: number
  lda?: number
  ldb?: number
  ldc?: number // defaults: the dense row length of each stored layout
  split?: number // split-K count (store epilogue only): C holds `split` partial [M, ldc] products back to back
  ldr?: number // row length of R (add, geluBwd)
  ns?: number
  cs?: number
  opost?: number
  ores?: number // merge: streams, cst row length, H_post and H_res columns
}

/** The split-K count that gives about `target` workgroups, keeping at least 64 k per split. */
export function chooseSplit(M: number, N: number, K: number, target = 264): number {
  const tiles = Math.ceil(M / TILE) * Math.ceil(N / TILE)
  let s = Math.max(1, Math.min(Math.ceil(target / tiles), Math.floor(K / 64), 32))
  // Equal k-ranges in multiples of 16.
  while (s > 1 && Math.ceil(Math.ceil(K / s) / 16) * 16 * (s - 1) >= K) s--
  return s
}

/** The uniform, grid and vec4 decision of one matmul problem. */
function problem(
  gpu: Gpu,
  v: MatmulVariant,
  d: MatmulDims,
  a: BufferRange,
  b: BufferRange,
): {v: MatmulVariant; uniform: GPUBuffer; grid: [number, number, number]} {
  const lda = d.lda ?? (v.ta ? d.M : d.K)
  const ldb = d.ldb ?? (v.tb ? d.K : d.N)
  const ldc = d.ldc ?? d.N
  const split = d.split ?? 1
  if (split > 1 && (v.epilogue ?? 'store') !== 'store') throw new Error('split-K needs the store epilogue')
  const kc = Math.ceil(Math.ceil(d.K / split) / 16) * 16
  const grid: [number, number, number] = [Math.ceil(d.N / TILE), Math.ceil(d.M / TILE), split]
  const u = new Uint32Array([
    d.M,
    d.N,
    d.K,
    lda,
    ldb,
    ldc,
    kc,
    d.M * ldc,
    d.ldr ?? d.N,
    d.ns ?? 1,
    d.cs ?? 0,
    d.opost ?? 0,
    d.ores ?? 0,
    ...grid,
  ])
  // vec4 loads: the rows of A and B start at multiples of 4, and the contiguous extent of each is a multiple of 4.
  const vec =
    v.vec ??
    (lda % 4 === 0 &&
      ldb % 4 === 0 &&
      (v.ta ? d.M : d.K) % 4 === 0 &&
      (v.tb ? d.K : d.N) % 4 === 0 &&
      [a, b].every((r) => ('offset' in r ? (r.offset ?? 0) : 0) % 16 === 0))
  const ns = (v.epilogue ?? 'store') === 'merge' ? (d.ns ?? 1) : undefined
  if (ns !== undefined && !(ns >= 1 && ns <= 8)) throw new Error(`merge epilogue: ${ns} streams (1…8)`)
  return {v: {...v, vec, ...(ns === undefined ? {} : {ns})}, uniform: gpu.uniform(u, 'matmul'), grid}
}

/**
 * One matmul op. bindings: A, B, C (+ R for add/geluBwd; + X, cst, Xnew for merge), each a buffer or a range.
 * C = A·B with A [M,K] (or stored [K,M] when ta) and B [K,N] (or stored [N,K] when tb).
 */
export function matmulOp(gpu: Gpu, v: MatmulVariant, d: MatmulDims, bindings: BufferRange[]): Op {
  const [a, b, c, ...rest] = bindings
  const p = problem(gpu, v, d, a, b)
  return gpu.op(matmulKernel(p.v), [a, b, c, p.uniform, ...rest], p.grid)
}

/** Two independent matmuls (see matmulDualKernel) as one op; bindings as for matmulOp, for each problem. */
export function matmulDualOp(
  gpu: Gpu,
  v1: MatmulVariant,
  d1: MatmulDims,
  bind1: BufferRange[],
  v2: MatmulVariant,
  d2: MatmulDims,
  bind2: BufferRange[],
): Op {
  const [a1, b1, c1, ...r1] = bind1
  const [a2, b2, c2, ...r2] = bind2
  const p1 = problem(gpu, v1, d1, a1, b1)
  const p2 = problem(gpu, v2, d2, a2, b2)
  const count = p1.grid.reduce((x, y) => x * y, 1) + p2.grid.reduce((x, y) => x * y, 1)
  return gpu.op(
    matmulDualKernel(p1.v, p2.v),
    [a1, b1, c1, p1.uniform, ...r1, a2, b2, c2, p2.uniform, ...r2],
    grid2(count, gpu.maxGrid),
  )
}
