// The model's own WGSL kernels (everything but the matmul). Shapes are compile-time constants of each shader, so
// loops over C, n, D have fixed bounds and per-thread arrays (attention rows, Sinkhorn matrices) have fixed sizes.
// Every reduction has a fixed order (trees in workgroup memory, tile partials summed by `reduce`): no float atomics,
// the same inputs give the same bits.
//
// Token-tile kernels: a workgroup of 256 threads handles TT tokens, S = 256/TT lanes per token; a lane walks the
// channels c = lane, lane+S, …; per-token sums go through a tree over the lanes.
import {KernelSpec} from './gpu.js'
import {Dims} from './layout.js'

export const TT = 8
export const S = 256 / TT

/** A WGSL f32 literal. */
export function f32(x: number): string {
  if (!Number.isFinite(x)) throw new Error(`not a finite f32 constant: ${x}`)
  const v = Math.fround(x)
  if (v === 0) return '0.0'
  return `${v.toExponential(9)}f`
}

const uconsts = (o: Record<string, number>) =>
  Object.entries(o)
    .map(([k, v]) => `const ${k}: u32 = ${v >>> 0}u;`)
    .join('\n')

/** Lane trees: `lanesum` for one value; `reduce8` for up to 8 values at once in red8[v·256 + li]. */
const LANES = (s: number) => /* wgsl */ `
const SL: u32 = ${s}u;
var<workgroup> red: array<f32, 256>;
var<workgroup> red8: array<f32, 2048>;
fn lanesum(v: f32, li: u32) -> f32 {
  let lane = li % SL;
  red[li] = v;
  workgroupBarrier();
  for (var s = SL / 2u; s > 0u; s >>= 1u) {
    if (lane < s) { red[li] = red[li] + red[li + s]; }
    workgroupBarrier();
  }
  let r = red[li - lane];
  workgroupBarrier();
  return r;
}
fn lanemax(v: f32, li: u32) -> f32 {
  let lane = li % SL;
  red[li] = v;
  workgroupBarrier();
  for (var s = SL / 2u; s > 0u; s >>= 1u) {
    if (lane < s) { red[li] = max(red[li], red[li + s]); }
    workgroupBarrier();
  }
  let r = red[li - lane];
  workgroupBarrier();
  return r;
}
// Sums red8[v·256 + li] over the lanes of each token for all v < 8; the result of token tok is at red8[v·256 + tok·SL].
fn reduce8(li: u32) {
  workgroupBarrier();
  let lane = li % SL;
  for (var s = SL / 2u; s > 0u; s >>= 1u) {
    if (lane < s) { for (var v = 0u; v < 8u; v++) { red8[v * 256u + li] += red8[v * 256u + li + s]; } }
    workgroupBarrier();
  }
}
`

/**
 * tanh to a few ulp without overflow: its Taylor series below |x| = 0.4 (the first neglected term is < 1e−8 relative),
 * (1 − e)/(1 + e) with e = exp(−2|x|) above, where 1 − e no longer cancels. (Builtin tanh may be sinh/cosh, which
 * overflows, and (1 − e)/(1 + e) alone loses ~1e−6 relative near 0, which showed in the HC gradients.)
 */
const TANH = /* wgsl */ `
fn tanh_(x: f32) -> f32 {
  let a = abs(x);
  var t: f32;
  if (a < 0.4) {
    let z = a * a;
    t = a * (1.0 + z * (-0.333333333333 + z * (0.133333333333 + z * (-0.0539682539683 + z * (0.0218694885362
        + z * (-0.00886323552990 + z * 0.00359212803657))))));
  } else {
    let e = exp(-2.0 * a);
    t = (1.0 - e) / (1.0 + e);
  }
  return select(t, -t, x < 0.0);
}
`

/** Whether x is NaN or ±Inf, from its bits (compilers may assume finite floats and fold x != x). */
const FINITE = /* wgsl */ `
fn finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }
`

// ---------------------------------------------------------------------------------------------------------------
// Embedding

// A weight-gradient partial of one token tile: each thread's value wp for channel c, summed over the tile's TT
// tokens in a fixed order and stored at part[tile·stride + c] (reduced over tiles later, deterministically).
const tilePartial = (stride: string) => /* wgsl */ `red[li] = wp;
    workgroupBarrier();
    if (tok == 0u && c < C) {
      var acc = 0.0;
      for (var q = 0u; q < TT; q++) { acc += red[q * SL + lane]; }
      part[tile * ${stride} + c] = acc;
    }
    workgroupBarrier();`

/** X0[t, j, c] = tok_emb[x_t, c] + pos_emb[t mod T, c] for each of the n streams. grid: ceil(N·C/256) (2-D). */
export function embedFwd(d: Dims, tokOff: number, posOff: number): KernelSpec {
  return {
    name: 'embed_fwd',
    bindings: ['read', 'read', 'rw'],
    code: /* wgsl */ `
${uconsts({N: d.N, C: d.C, T: d.T, NS: d.n, V: d.V, TOK: tokOff, POS: posOff})}
@group(0) @binding(0) var<storage, read> batch: array<i32>;
@group(0) @binding(1) var<storage, read> prm: array<f32>;
@group(0) @binding(2) var<storage, read_write> X: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * nw.x) * 256u + li;
  if (i >= N * C) { return; }
  let t = i / C; let c = i % C;
  let tok = min(u32(batch[t]), V - 1u);
  let v = prm[TOK + tok * C + c] + prm[POS + (t % T) * C + c];
  for (var j = 0u; j < NS; j++) { X[(t * NS + j) * C + c] = v; }
}`,
  }
}

export const EMBED_PIECE = 32

/** Batch buffer layout (int32): x | y | positions sorted by token id | start of each id | first piece of each id | pieces. */
export function batchLayout(d: Dims) {
  const pieces = Math.ceil(d.N / EMBED_PIECE) + d.V
  const perm = 2 * d.N
  const start = 3 * d.N
  const pstart = start + d.V + 1
  const prange = pstart + d.V + 1
  return {perm, start, pstart, prange, pieces, size: prange + 2 * pieces}
}

/**
 * Token-embedding gradient, deterministically and without atomics, stage 1: the host lists the positions of each token
 * id (a counting sort of the batch) cut into pieces of at most 32; a thread per (piece, c) sums the stream-summed dX0
 * over its piece into part[piece, c]. bindings: dX0, batch, part (rw). grid: ceil(pieces·C/256).
 */
export function embedBwdPieces(d: Dims): KernelSpec {
  const L = batchLayout(d)
  return {
    name: 'embed_bwd_pieces',
    bindings: ['read', 'read', 'rw'],
    code: /* wgsl */ `
${uconsts({C: d.C, NS: d.n, V: d.V, PERM: L.perm, PSTART: L.pstart, PRANGE: L.prange, PIECES: L.pieces})}
@group(0) @binding(0) var<storage, read> dX: array<f32>;
@group(0) @binding(1) var<storage, read> batch: array<i32>;
@group(0) @binding(2) var<storage, read_write> part: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * nw.x) * 256u + li;
  let p = i / C; let c = i % C;
  if (p >= u32(batch[PSTART + V])) { return; }
  let a = u32(batch[PRANGE + 2u * p]); let b = u32(batch[PRANGE + 2u * p + 1u]);
  var s = 0.0;
  for (var k = a; k < b; k++) {
    let t = u32(batch[PERM + k]);
    for (var j = 0u; j < NS; j++) { s += dX[(t * NS + j) * C + c]; }
  }
  part[p * C + c] = s;
}`,
  }
}

/**
 * Embedding gradients, stage 2: a thread per (token id v, c) adds v's pieces in order; a thread per (position, c)
 * sums the stream-summed dX0 over the batch. bindings: dX0, batch, part, grads (rw). grid: ceil((V+T)·C/256).
 */
export function embedBwd(d: Dims, tokOff: number, posOff: number): KernelSpec {
  const L = batchLayout(d)
  return {
    name: 'embed_bwd',
    bindings: ['read', 'read', 'read', 'rw'],
    code: /* wgsl */ `
${uconsts({N: d.N, C: d.C, T: d.T, B: d.B, NS: d.n, V: d.V, TOK: tokOff, POS: posOff, PSTART: L.pstart})}
@group(0) @binding(0) var<storage, read> dX: array<f32>;
@group(0) @binding(1) var<storage, read> batch: array<i32>;
@group(0) @binding(2) var<storage, read> part: array<f32>;
@group(0) @binding(3) var<storage, read_write> grads: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * nw.x) * 256u + li;
  if (i < V * C) {
    let v = i / C; let c = i % C;
    var s = 0.0;
    for (var p = u32(batch[PSTART + v]); p < u32(batch[PSTART + v + 1u]); p++) { s += part[p * C + c]; }
    grads[TOK + i] = s;
  } else if (i < (V + T) * C) {
    let p = (i - V * C) / C; let c = (i - V * C) % C;
    var s = 0.0;
    for (var b = 0u; b < B; b++) {
      let t = b * T + p;
      for (var j = 0u; j < NS; j++) { s += dX[(t * NS + j) * C + c]; }
    }
    grads[POS + p * C + c] = s;
  }
}`,
  }
}

// ---------------------------------------------------------------------------------------------------------------
// RMSNorm with weight (baseline sublayers, final norm). The input may be n streams, summed first.

/**
 * z[t, :] = s·r·w, s = Σ_j X[t, j, :], r = 1/√(mean(s²) + ε); r goes to rstd[t·RS + RO]. grid: ceil(N/TT).
 * bindings: X, params, z (rw), rstd (rw), {W, RS, RO} (uniform)
 */
export function normFwd(d: Dims, ns: number): KernelSpec {
  return {
    name: 'norm_fwd',
    bindings: ['read', 'read', 'rw', 'rw', 'uniform'],
    code: /* wgsl */ `
${uconsts({N: d.N, C: d.C, NS: ns, TT})}
struct NO { W: u32, RS: u32, RO: u32, p: u32 }
const EPS: f32 = ${f32(d.eps)};
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> prm: array<f32>;
@group(0) @binding(2) var<storage, read_write> z: array<f32>;
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(4) var<uniform> no: NO;
${LANES(S)}
fn sv(t: u32, c: u32) -> f32 {
  var s = 0.0;
  for (var j = 0u; j < NS; j++) { s += X[(t * NS + j) * C + c]; }
  return s;
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u, @builtin(local_invocation_index) li: u32) {
  let t = (wid.x + wid.y * nw.x) * TT + li / SL;
  let lane = li % SL;
  let valid = t < N;
  let tc = min(t, N - 1u);
  var ss = 0.0;
  for (var c = lane; c < C; c += SL) { let v = sv(tc, c); ss += v * v; }
  let r = inverseSqrt(lanesum(ss, li) / f32(C) + EPS);
  if (!valid) { return; }
  for (var c = lane; c < C; c += SL) { z[t * C + c] = sv(t, c) * r * prm[no.W + c]; }
  if (lane == 0u) { rstd[t * no.RS + no.RO] = r; }
}`,
  }
}

/**
 * Backward of normFwd: ds = r·g − (r³/C)·s·Σ(g·s), g = dz·w; dX[t, j, :] = G[t, j, :] + ds for every stream j (G
 * optional: the residual gradient of a baseline sublayer). Tile partials of dw (Σ_t dz·s·r) go to part[tile·C + c].
 * bindings: dz, X, params, rstd, dX (rw), part (rw), {W, RS, RO} (uniform) [, G]. grid: ceil(N/TT).
 */
export function normBwd(d: Dims, ns: number, withG: boolean, post = false): KernelSpec {
  if (post && (withG || ns !== d.n)) throw new Error('normBwd: the merge backward is for the final norm of the streams')
  return {
    name: post ? 'norm_bwd_post' : 'norm_bwd',
    bindings: [
      'read',
      'read',
      'read',
      'read',
      'rw',
      'rw',
      'uniform',
      ...(withG ? ['read' as const] : []),
      ...(post ? (['read', 'read', 'read', 'rw', 'rw'] as const) : []),
    ],
    code: /* wgsl */ `
${uconsts({N: d.N, C: d.C, NS: ns, TT})}
struct NO { W: u32, RS: u32, RO: u32, p: u32 }
@group(0) @binding(0) var<storage, read> dz: array<f32>;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> prm: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> dX: array<f32>;
@group(0) @binding(5) var<storage, read_write> part: array<f32>;
@group(0) @binding(6) var<uniform> no: NO;
${withG ? '@group(0) @binding(7) var<storage, read> G: array<f32>;' : ''}
${post ? `${uconsts({NN: d.n * d.n, CS: d.CS, OPOST: d.oPost, MS: d.MS})}\n${POST_BINDINGS(7)}` : ''}
${LANES(S)}
${post ? POST_BWD : ''}
fn sv(t: u32, c: u32) -> f32 {
  var s = 0.0;
  for (var j = 0u; j < NS; j++) { s += X[(t * NS + j) * C + c]; }
  return s;
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u, @builtin(local_invocation_index) li: u32) {
  let tile = wid.x + wid.y * nw.x;
  let tok = li / SL;
  let t = tile * TT + tok;
  let lane = li % SL;
  let valid = t < N;
  let tc = min(t, N - 1u);
  let r = rstd[tc * no.RS + no.RO];
  var dot = 0.0;
  for (var c = lane; c < C; c += SL) { dot += dz[tc * C + c] * prm[no.W + c] * sv(tc, c); }
  dot = lanesum(dot, li);
  let k = r * r * r / f32(C);
  ${post ? 'var pacc: array<f32, NV>;' : ''}
  for (var c0 = 0u; c0 < C; c0 += SL) {
    let c = c0 + lane;
    var wp = 0.0;
    if (c < C) {
      let s = sv(tc, c);
      let g = dz[tc * C + c];
      let ds = r * (g * prm[no.W + c]) - k * s * dot;
      if (valid) {
        for (var j = 0u; j < NS; j++) {
          let o = (t * NS + j) * C + c;
          ${withG ? 'dX[o] = G[o] + ds;' : 'dX[o] = ds;'}
        }
        wp = g * (s * r);
      }
      ${
        post
          ? `var dxv: array<f32, NS>;
      for (var j = 0u; j < NS; j++) { dxv[j] = ds; }
      postAcc(tc, c, &dxv, &pacc, valid);`
          : ''
      }
    }
    ${tilePartial('C')}
  }
  ${post ? 'postFinish(tc, li, &pacc, valid);' : ''}
}`,
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Cross-entropy

const CE_TT = 4

/**
 * Per row: loss_t = logsumexp(logits_t) − logits_t[y_t] into losses[t]; the logits are overwritten by
 * d(mean loss)/d logits = (softmax − onehot)/N. bindings: logits (rw), batch, losses (rw). grid: ceil(N/4).
 */
export function crossEntropy(d: Dims): KernelSpec {
  return {
    name: 'cross_entropy',
    bindings: ['rw', 'read', 'rw'],
    code: /* wgsl */ `
${uconsts({N: d.N, V: d.V, TT: CE_TT})}
const INVN: f32 = ${f32(1 / d.N)};
@group(0) @binding(0) var<storage, read_write> lg: array<f32>;
@group(0) @binding(1) var<storage, read> batch: array<i32>;
@group(0) @binding(2) var<storage, read_write> losses: array<f32>;
${LANES(256 / CE_TT)}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u, @builtin(local_invocation_index) li: u32) {
  let t = (wid.x + wid.y * nw.x) * TT + li / SL;
  let lane = li % SL;
  let valid = t < N;
  let tc = min(t, N - 1u);
  var mx = -3.0e38;
  for (var v = lane; v < V; v += SL) { mx = max(mx, lg[tc * V + v]); }
  mx = lanemax(mx, li);
  var se = 0.0;
  for (var v = lane; v < V; v += SL) { se += exp(lg[tc * V + v] - mx); }
  se = lanesum(se, li);
  if (!valid) { return; }
  let y = u32(batch[N + t]);
  let lse = mx + log(se);
  for (var v = lane; v < V; v += SL) {
    let l = lg[t * V + v];
    if (v == y) { losses[t] = lse - l; }
    let p = exp(l - mx) / se;
    lg[t * V + v] = (p - select(0.0, 1.0, v == y)) * INVN;
  }
}`,
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Causal attention, one thread per query (forward, dq) or key (dk, dv), reading q|k|v straight from the [N, 3C]
// qkv buffer and writing [N, C] / [N, 3C] layouts. Keys/queries stream through workgroup memory in chunks.

const AQ = 64 // threads (rows) per workgroup

function attnConsts(d: Dims): {code: string; KB: number} {
  const KB = Math.max(1, Math.min(64, Math.floor(2048 / d.D)))
  return {
    KB,
    code: `${uconsts({T: d.T, H: d.H, D: d.D, C: d.C, C3: 3 * d.C, KB, AQ})}
const SCALE: f32 = ${f32(1 / Math.sqrt(d.D))};`,
  }
}

// The workgroup's threads copy KB keys and values of head h (from key k0 on, zeros past T) into workgroup memory.
const kvTile = (ks: string, vs: string) => /* wgsl */ `for (var e = li; e < KB * D; e += AQ) {
      let key = k0 + e / D;
      var kv = 0.0; var vv = 0.0;
      if (key < T) { let o = (b * T + key) * C3 + h * D + e % D; kv = qkv[o + C]; vv = qkv[o + 2u * C]; }
      ${ks}[e] = kv; ${vs}[e] = vv;
    }`

/** y = softmax(q·kᵀ/√D + causal mask)·v; lse[bh·T + i] kept for the backward. bindings: qkv, y (rw), lse (rw). grid: (ceil(T/64), B·H). */
export function attnFwd(d: Dims): KernelSpec {
  const {code: consts} = attnConsts(d)
  return {
    name: 'attn_fwd',
    bindings: ['read', 'rw', 'rw'],
    code: /* wgsl */ `
${consts}
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
var<workgroup> Ks: array<f32, ${attnConsts(d).KB * d.D}>;
var<workgroup> Vs: array<f32, ${attnConsts(d).KB * d.D}>;
@compute @workgroup_size(${AQ})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) {
  let bh = wid.y; let b = bh / H; let h = bh % H;
  let qi = wid.x * AQ + li;
  let valid = qi < T;
  let row = b * T + min(qi, T - 1u);
  var q: array<f32, D>;
  var acc: array<f32, D>;
  for (var e = 0u; e < D; e++) { q[e] = qkv[row * C3 + h * D + e]; }
  var mx = -1.0e30;
  var l = 0.0;
  let kend = min(T, (wid.x + 1u) * AQ);
  for (var k0 = 0u; k0 < kend; k0 += KB) {
    ${kvTile('Ks', 'Vs')}
    workgroupBarrier();
    for (var j = 0u; j < KB; j++) {
      if (!valid || k0 + j > qi) { break; }
      var s = 0.0;
      for (var e = 0u; e < D; e++) { s += q[e] * Ks[j * D + e]; }
      s = s * SCALE;
      if (s > mx) {
        let corr = exp(mx - s);
        l = l * corr;
        for (var e = 0u; e < D; e++) { acc[e] = acc[e] * corr; }
        mx = s;
      }
      let p = exp(s - mx);
      l += p;
      for (var e = 0u; e < D; e++) { acc[e] += p * Vs[j * D + e]; }
    }
    workgroupBarrier();
  }
  if (!valid) { return; }
  for (var e = 0u; e < D; e++) { y[row * C + h * D + e] = acc[e] / l; }
  lse[bh * T + qi] = mx + log(l);
}`,
  }
}

/**
 * Attention backward in one dispatch: grid z = 0, a thread per query:
 *   dq_i = (1/√D) Σ_{j≤i} p_ij (dy_i·v_j − Δ_i) k_j,   p_ij = exp(s_ij − lse_i),  Δ_i = dy_i·y_i;
 * z = 1, a thread per key:
 *   dk_j = (1/√D) Σ_{i≥j} p_ij (dy_i·v_j − Δ_i) q_i,   dv_j = Σ_{i≥j} p_ij dy_i
 * (Δ_i recomputed as query chunks are loaded, so the two halves are independent).
 * bindings: qkv, y, dy, lse, dqkv (rw). grid: (ceil(T/64), B·H, 2).
 */
export function attnBwd(d: Dims): KernelSpec {
  const {code: consts, KB} = attnConsts(d)
  return {
    name: 'attn_bwd',
    bindings: ['read', 'read', 'read', 'read', 'rw'],
    code: /* wgsl */ `
${consts}
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read_write> dqkv: array<f32>;
var<workgroup> S1: array<f32, ${KB * d.D}>;
var<workgroup> S2: array<f32, ${KB * d.D}>;
var<workgroup> L1: array<f32, ${KB}>;
var<workgroup> L2: array<f32, ${KB}>;

fn dq(wx: u32, bh: u32, li: u32) {
  let b = bh / H; let h = bh % H;
  let qi = wx * AQ + li;
  let valid = qi < T;
  let row = b * T + min(qi, T - 1u);
  var q: array<f32, D>;
  var g: array<f32, D>;
  var acc: array<f32, D>;
  var dl = 0.0;
  for (var e = 0u; e < D; e++) {
    q[e] = qkv[row * C3 + h * D + e];
    g[e] = dy[row * C + h * D + e];
    dl += g[e] * y[row * C + h * D + e];
  }
  let ls = lse[bh * T + min(qi, T - 1u)];
  let kend = min(T, (wx + 1u) * AQ);
  for (var k0 = 0u; k0 < kend; k0 += KB) {
    ${kvTile('S1', 'S2')}
    workgroupBarrier();
    for (var j = 0u; j < KB; j++) {
      if (!valid || k0 + j > qi) { break; }
      var s = 0.0; var dp = 0.0;
      for (var e = 0u; e < D; e++) { s += q[e] * S1[j * D + e]; dp += g[e] * S2[j * D + e]; }
      let p = exp(s * SCALE - ls);
      let ds = p * (dp - dl);
      for (var e = 0u; e < D; e++) { acc[e] += ds * S1[j * D + e]; }
    }
    workgroupBarrier();
  }
  if (!valid) { return; }
  for (var e = 0u; e < D; e++) { dqkv[row * C3 + h * D + e] = acc[e] * SCALE; }
}

fn dkv(wx: u32, bh: u32, li: u32) {
  let b = bh / H; let h = bh % H;
  let kj = wx * AQ + li;
  let valid = kj < T;
  let row = b * T + min(kj, T - 1u);
  var k: array<f32, D>;
  var v: array<f32, D>;
  var dk: array<f32, D>;
  var dv: array<f32, D>;
  for (var e = 0u; e < D; e++) { k[e] = qkv[row * C3 + C + h * D + e]; v[e] = qkv[row * C3 + 2u * C + h * D + e]; }
  for (var q0 = wx * AQ; q0 < T; q0 += KB) {
    for (var e = li; e < KB * D; e += AQ) {
      let qi = q0 + e / D;
      var qv = 0.0; var gv = 0.0;
      if (qi < T) { qv = qkv[(b * T + qi) * C3 + h * D + e % D]; gv = dy[(b * T + qi) * C + h * D + e % D]; }
      S1[e] = qv; S2[e] = gv;
    }
    for (var e = li; e < KB; e += AQ) {
      let r = b * T + min(q0 + e, T - 1u);
      var dl = 0.0;
      for (var x = 0u; x < D; x++) { dl += dy[r * C + h * D + x] * y[r * C + h * D + x]; }
      L1[e] = lse[bh * T + min(q0 + e, T - 1u)]; L2[e] = dl;
    }
    workgroupBarrier();
    for (var i = 0u; i < KB; i++) {
      let qi = q0 + i;
      if (valid && qi >= kj && qi < T) {
        var s = 0.0; var dp = 0.0;
        for (var e = 0u; e < D; e++) { s += S1[i * D + e] * k[e]; dp += S2[i * D + e] * v[e]; }
        let p = exp(s * SCALE - L1[i]);
        let ds = p * (dp - L2[i]);
        for (var e = 0u; e < D; e++) { dv[e] += p * S2[i * D + e]; dk[e] += ds * S1[i * D + e]; }
      }
    }
    workgroupBarrier();
  }
  if (!valid) { return; }
  for (var e = 0u; e < D; e++) {
    dqkv[row * C3 + C + h * D + e] = dk[e] * SCALE;
    dqkv[row * C3 + 2u * C + h * D + e] = dv[e];
  }
}

@compute @workgroup_size(${AQ})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) {
  if (wid.z == 0u) { dq(wid.x, wid.y, li); } else { dkv(wid.x, wid.y, li); }
}`,
  }
}

// ---------------------------------------------------------------------------------------------------------------
// HC / mHC connections

export interface ConnOffsets {
  W: number
  APRE: number
  APOST: number
  ARES: number
  BPRE: number
  BPOST: number
  BRES: number
  NW: number
}

/**
 * Per-connection parameter offsets (and the Sinkhorn loop counts) come from a small uniform, so every connection of
 * a model shares one pipeline. The uniform is the op's last binding.
 */
function connConsts(d: Dims, binding: number): string {
  return `${uconsts({
    N: d.N,
    C: d.C,
    NS: d.n,
    NN: d.n * d.n,
    R: d.R,
    K: d.K,
    Q: d.Q,
    P: d.P,
    MS: d.MS,
    CS: d.CS,
    OPRE: d.oPre,
    OPOST: d.oPost,
    ORES: d.oRes,
    OPROJ: d.oProj,
    ORX: d.oRX,
    ORH: d.oRH,
    AB: d.AB,
    TT,
  })}
const EPS: f32 = ${f32(d.eps)};
const HC: bool = ${d.arch === 'hc'};
struct Off { W: u32, APRE: u32, APOST: u32, ARES: u32, BPRE: u32, BPOST: u32, BRES: u32, NW: u32, ITERS: u32, SKE: u32, prev: u32, p1: u32 }
@group(0) @binding(${binding}) var<uniform> o: Off;`
}

/** The uniform of connConsts: offsets of connection l's parameters and of its sublayer's norm weight. */
export function connUniform(o: ConnOffsets, iters: number, skEvery = 1, prev = false): Uint32Array {
  return new Uint32Array([o.W, o.APRE, o.APOST, o.ARES, o.BPRE, o.BPOST, o.BRES, o.NW, iters, skEvery, prev ? 1 : 0, 0])
}

/**
 * The backward of the merge of connection l−1 (x_l = H_res·x_{l−1} + H_post ⊗ out), accumulated per lane while the
 * kernel that produces dx_l[t, ·, c] (in dxv) walks the channels: dOut[c] = Σ_i H_post[i]·dx_l[i, c],
 * dH_post[i] += dx_l[i, c]·out[c], dH_res[i, j] += dx_l[i, c]·x_{l−1}[j, c]. Uses bindings outP, XP, cstP (read),
 * dOut, dHP (rw) and the lanes' reduce8; call postAcc per channel, then postFinish (all threads) once.
 */
const POST_BWD = /* wgsl */ `
const NV: u32 = NS + NN;
fn postAcc(t: u32, c: u32, dxv: ptr<function, array<f32, NS>>, acc: ptr<function, array<f32, NV>>, write: bool) {
  var s = 0.0;
  for (var i = 0u; i < NS; i++) { s += cstP[t * CS + OPOST + i] * (*dxv)[i]; }
  if (write) { dOut[t * C + c] = s; }
  let ov = outP[t * C + c];
  for (var i = 0u; i < NS; i++) { (*acc)[i] += (*dxv)[i] * ov; }
  for (var j = 0u; j < NS; j++) {
    let xv = XP[(t * NS + j) * C + c];
    for (var i = 0u; i < NS; i++) { (*acc)[NS + i * NS + j] += (*dxv)[i] * xv; }
  }
}
fn postFinish(t: u32, li: u32, acc: ptr<function, array<f32, NV>>, write: bool) {
  let lane = li % SL;
  let tok = li / SL;
  for (var v0 = 0u; v0 < NV; v0 += 8u) {
    for (var v = 0u; v < 8u; v++) { var x = 0.0; if (v0 + v < NV) { x = (*acc)[v0 + v]; } red8[v * 256u + li] = x; }
    reduce8(li);
    if (write && lane < 8u && v0 + lane < NV) { dHP[t * MS + OPOST + v0 + lane] = red8[lane * 256u + tok * SL]; }
    workgroupBarrier();
  }
}
`
const POST_BINDINGS = (first: number) => `
@group(0) @binding(${first}) var<storage, read> outP: array<f32>;
@group(0) @binding(${first + 1}) var<storage, read> XP: array<f32>;
@group(0) @binding(${first + 2}) var<storage, read> cstP: array<f32>;
@group(0) @binding(${first + 3}) var<storage, read_write> dOut: array<f32>;
@group(0) @binding(${first + 4}) var<storage, read_write> dHP: array<f32>;`

/**
 * Sinkhorn-Knopp with a lane per row: lanes i < n of each token's lanes hold row i of its n×n matrix in registers and
 * swap rows through workgroup memory (double-buffered, so one barrier per exchange). Every thread of the workgroup
 * must call these (they contain barriers); `e` counts exchanges to pick the buffer. The operations and their order
 * are those of kernels.ts/model.ts: per column c_j = Σ_i m_ij, m_ij / c_j; then per row r_i = Σ_j a_ij, a_ij / r_i.
 */
const SK_PAR = /* wgsl */ `
var<workgroup> skx: array<f32, ${2} * TT * NN>;
var<workgroup> skz: array<f32, TT * NN>;
// Publishes row i of token tok, then returns the column sums of what all rows published.
fn skColSums(tok: u32, i: u32, v: ptr<function, array<f32, NS>>, e: ptr<function, u32>) -> array<f32, NS> {
  let base = (*e % 2u) * TT * NN + tok * NN;
  *e = *e + 1u;
  if (i < NS) { for (var j = 0u; j < NS; j++) { skx[base + i * NS + j] = (*v)[j]; } }
  workgroupBarrier();
  var c: array<f32, NS>;
  for (var j = 0u; j < NS; j++) {
    var s = 0.0;
    for (var q = 0u; q < NS; q++) { s += skx[base + q * NS + j]; }
    c[j] = s;
  }
  return c;
}
fn skIterPar(tok: u32, i: u32, row: ptr<function, array<f32, NS>>, e: ptr<function, u32>) {
  let c = skColSums(tok, i, row, e);
  for (var j = 0u; j < NS; j++) { (*row)[j] = (*row)[j] / c[j]; }
  var r = 0.0;
  for (var j = 0u; j < NS; j++) { r += (*row)[j]; }
  for (var j = 0u; j < NS; j++) { (*row)[j] = (*row)[j] / r; }
}
// M0 row i = exp(max(z_i· − max z, −80)) for the logits of token tok in skz.
fn skInitPar(tok: u32, i: u32) -> array<f32, NS> {
  var mx = skz[tok * NN];
  for (var k = 1u; k < NN; k++) { mx = max(mx, skz[tok * NN + k]); }
  var row: array<f32, NS>;
  let ii = min(i, NS - 1u);
  for (var j = 0u; j < NS; j++) { row[j] = exp(max(skz[tok * NN + ii * NS + j] - mx, -80.0)); }
  return row;
}
`

const KC = 32 // k chunk of the map projection

/**
 * Forward of one connection's maps and the sublayer input: for a tile of TT tokens,
 *  1. proj = (rows of x)·W for the R rows of length K per token, with the rows' sums of squares;
 *  2. per token: rstd of each row, proj·rstd, the maps (hc: α·tanh + b; mhc: σ, 2σ, Sinkhorn-Knopp);
 *  3. h = Σ_j H_pre[j]·x_j and a = RMSNorm(h)·w, the sublayer's input.
 * bindings: X [N, n, C], params, cst (rw) [N, CS], a (rw) [N, C]. grid: ceil(N/TT).
 */
export function connFwd(d: Dims): KernelSpec {
  const RT = TT * d.R
  const OPT = Math.ceil((RT * d.Q) / 256)
  return {
    name: `conn_fwd_${d.arch}`,
    bindings: ['read', 'read', 'rw', 'rw', 'uniform'],
    code: /* wgsl */ `
${connConsts(d, 4)}
const RT: u32 = ${RT}u;
const KC: u32 = ${KC}u;
const OPT: u32 = ${OPT}u;
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> prm: array<f32>;
@group(0) @binding(2) var<storage, read_write> cst: array<f32>;
@group(0) @binding(3) var<storage, read_write> a: array<f32>;
${LANES(S)}
${TANH}
${SK_PAR}
fn sigm(z: f32) -> f32 { return 1.0 / (1.0 + exp(-z)); }
var<workgroup> Xs: array<f32, ${RT * KC}>;
var<workgroup> Ws: array<f32, ${KC * d.Q}>;
var<workgroup> pj: array<f32, ${RT * d.Q}>;
var<workgroup> ssq: array<f32, ${RT}>;
var<workgroup> hp: array<f32, ${TT * d.n}>;
const XE: u32 = ${Math.ceil((RT * KC) / 256)}u;
const WE: u32 = ${Math.ceil((KC * d.Q) / 256)}u;
// Element e of the chunk at k0: of the tile's rows (row e / KC), of W (row e / Q); zero outside.
fn xAt(t0: u32, k0: u32, e: u32) -> f32 {
  let row = e / KC; let k = k0 + e % KC;
  if (e < RT * KC && t0 * R + row < N * R && k < K) { return X[(t0 * R + row) * K + k]; }
  return 0.0;
}
fn wAt(k0: u32, e: u32) -> f32 {
  let k = k0 + e / Q;
  if (e < KC * Q && k < K) { return prm[o.W + k * Q + e % Q]; }
  return 0.0;
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u, @builtin(local_invocation_index) li: u32) {
  let t0 = (wid.x + wid.y * nw.x) * TT;
  // 1. projection of the tile's rows (row-major [N·R, K] view of X); the next chunk is fetched into registers while
  //    the current one is used
  var acc: array<f32, OPT>;
  var ss = 0.0;
  var rx: array<f32, XE>;
  var rw: array<f32, WE>;
  for (var u = 0u; u < XE; u++) { rx[u] = xAt(t0, 0u, li + u * 256u); }
  for (var u = 0u; u < WE; u++) { rw[u] = wAt(0u, li + u * 256u); }
  for (var k0 = 0u; k0 < K; k0 += KC) {
    for (var u = 0u; u < XE; u++) { let e = li + u * 256u; if (e < RT * KC) { Xs[e] = rx[u]; } }
    for (var u = 0u; u < WE; u++) { let e = li + u * 256u; if (e < KC * Q) { Ws[e] = rw[u]; } }
    workgroupBarrier();
    if (k0 + KC < K) {
      for (var u = 0u; u < XE; u++) { rx[u] = xAt(t0, k0 + KC, li + u * 256u); }
      for (var u = 0u; u < WE; u++) { rw[u] = wAt(k0 + KC, li + u * 256u); }
    }
    if (li < RT) { for (var kk = 0u; kk < KC; kk++) { let v = Xs[li * KC + kk]; ss += v * v; } }
    for (var u = 0u; u < OPT; u++) {
      let oi = li + u * 256u;
      if (oi < RT * Q) {
        let row = oi / Q; let q = oi % Q;
        var s = acc[u];
        for (var kk = 0u; kk < KC; kk++) { s += Xs[row * KC + kk] * Ws[kk * Q + q]; }
        acc[u] = s;
      }
    }
    workgroupBarrier();
  }
  if (li < RT) { ssq[li] = ss; }
  for (var u = 0u; u < OPT; u++) { let oi = li + u * 256u; if (oi < RT * Q) { pj[oi] = acc[u]; } }
  workgroupBarrier();
  // 2. the maps, one thread per token (mhc: the Sinkhorn-Knopp iterations then run a lane per row)
  if (li < TT && t0 + li >= N) { for (var k = 0u; k < NN; k++) { skz[li * NN + k] = 0.0; } }
  if (li < TT && t0 + li < N) {
    let t = t0 + li;
    let base = t * CS;
    var pv: array<f32, P>;
    for (var r = 0u; r < R; r++) {
      let rs = inverseSqrt(ssq[li * R + r] / f32(K) + EPS);
      cst[base + ORX + r] = rs;
      for (var q = 0u; q < Q; q++) {
        let v = pj[(li * R + r) * Q + q] * rs;
        pv[r * Q + q] = v;
        cst[base + OPROJ + r * Q + q] = v;
      }
    }
    let apre = prm[o.APRE]; let apost = prm[o.APOST]; let ares = prm[o.ARES];
    if (HC) {
      for (var j = 0u; j < NS; j++) {
        let hpre = apre * tanh_(pv[j * Q]) + prm[o.BPRE + j];
        hp[li * NS + j] = hpre;
        cst[base + OPRE + j] = hpre;
        cst[base + OPOST + j] = apost * tanh_(pv[j * Q + 1u]) + prm[o.BPOST + j];
        for (var i = 0u; i < NS; i++) {
          cst[base + ORES + i * NS + j] = ares * tanh_(pv[j * Q + 2u + i]) + prm[o.BRES + i * NS + j];
        }
      }
    } else {
      for (var j = 0u; j < NS; j++) {
        let hpre = sigm(apre * pv[j] + prm[o.BPRE + j]);
        hp[li * NS + j] = hpre;
        cst[base + OPRE + j] = hpre;
        cst[base + OPOST + j] = 2.0 * sigm(apost * pv[NS + j] + prm[o.BPOST + j]);
      }
      for (var k = 0u; k < NN; k++) { skz[li * NN + k] = ares * pv[2u * NS + k] + prm[o.BRES + k]; }
    }
  }
  workgroupBarrier();
  let tok = li / SL;
  let lane = li % SL;
  let t = t0 + tok;
  let tc = min(t, N - 1u);
  if (!HC) {
    // H_res = Sinkhorn-Knopp(z), a lane per row
    var row = skInitPar(tok, lane);
    var e = 0u;
    for (var it = 0u; it < o.ITERS; it++) { skIterPar(tok, lane, &row, &e); }
    if (t < N && lane < NS) { for (var j = 0u; j < NS; j++) { cst[t * CS + ORES + lane * NS + j] = row[j]; } }
  }
  // 3. h = Σ_j H_pre[j] x_j, a = RMSNorm(h)·w
  var sh = 0.0;
  for (var c = lane; c < C; c += SL) {
    var h = 0.0;
    for (var j = 0u; j < NS; j++) { h += X[(tc * NS + j) * C + c] * hp[tok * NS + j]; }
    sh += h * h;
  }
  let rh = inverseSqrt(lanesum(sh, li) / f32(C) + EPS);
  if (t >= N) { return; }
  for (var c = lane; c < C; c += SL) {
    var h = 0.0;
    for (var j = 0u; j < NS; j++) { h += X[(t * NS + j) * C + c] * hp[tok * NS + j]; }
    a[t * C + c] = h * rh * prm[o.NW + c];
  }
  if (lane == 0u) { cst[t * CS + ORH] = rh; }
}`,
  }
}

/**
 * Backward of connFwd and of the pre/res paths, given G = dx_{l+1}, da = d(sublayer input a) and dH (dH_post,
 * dH_res: written by the POST_BWD pass of the kernel above it, connection l+1 or the final norm). Per tile of TT tokens:
 *  1. recompute h, then dh = RMSNorm backward (tile partial of dw), dH_pre[j] = Σ_c dh[c]·x_j[c];
 *  2. per token: d(maps) → d(proj) (hc: tanh'; mhc: σ', Sinkhorn-Knopp backward recomputing its iterations), tile
 *     partials of dα, db; gq = rstd·dproj for dW = Xᵀ·gq (a matmul), and the row-norm term s;
 *  3. dx_l[j, c] = Σ_i H_res[i, j]·G[i, c] + H_pre[j]·dh[c] + Σ_q gq[q]·W[k, q] + s·x_l[j, c].
 * part row (per tile): [dw (C) | dα_pre, dα_post, dα_res | db_pre (n) | db_post (n) | db_res (n²)].
 * With o.prev = 1, the same pass over dx_l also does the merge backward of connection l−1 (POST_BWD): dOut and
 * dH for the sublayer below, so the backward needs no separate kernel for it.
 * bindings: G, da, X, cst, params, dH, dX (rw), gq (rw) [N·R, Q], part (rw), skm (rw; mhc Sinkhorn trace),
 * uniform, outP, XP, cstP, dOut (rw), dHP (rw) (connection l−1's; any unaliased buffers when o.prev = 0).
 * grid: ceil(N/TT).
 */
export function connBwd(d: Dims): KernelSpec {
  const PW = d.C + d.AB
  return {
    name: `conn_bwd_${d.arch}`,
    bindings: [
      'read',
      'read',
      'read',
      'read',
      'read',
      'read',
      'rw',
      'rw',
      'rw',
      'rw',
      'uniform',
      'read',
      'read',
      'read',
      'rw',
      'rw',
    ],
    code: /* wgsl */ `
${connConsts(d, 10)}
${uconsts({PW})}
@group(0) @binding(0) var<storage, read> G: array<f32>;
@group(0) @binding(1) var<storage, read> da: array<f32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read> cst: array<f32>;
@group(0) @binding(4) var<storage, read> prm: array<f32>;
@group(0) @binding(5) var<storage, read> dH: array<f32>;
@group(0) @binding(6) var<storage, read_write> dX: array<f32>;
@group(0) @binding(7) var<storage, read_write> gq: array<f32>;
@group(0) @binding(8) var<storage, read_write> part: array<f32>;
@group(0) @binding(9) var<storage, read_write> skm: array<f32>;
${POST_BINDINGS(11)}
${LANES(S)}
${TANH}
${SK_PAR}
${POST_BWD}
var<workgroup> dhp: array<f32, ${TT * d.n}>;
var<workgroup> gs: array<f32, ${TT * d.P}>;
var<workgroup> srow: array<f32, ${TT * d.R}>;
var<workgroup> abs_: array<f32, ${TT * d.AB}>;

// d(logits) of Sinkhorn-Knopp for the token whose logits are in skz, given d(output) row i in dd (overwritten with
// the result), a lane per row. The iterates are recomputed and kept (every SKE-th) in skm, [slot][k][token].
// Tokens past N (the last tile's padding) compute on a copy of token N−1 and store no trace.
fn skBackwardPar(tok: u32, i: u32, t: u32, valid: bool, dd: ptr<function, array<f32, NS>>) {
  let ii = min(i, NS - 1u);
  let m0 = skInitPar(tok, i);
  var m = m0;
  var e = 0u;
  for (var it = 0u; it < o.ITERS; it++) {
    if (it % o.SKE == 0u && i < NS && valid) { for (var j = 0u; j < NS; j++) { skm[((it / o.SKE) * NN + ii * NS + j) * N + t] = m[j]; } }
    skIterPar(tok, i, &m, &e);
  }
  for (var it1 = o.ITERS; it1 > 0u; it1--) {
    let it = it1 - 1u;
    for (var j = 0u; j < NS; j++) { m[j] = skm[((it / o.SKE) * NN + ii * NS + j) * N + t]; }
    for (var s = 0u; s < it % o.SKE; s++) { skIterPar(tok, i, &m, &e); }
    // a = m / colsum(m), b = a / rowsum(a)
    let c = skColSums(tok, i, &m, &e);
    var a: array<f32, NS>;
    var r = 0.0;
    for (var j = 0u; j < NS; j++) { a[j] = m[j] / c[j]; r += a[j]; }
    // rows: da_ij = (db_ij − Σ_j' db_ij' b_ij') / r_i
    var dot = 0.0;
    for (var j = 0u; j < NS; j++) { dot += (*dd)[j] * (a[j] / r); }
    var p: array<f32, NS>;
    for (var j = 0u; j < NS; j++) { (*dd)[j] = ((*dd)[j] - dot) / r; p[j] = (*dd)[j] * a[j]; }
    // columns: dm_ij = (da_ij − Σ_i' da_i'j a_i'j) / c_j
    let cd = skColSums(tok, i, &p, &e);
    for (var j = 0u; j < NS; j++) { (*dd)[j] = ((*dd)[j] - cd[j]) / c[j]; }
  }
  var mx = skz[tok * NN];
  for (var k = 1u; k < NN; k++) { mx = max(mx, skz[tok * NN + k]); }
  for (var j = 0u; j < NS; j++) { (*dd)[j] = select(0.0, (*dd)[j] * m0[j], skz[tok * NN + ii * NS + j] - mx > -80.0); }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u, @builtin(local_invocation_index) li: u32) {
  let tile = wid.x + wid.y * nw.x;
  let t0 = tile * TT;
  let tok = li / SL;
  let lane = li % SL;
  let t = t0 + tok;
  let valid = t < N;
  let tc = min(t, N - 1u);
  var hpre: array<f32, NS>;
  for (var j = 0u; j < NS; j++) { hpre[j] = cst[tc * CS + OPRE + j]; }
  let rh = cst[tc * CS + ORH];
  // 1. RMSNorm backward of the sublayer input and dH_pre
  var dot = 0.0;
  for (var c = lane; c < C; c += SL) {
    var h = 0.0;
    for (var j = 0u; j < NS; j++) { h += X[(tc * NS + j) * C + c] * hpre[j]; }
    dot += da[tc * C + c] * prm[o.NW + c] * h;
  }
  dot = lanesum(dot, li);
  let kr = rh * rh * rh / f32(C);
  var dpre: array<f32, NS>;
  for (var c0 = 0u; c0 < C; c0 += SL) {
    let c = c0 + lane;
    var wp = 0.0;
    if (c < C) {
      var xs: array<f32, NS>;
      var h = 0.0;
      for (var j = 0u; j < NS; j++) { xs[j] = X[(tc * NS + j) * C + c]; h += xs[j] * hpre[j]; }
      let g = da[tc * C + c];
      let dh = rh * (g * prm[o.NW + c]) - kr * h * dot;
      for (var j = 0u; j < NS; j++) { dpre[j] += dh * xs[j]; }
      if (valid) { wp = g * (h * rh); }
    }
    ${tilePartial('PW')}
  }
  for (var v = 0u; v < 8u; v++) { var x = 0.0; if (v < NS) { x = dpre[v]; } red8[v * 256u + li] = x; }
  reduce8(li);
  if (lane < NS) { dhp[tok * NS + lane] = red8[lane * 256u + tok * SL]; }
  workgroupBarrier();
  // 2. maps backward: per token on one thread, except mHC's Sinkhorn-Knopp backward (a lane per row)
  var ab: array<f32, AB>;
  var dp: array<f32, P>;
  let t2 = min(t0 + li, N - 1u); // the token of thread li < TT
  let base2 = t2 * CS;
  if (li < TT) {
    let apre = prm[o.APRE]; let apost = prm[o.APOST]; let ares = prm[o.ARES];
    if (HC) {
      for (var j = 0u; j < NS; j++) {
        let d0 = dhp[li * NS + j];
        let th0 = tanh_(cst[base2 + OPROJ + j * Q]);
        dp[j * Q] = (d0 * apre) * (1.0 - th0 * th0);
        ab[0] += d0 * th0;
        ab[3u + j] = d0;
        let d1 = dH[t2 * MS + OPOST + j];
        let th1 = tanh_(cst[base2 + OPROJ + j * Q + 1u]);
        dp[j * Q + 1u] = (d1 * apost) * (1.0 - th1 * th1);
        ab[1] += d1 * th1;
        ab[3u + NS + j] = d1;
        for (var i = 0u; i < NS; i++) {
          let d2 = dH[t2 * MS + ORES + i * NS + j];
          let th2 = tanh_(cst[base2 + OPROJ + j * Q + 2u + i]);
          dp[j * Q + 2u + i] = (d2 * ares) * (1.0 - th2 * th2);
          ab[2] += d2 * th2;
          ab[3u + 2u * NS + i * NS + j] = d2;
        }
      }
    } else {
      for (var j = 0u; j < NS; j++) {
        let hp = cst[base2 + OPRE + j];
        let dl = dhp[li * NS + j] * hp * (1.0 - hp);
        dp[j] = dl * apre;
        ab[0] += dl * cst[base2 + OPROJ + j];
        ab[3u + j] = dl;
        let s = cst[base2 + OPOST + j] * 0.5;
        let dl2 = (2.0 * dH[t2 * MS + OPOST + j]) * s * (1.0 - s);
        dp[NS + j] = dl2 * apost;
        ab[1] += dl2 * cst[base2 + OPROJ + NS + j];
        ab[3u + NS + j] = dl2;
      }
      for (var k = 0u; k < NN; k++) { skz[li * NN + k] = ares * cst[base2 + OPROJ + 2u * NS + k] + prm[o.BRES + k]; }
    }
  }
  if (!HC) {
    workgroupBarrier();
    var dd: array<f32, NS>;
    let ii = min(lane, NS - 1u);
    for (var j = 0u; j < NS; j++) { dd[j] = dH[tc * MS + ORES + ii * NS + j]; }
    skBackwardPar(tok, lane, tc, valid, &dd);
    workgroupBarrier(); // all reads of skx done: reuse it for the result
    if (lane < NS) { for (var j = 0u; j < NS; j++) { skx[tok * NN + lane * NS + j] = dd[j]; } }
    workgroupBarrier();
    if (li < TT) {
      let ares = prm[o.ARES];
      for (var k = 0u; k < NN; k++) {
        let g = skx[li * NN + k];
        dp[2u * NS + k] = g * ares;
        ab[2] += g * cst[base2 + OPROJ + 2u * NS + k];
        ab[3u + 2u * NS + k] = g;
      }
    }
  }
  if (li < TT) {
    let tv = t0 + li < N;
    for (var r = 0u; r < R; r++) {
      let rs = cst[base2 + ORX + r];
      var sp = 0.0;
      for (var q = 0u; q < Q; q++) {
        let v = dp[r * Q + q];
        sp += v * cst[base2 + OPROJ + r * Q + q];
        let g = rs * v;
        gs[li * P + r * Q + q] = g;
        if (tv) { gq[(t2 * R + r) * Q + q] = g; }
      }
      srow[li * R + r] = -(rs * rs / f32(K)) * sp;
    }
    for (var v = 0u; v < AB; v++) { abs_[li * AB + v] = select(0.0, ab[v], tv); }
  }
  workgroupBarrier();
  if (li < AB) {
    var acc = 0.0;
    for (var q = 0u; q < TT; q++) { acc += abs_[q * AB + li]; }
    part[tile * PW + C + li] = acc;
  }
  // 3. dx_l (and, with o.prev, the merge backward of connection l − 1)
  var hres: array<f32, NN>;
  for (var k = 0u; k < NN; k++) { hres[k] = cst[tc * CS + ORES + k]; }
  var acc: array<f32, NV>;
  for (var c = lane; c < C; c += SL) {
    var xs: array<f32, NS>;
    var gv: array<f32, NS>;
    var dxv: array<f32, NS>;
    var h = 0.0;
    for (var j = 0u; j < NS; j++) {
      xs[j] = X[(tc * NS + j) * C + c]; h += xs[j] * hpre[j];
      gv[j] = G[(tc * NS + j) * C + c];
    }
    let dh = rh * (da[tc * C + c] * prm[o.NW + c]) - kr * h * dot;
    for (var j = 0u; j < NS; j++) {
      var s = hpre[j] * dh;
      for (var i = 0u; i < NS; i++) { s += hres[i * NS + j] * gv[i]; }
      var cn = 0.0;
      if (HC) {
        for (var q = 0u; q < Q; q++) { cn += gs[(tok * R + j) * Q + q] * prm[o.W + c * Q + q]; }
        cn += srow[tok * R + j] * xs[j];
      } else {
        let k = j * C + c;
        for (var q = 0u; q < Q; q++) { cn += gs[tok * P + q] * prm[o.W + k * Q + q]; }
        cn += srow[tok] * xs[j];
      }
      dxv[j] = s + cn;
      if (valid) { dX[(t * NS + j) * C + c] = dxv[j]; }
    }
    if (o.prev == 1u) { postAcc(tc, c, &dxv, &acc, valid); }
  }
  if (o.prev == 1u) { postFinish(tc, li, &acc, valid); }
}`,
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Reductions, gradient norm, AdamW

export const REDUCE_COLS = 32 // columns per workgroup of `reduce`; its 256 threads are 8 row lanes of 32 columns

/**
 * Segmented column sums: job j sums `rows` rows (stride `stride`) of `cols` columns starting at src[srcOff] into
 * dst[dstOff …]. A workgroup takes 32 columns of one job; 8 lanes split its rows (lane, lane+8, …) and a fixed tree
 * adds the lanes. jobs: u32 [srcOff, stride, rows, cols, dstOff, first block (prefix of ⌈cols/32⌉), 0, 0] per job.
 * bindings: src, jobs, dst (rw). grid: Σ ⌈cols/32⌉ (2-D).
 */
export function reduceKernel(): KernelSpec {
  return {
    name: 'reduce',
    bindings: ['read', 'read', 'rw'],
    code: /* wgsl */ `
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read> jobs: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
var<workgroup> red: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u, @builtin(local_invocation_index) li: u32) {
  let blk = wid.x + wid.y * nw.x;
  let NJ = arrayLength(&jobs) / 8u;
  var j = 0u;
  for (var q = 1u; q < NJ; q++) { if (blk >= jobs[q * 8u + 5u]) { j = q; } }
  let col = (blk - jobs[j * 8u + 5u]) * ${REDUCE_COLS}u + li % ${REDUCE_COLS}u;
  let lane = li / ${REDUCE_COLS}u;
  let so = jobs[j * 8u]; let st = jobs[j * 8u + 1u]; let rows = jobs[j * 8u + 2u]; let cols = jobs[j * 8u + 3u];
  var s = 0.0;
  if (col < cols) { for (var r = lane; r < rows; r += 8u) { s += src[so + r * st + col]; } }
  red[li] = s;
  workgroupBarrier();
  for (var h = 128u; h >= ${REDUCE_COLS}u; h >>= 1u) {
    if (li < h) { red[li] += red[li + h]; }
    workgroupBarrier();
  }
  if (li < ${REDUCE_COLS}u && col < cols) { dst[jobs[j * 8u + 4u] + col] = red[li]; }
}`,
  }
}

export const NORM_CHUNK = 4096

/** Sum of squares of grads[wid·4096 …] per workgroup. bindings: grads, out (rw). grid: ceil(total/4096). */
export function sumSquares(total: number): KernelSpec {
  return {
    name: 'sum_squares',
    bindings: ['read', 'rw'],
    code: /* wgsl */ `
const TOTAL: u32 = ${total}u;
@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
var<workgroup> red: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u, @builtin(local_invocation_index) li: u32) {
  let w = wid.x + wid.y * nw.x;
  var s = 0.0;
  for (var k = 0u; k < ${NORM_CHUNK / 256}u; k++) {
    let i = w * ${NORM_CHUNK}u + k * 256u + li;
    if (i < TOTAL) { let v = g[i]; s += v * v; }
  }
  red[li] = s;
  workgroupBarrier();
  for (var st = 128u; st > 0u; st >>= 1u) {
    if (li < st) { red[li] += red[li + st]; }
    workgroupBarrier();
  }
  if (li == 0u) { out[w] = red[0]; }
}`,
  }
}

/** Hyper-parameters of a step, written once per step (f32 unless noted). */
export const HYPER_FIELDS = [
  'lr',
  'beta1',
  'omb1',
  'beta2',
  'omb2',
  'bc1',
  'bc2',
  'eps',
  'decayMul',
  'clip',
  'count',
  'pad',
] as const
const HYPER_STRUCT = `struct Hyper { lr: f32, beta1: f32, omb1: f32, beta2: f32, omb2: f32, bc1: f32, bc2: f32, eps: f32,
  decayMul: f32, clip: f32, count: u32, pad: u32 }`

/**
 * One workgroup: loss = Σ losses[0 … count) / count, norm = √Σ partials, ok = both finite, scale = clip/norm when
 * clip > 0 and norm > clip. stats = [loss, norm, scale, ok, clipped, 0, 0, 0]. With partials = 0 (evaluation) only
 * the loss is computed. bindings: losses, partials, hyper (uniform), stats (rw). grid: 1.
 */
export function statsKernel(npart: number): KernelSpec {
  return {
    name: 'stats',
    bindings: ['read', 'read', 'uniform', 'rw'],
    code: /* wgsl */ `
${HYPER_STRUCT}
const NP: u32 = ${npart}u;
@group(0) @binding(0) var<storage, read> losses: array<f32>;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<uniform> hp: Hyper;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
${FINITE}
var<workgroup> r1: array<f32, 256>;
var<workgroup> r2: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32) {
  var a = 0.0; var b = 0.0;
  for (var i = li; i < hp.count; i += 256u) { a += losses[i]; }
  for (var i = li; i < NP; i += 256u) { b += part[i]; }
  r1[li] = a; r2[li] = b;
  workgroupBarrier();
  for (var st = 128u; st > 0u; st >>= 1u) {
    if (li < st) { r1[li] += r1[li + st]; r2[li] += r2[li + st]; }
    workgroupBarrier();
  }
  if (li == 0u) {
    let loss = r1[0] / f32(hp.count);
    let norm = sqrt(r2[0]);
    let ok = finite(loss) && finite(norm);
    let clipped = ok && hp.clip > 0.0 && norm > hp.clip;
    stats[0] = loss; stats[1] = norm;
    stats[2] = select(1.0, hp.clip / norm, clipped);
    stats[3] = select(0.0, 1.0, ok);
    stats[4] = select(0.0, 1.0, clipped);
  }
}`,
  }
}

/**
 * AdamW over the whole flat parameter buffer (vec4 lanes), exactly train.ts's sequence of fp32 operations; nothing is
 * written when stats says the step is not finite. bindings: params (rw), grads, m (rw), v (rw), stats, hyper.
 * grid: ceil(total/4/256).
 */
export function adamwKernel(total: number, decayEnd: number): KernelSpec {
  return {
    name: 'adamw',
    bindings: ['rw', 'read', 'rw', 'rw', 'read', 'uniform'],
    code: /* wgsl */ `
${HYPER_STRUCT}
const TOTAL4: u32 = ${total / 4}u;
const DECAY4: u32 = ${decayEnd / 4}u;
@group(0) @binding(0) var<storage, read_write> p: array<vec4f>;
@group(0) @binding(1) var<storage, read> g: array<vec4f>;
@group(0) @binding(2) var<storage, read_write> m: array<vec4f>;
@group(0) @binding(3) var<storage, read_write> v: array<vec4f>;
@group(0) @binding(4) var<storage, read> stats: array<f32>;
@group(0) @binding(5) var<uniform> hp: Hyper;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u, @builtin(local_invocation_index) li: u32) {
  let i = (wid.x + wid.y * nw.x) * 256u + li;
  if (i >= TOTAL4 || stats[3] != 1.0) { return; }
  let gi = g[i] * stats[2];
  let mi = m[i] * hp.beta1 + gi * hp.omb1;
  let vi = v[i] * hp.beta2 + (gi * gi) * hp.omb2;
  let upd = (mi / hp.bc1) / (sqrt(vi / hp.bc2) + hp.eps);
  var pi = p[i];
  if (i < DECAY4) { pi = pi * hp.decayMul; }
  p[i] = pi - upd * hp.lr;
  m[i] = mi;
  v[i] = vi;
}`,
  }
}
