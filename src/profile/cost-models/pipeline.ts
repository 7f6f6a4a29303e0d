// Discrete-event simulation of pipeline-parallel schedules: 1F1B and DualPipe.
//
// A schedule is one program per rank, written in the vocabulary of deepseek-ai/DualPipe's runtime
// (dualpipe/dualpipe.py): queue a receive, queue a send, commit-and-wait (`_commit_and_wait_comm`), compute a chunk.
// `dualPipeSchedule` transcribes `DualPipe.step()`'s eight loops rank by rank; `oneFOneBSchedule` is Megatron's
// non-interleaved 1F1B in the same vocabulary. `simulate` runs the programs with chunk and transfer times.
//
// Two communication models:
//   sync   the reference runtime: queued P2P ops are issued at the next commit and both sides wait for them. A transfer
//          starts when both sender and receiver have committed it and ends `comm` later (NCCL send/recv rendezvous).
//   async  communication overlapped with computation (DeepSeek-V3's overlap, and the paper's §4.3.3 extension):
//          a send leaves as soon as its chunk is computed, arrives `comm` later, and only the receiver waits for it.

export type Dir = 0 | 1
export interface ChunkRef {
  dir: Dir
  mb: number
}
export type Compute =
  | {type: 'F'; f: ChunkRef}
  /** zb: zero-bubble split, input gradients only; the chunk's weight gradients wait in a FIFO for a W. */
  | {type: 'B'; b: ChunkRef; zb: boolean}
  | {type: 'W'; b: ChunkRef}
  /** Two mutually overlapped chunks, a forward and a full backward (`_forward_backward_chunk`). */
  | {type: 'FB'; f: ChunkRef; b: ChunkRef}
export type Op =
  | {op: 'recv'; key: string; from: number}
  | {op: 'send'; key: string; to: number}
  | {op: 'commit'}
  | {op: 'compute'; c: Compute}

export type ScheduleName = '1f1b' | 'dualpipe'
export const SCHEDULES: readonly ScheduleName[] = ['dualpipe', '1f1b']
export interface Schedule {
  name: ScheduleName
  ranks: number
  microBatches: number
  programs: Op[][]
}

/** Message name: kind (activation F or gradient B), direction, micro-batch, sender > receiver. */
const msg = (kind: 'F' | 'B', d: Dir, mb: number, from: number, to: number) => `${kind}${d}:${mb}:${from}>${to}`

export class ScheduleError extends Error {}

/** Checks DualPipe's own asserts (`step()`): an even number of ranks; an even number of chunks, at least 2·ranks. */
export function checkDualPipe(ranks: number, chunks: number): void {
  if (ranks < 2 || ranks % 2 !== 0)
    throw new ScheduleError(`DualPipe needs an even number of pipeline ranks (≥ 2), got ${ranks}`)
  if (chunks % 2 !== 0 || chunks < 2 * ranks)
    throw new ScheduleError(`DualPipe needs an even number of micro-batches ≥ 2 × ranks = ${2 * ranks}, got ${chunks}`)
}

/** The per-rank programs of `DualPipe.step(num_chunks = chunks)` on `ranks` ranks. */
export function dualPipeSchedule(ranks: number, chunks: number): Schedule {
  checkDualPipe(ranks, chunks)
  return {
    name: 'dualpipe',
    ranks,
    microBatches: chunks,
    programs: Array.from({length: ranks}, (_, r) => dualPipeProgram(r, ranks, chunks)),
  }
}

function dualPipeProgram(rank: number, R: number, N: number): Op[] {
  const ops: Op[] = []
  const halfRanks = R / 2
  const h = Math.min(rank, R - 1 - rank) // half_rank
  const secondHalf = rank >= halfRanks ? 1 : 0
  const middle = rank === halfRanks - 1 || rank === halfRanks
  const first = rank === 0
  const last = rank === R - 1
  // Phase 0/1 is the rank's own numbering; direction 0 enters at rank 0, direction 1 at the last rank.
  const dirOf = (phase: number) => (phase ^ secondHalf) as Dir
  const isFirstStage = (d: Dir) => (first && d === 0) || (last && d === 1)
  const isLastStage = (d: Dir) => (first && d === 1) || (last && d === 0)
  const down = (d: Dir) => (d === 0 ? rank + 1 : rank - 1) // where activations of direction d go next
  const up = (d: Dir) => (d === 0 ? rank - 1 : rank + 1)
  const fId = [0, 0]
  const bId = [0, 0]
  const sendF = [0, 0]
  const sendB = [0, 0]
  const recvF = [0, 0]
  const recvB = [0, 0]
  const weightQueue: ChunkRef[] = [] // WeightGradStore's FIFO

  const recvForward = (p: number) => {
    const d = dirOf(p)
    if (!isFirstStage(d)) ops.push({op: 'recv', key: msg('F', d, recvF[d]++, up(d), rank), from: up(d)})
  }

  const sendForward = (p: number) => {
    const d = dirOf(p)
    if (!isLastStage(d)) ops.push({op: 'send', key: msg('F', d, sendF[d]++, rank, down(d)), to: down(d)})
  }

  const recvBackward = (p: number) => {
    const d = dirOf(p)
    if (!isLastStage(d)) ops.push({op: 'recv', key: msg('B', d, recvB[d]++, down(d), rank), from: down(d)})
  }

  const sendBackward = (p: number) => {
    const d = dirOf(p)
    if (!isFirstStage(d)) ops.push({op: 'send', key: msg('B', d, sendB[d]++, rank, up(d)), to: up(d)})
  }

  const commit = () => ops.push({op: 'commit'})
  const fRef = (p: number): ChunkRef => {
    const d = dirOf(p)
    return {dir: d, mb: fId[d]++}
  }

  const bRef = (p: number): ChunkRef => {
    const d = dirOf(p)
    return {dir: d, mb: bId[d]++}
  }

  const forwardChunk = (p: number, recv = true, send = true) => {
    if (recv) recvForward(p)
    commit()
    ops.push({op: 'compute', c: {type: 'F', f: fRef(p)}})
    if (send) sendForward(p)
  }

  const backwardChunk = (p: number, zb = false, recv = true, send = true) => {
    if (recv) recvBackward(p)
    commit()
    const b = bRef(p)
    if (zb) weightQueue.push(b)
    ops.push({op: 'compute', c: {type: 'B', b, zb}})
    if (send) sendBackward(p)
  }

  const forwardBackwardChunk = (p0: number, p1: number, recv0 = true) => {
    if (recv0) recvForward(p0)
    recvBackward(p1)
    commit()
    ops.push({op: 'compute', c: {type: 'FB', f: fRef(p0), b: bRef(p1)}})
    sendForward(p0)
    sendBackward(p1)
  }

  const weightChunk = () => {
    commit()
    const b = weightQueue.shift()
    if (!b) throw new ScheduleError(`rank ${rank}: a W step with no deferred weight gradient`)
    ops.push({op: 'compute', c: {type: 'W', b}})
  }

  // Step 1: nF0
  for (let i = 0; i < (halfRanks - h - 1) * 2; i++) forwardChunk(0)
  // Step 2: nF0F1
  const step2 = h + 1
  recvForward(0)
  for (let i = 0; i < step2; i++) {
    forwardChunk(0, false, middle)
    recvForward(0)
    forwardChunk(1, true, !middle || i < step2 - 1)
    if (!middle) sendForward(0)
  }

  // Step 3: nB1W1F1 (zero bubble)
  for (let i = 0; i < halfRanks - h - 1; i++) {
    backwardChunk(1, true)
    recvForward(1)
    weightChunk()
    forwardChunk(1, false)
  }

  // Step 4 (main): nF0B1F1B0
  for (let i = 0; i < N / 2 - R + h + 1; i++) {
    if (i === 0) {
      if (middle) {
        // "We don't overlap these two chunks to further reduce bubble size."
        forwardChunk(0, false, false)
        sendForward(1)
        backwardChunk(1, false, true, false)
        sendForward(0)
        sendBackward(1)
      } else {
        forwardBackwardChunk(0, 1, false)
      }
    } else {
      forwardBackwardChunk(0, 1)
    }

    forwardBackwardChunk(1, 0)
  }

  // Step 5: nB1F1B0
  for (let i = 0; i < halfRanks - h - 1; i++) {
    backwardChunk(1)
    forwardBackwardChunk(1, 0)
  }

  // Step 6: nB1B0 (the second half of the chunks use zero bubble)
  const step6 = h + 1
  let zb = false
  for (let i = 0; i < step6; i++) {
    if (i === Math.floor(step6 / 2) && h % 2 === 1) zb = true
    backwardChunk(1, zb)
    if (i === Math.floor(step6 / 2) && h % 2 === 0) zb = true
    backwardChunk(0, zb)
  }

  // Step 7: nWB0 (zero bubble)
  for (let i = 0; i < halfRanks - h - 1; i++) {
    weightChunk()
    backwardChunk(0, true)
  }

  // Step 8: nW
  for (let i = 0; i < h + 1; i++) weightChunk()
  if (weightQueue.length > 0) throw new ScheduleError(`rank ${rank}: ${weightQueue.length} weight gradients never run`)
  commit()
  return ops
}

/** Megatron-style non-interleaved 1F1B on `stages` ranks, `microBatches` micro-batches, full backward chunks. */
export function oneFOneBSchedule(stages: number, microBatches: number): Schedule {
  if (stages < 1 || microBatches < 1) throw new ScheduleError('1F1B needs at least one stage and one micro-batch')
  const programs = Array.from({length: stages}, (_, s) => {
    const ops: Op[] = []
    let f = 0
    let b = 0
    const recvF = () => {
      if (s > 0) ops.push({op: 'recv', key: msg('F', 0, f, s - 1, s), from: s - 1})
    }

    const sendF = () => {
      if (s < stages - 1) ops.push({op: 'send', key: msg('F', 0, f, s, s + 1), to: s + 1})
    }

    const recvB = () => {
      if (s < stages - 1) ops.push({op: 'recv', key: msg('B', 0, b, s + 1, s), from: s + 1})
    }

    const sendB = () => {
      if (s > 0) ops.push({op: 'send', key: msg('B', 0, b, s, s - 1), to: s - 1})
    }

    const fwd = () => {
      recvF()
      ops.push({op: 'commit'}, {op: 'compute', c: {type: 'F', f: {dir: 0, mb: f}}})
      sendF()
      f++
    }

    const bwd = () => {
      recvB()
      ops.push({op: 'commit'}, {op: 'compute', c: {type: 'B', b: {dir: 0, mb: b}, zb: false}})
      sendB()
      b++
    }

    const warmup = Math.min(stages - s - 1, microBatches)
    for (let i = 0; i < warmup; i++) fwd()
    for (let i = 0; i < microBatches - warmup; i++) {
      fwd()
      bwd()
    }

    for (let i = 0; i < warmup; i++) bwd()
    ops.push({op: 'commit'})
    return ops
  })
  return {name: '1f1b', ranks: stages, microBatches, programs}
}

export function buildSchedule(name: ScheduleName, ranks: number, microBatches: number): Schedule {
  return name === 'dualpipe' ? dualPipeSchedule(ranks, microBatches) : oneFOneBSchedule(ranks, microBatches)
}

/** Per rank: forward chunks, backward chunks, weight-gradient computations (deferred W steps + full backward chunks). */
export function stepCounts(s: Schedule) {
  return s.programs.map((ops) => {
    const c = {forward: 0, backward: 0, weight: 0, deferredWeight: 0, overlappedPairs: 0, zeroBubbleBackward: 0}
    for (const o of ops) {
      if (o.op !== 'compute') continue
      const x = o.c
      if (x.type === 'F') c.forward++
      if (x.type === 'B') {
        c.backward++
        if (x.zb) c.zeroBubbleBackward++
        else c.weight++
      }

      if (x.type === 'W') {
        c.weight++
        c.deferredWeight++
      }

      if (x.type === 'FB') {
        c.forward++
        c.backward++
        c.weight++
        c.overlappedPairs++
      }
    }

    return c
  })
}

// ---------------------------------------------------------------------------------------------------------------
// Simulation

export interface ChunkCosts {
  /** Forward chunk. */
  F: number
  /** Full backward chunk (input and weight gradients, and any recompute). */
  B: number
  /** The weight-gradient part of B (what a zero-bubble backward defers). */
  W: number
  /** The part of B that needs no incoming gradient (the stage's mHC recompute, §4.3.2). */
  recompute: number
  /** An overlapped forward + full backward pair; default F + B. */
  FB?: number
  /** One P2P transfer of a boundary tensor (activation or gradient), latency included. */
  comm: number
}

export type CommMode = 'sync' | 'async'
export interface SimOptions {
  comm: CommMode
  /** Run the recompute of a backward chunk before waiting for its gradient (§4.3.3: x_l0 is cached locally). */
  decoupleRecompute?: boolean
}

export type IntervalKind = 'F' | 'B' | 'W' | 'FB' | 'R' | 'wait'
export interface Interval {
  rank: number
  start: number
  end: number
  kind: IntervalKind
  dir?: Dir
  bDir?: Dir
  mb?: number
  fEnd?: number
}
export interface RankStats {
  busy: number
  waiting: number
  end: number
}
export interface SimResult {
  makespan: number
  ranks: RankStats[]
  intervals: Interval[]
}

export function computeDuration(c: Compute, k: ChunkCosts): number {
  switch (c.type) {
    case 'F': {
      return k.F
    }

    case 'B': {
      return c.zb ? k.B - k.W : k.B
    }

    case 'W': {
      return k.W
    }

    case 'FB': {
      return k.FB ?? k.F + k.B
    }
  }
}

/** Runs every rank's program; throws on a deadlock (a schedule whose sends and receives do not match). */
export function simulate(s: Schedule, k: ChunkCosts, opts: SimOptions): SimResult {
  for (const name of ['F', 'B', 'W', 'recompute', 'FB', 'comm'] as const) {
    const v = k[name]
    if (v !== undefined && !(v >= 0 && Number.isFinite(v))) throw new ScheduleError(`chunk cost ${name} = ${v}`)
  }

  if (k.W > k.B || k.recompute > k.B - k.W) throw new ScheduleError('chunk costs need W + recompute ≤ B')
  const R = s.ranks
  const t = new Array<number>(R).fill(0)
  const pc = new Array<number>(R).fill(0)
  const busy = new Array<number>(R).fill(0)
  const pending: {key: string; side: 'send' | 'recv'}[][] = Array.from({length: R}, () => [])
  const posted = new Array<boolean>(R).fill(false)
  const preDone = new Array<boolean>(R).fill(false) // decoupled recompute already run for the coming compute
  const postTime = new Map<string, {send?: number; recv?: number}>() // sync: when each side committed
  const arrival = new Map<string, number>() // async: when a message is available at the receiver
  const intervals: Interval[] = []

  const nextCompute = (r: number): Compute | undefined => {
    const o = s.programs[r][pc[r] + 1]
    return o?.op === 'compute' ? o.c : undefined
  }

  const runs = (c: Compute | undefined) =>
    c !== undefined && (c.type === 'B' || c.type === 'FB') && k.recompute > 0 && Boolean(opts.decoupleRecompute)

  let remaining = R
  while (remaining > 0) {
    let progressed = false
    for (let r = 0; r < R; r++) {
      const prog = s.programs[r]
      while (pc[r] < prog.length) {
        const o = prog[pc[r]]
        if (o.op === 'send' || o.op === 'recv') {
          if (o.op === 'send' && opts.comm === 'async') arrival.set(o.key, t[r] + k.comm)
          pending[r].push({key: o.key, side: o.op})
        } else if (o.op === 'commit') {
          const c = nextCompute(r)
          if (runs(c) && !preDone[r]) {
            // The recompute needs only x_l0, cached on this rank: it runs while the gradient is in flight.
            intervals.push({
              rank: r,
              start: t[r],
              end: t[r] + k.recompute,
              kind: 'R',
              dir: c && (c.type === 'B' || c.type === 'FB') ? c.b.dir : undefined,
            })
            t[r] += k.recompute
            busy[r] += k.recompute
            preDone[r] = true
          }

          if (opts.comm === 'sync' && !posted[r]) {
            for (const p of pending[r]) postTime.set(p.key, {...postTime.get(p.key), [p.side]: t[r]})
            posted[r] = true
          }

          let ready = t[r]
          let blocked = false
          for (const p of pending[r]) {
            if (opts.comm === 'async') {
              if (p.side === 'send') continue
              const a = arrival.get(p.key)
              if (a === undefined) {
                blocked = true
                break
              }

              ready = Math.max(ready, a)
            } else {
              const q = postTime.get(p.key)!
              if (q.send === undefined || q.recv === undefined) {
                blocked = true
                break
              }

              ready = Math.max(ready, Math.max(q.send, q.recv) + k.comm)
            }
          }

          if (blocked) break
          if (ready > t[r]) intervals.push({rank: r, start: t[r], end: ready, kind: 'wait'})
          t[r] = ready
          pending[r] = []
          posted[r] = false
        } else {
          const {c} = o
          let d = computeDuration(c, k)
          if (preDone[r]) {
            d -= k.recompute
            preDone[r] = false
          }

          const iv: Interval = {rank: r, start: t[r], end: t[r] + d, kind: c.type}
          if (c.type === 'F') Object.assign(iv, {dir: c.f.dir, mb: c.f.mb})
          if (c.type === 'B' || c.type === 'W') Object.assign(iv, {dir: c.b.dir, mb: c.b.mb})
          if (c.type === 'FB')
            Object.assign(iv, {dir: c.f.dir, bDir: c.b.dir, mb: c.f.mb, fEnd: t[r] + (d * k.F) / (k.F + k.B)})
          intervals.push(iv)
          t[r] += d
          busy[r] += d
        }

        pc[r]++
        progressed = true
        if (pc[r] === prog.length) remaining--
      }
    }

    if (!progressed) {
      const stuck = s.programs.map((p, r) => (pc[r] < p.length ? `rank ${r} at op ${pc[r]}` : '')).filter(Boolean)
      throw new ScheduleError(`schedule deadlocked: ${stuck.join(', ')}`)
    }
  }

  const makespan = Math.max(...t)
  return {makespan, intervals, ranks: t.map((end, r) => ({busy: busy[r], waiting: makespan - busy[r], end}))}
}

// ---------------------------------------------------------------------------------------------------------------
// Closed forms (for uniform chunks and free communication)

/** 1F1B: (M + PP − 1)(F + B). */
export const oneFOneBMakespan = (pp: number, m: number, F: number, B: number) => (m + pp - 1) * (F + B)

/** DualPipe's bubble from its README: (PP/2 − 1)(F&B + B − 3W). */
export const dualPipeBubble = (pp: number, F: number, B: number, W: number, FB = F + B) =>
  (pp / 2 - 1) * (FB + B - 3 * W)

// ---------------------------------------------------------------------------------------------------------------
// ASCII timeline

/**
 * One row per rank, `width` columns spanning the makespan. F/B/W for direction 0, f/b/w for direction 1 (DualPipe's
 * second direction), an overlapped F&B pair drawn as its forward then its backward part, r = decoupled recompute,
 * '.' = waiting for communication, ' ' = idle (nothing left to do).
 */
export function asciiTimeline(sim: SimResult, ranks: number, width = 100): string {
  const scale = width / sim.makespan
  const rows = Array.from({length: ranks}, () => new Array<string>(width).fill(' '))
  const letter = (kind: 'F' | 'B' | 'W' | 'R', dir?: Dir) =>
    kind === 'R' ? 'r' : dir === 1 ? kind.toLowerCase() : kind
  const paint = (r: number, a: number, b: number, ch: string) => {
    const i0 = Math.max(0, Math.round(a * scale))
    const i1 = Math.min(width, Math.max(i0 + (b > a ? 1 : 0), Math.round(b * scale)))
    for (let i = i0; i < i1; i++) rows[r][i] = ch
  }

  for (const iv of sim.intervals) {
    if (iv.kind === 'wait') paint(iv.rank, iv.start, iv.end, '.')
    else if (iv.kind === 'FB') {
      paint(iv.rank, iv.start, iv.fEnd!, letter('F', iv.dir))
      paint(iv.rank, iv.fEnd!, iv.end, letter('B', iv.bDir))
    } else paint(iv.rank, iv.start, iv.end, letter(iv.kind, iv.dir))
  }

  return rows.map((row, r) => `rank ${String(r).padStart(2)} |${row.join('')}|`).join('\n')
}
