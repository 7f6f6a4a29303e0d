// `mhc profile-time`: kernel I/O against the paper's Table 2, the pipeline simulator against closed forms, DualPipe's
// step counts, the 27B headline (the CLI: test/commands/profile-time.test.ts).
import assert from 'node:assert/strict'
import {describe, it} from 'node:test'

import {
  HARDWARE,
  Hardware,
  ioElements,
  kernelSpecs,
  kernelTime,
  layerKernelTimes,
  PAPER_DTYPES,
} from '../../../src/profile/cost-models/kernels.js'
import {
  asciiTimeline,
  dualPipeBubble,
  dualPipeSchedule,
  oneFOneBMakespan,
  oneFOneBSchedule,
  ScheduleError,
  simulate,
  stepCounts,
} from '../../../src/profile/cost-models/pipeline.js'
import {activeParams, optimalRecomputeBlock, PAPER_MODELS} from '../../../src/profile/cost-models/presets.js'
import {PAPER_OVERHEAD, paperConfig, stageCosts, timeReport} from '../../../src/profile/cost-models/time.js'

const close = (a: number, b: number, tol = 1e-9) =>
  assert.ok(Math.abs(a - b) <= tol * Math.max(1, Math.abs(b)), `${a} vs ${b}`)
const actIO = (specs: ReturnType<typeof kernelSpecs>) => ioElements(specs, 'fwd', 'act')

describe('kernel I/O (elements per token)', () => {
  it('HC forward equals Table 2: read (5n+1)C + n² + 2n, write (3n+1)C + n² + 2n, row by row', () => {
    for (const n of [1, 2, 3, 4, 6, 8]) {
      for (const C of [7, 64, 2560]) {
        const specs = kernelSpecs('hc', {expansion: n, dModel: C, sinkhornIters: 20})
        assert.deepEqual(
          ioElements(specs, 'fwd'),
          {read: (5 * n + 1) * C + n * n + 2 * n, write: (3 * n + 1) * C + n * n + 2 * n},
          `n=${n} C=${C}`,
        )
        const row = (name: string) => {
          const k = specs.find((s) => s.pass === 'fwd' && s.name.startsWith(name))!
          return [k.reads, k.writes].map((xs) => xs.filter((a) => !a.perLaunch).reduce((t, a) => t + a.elems, 0))
        }

        assert.deepEqual(row('coefficients'), [n * C, n * n + 2 * n])
        assert.deepEqual(row('H_pre'), [n * C + n, C])
        assert.deepEqual(row('H_post'), [C + n, n * C])
        assert.deepEqual(row('H_res'), [n * C + n * n, n * C])
        assert.deepEqual(row('residual merge'), [2 * n * C, n * C])
      }
    }
  })

  it('residual merge reads 2C and writes C', () => {
    for (const C of [1, 100, 2560])
      assert.deepEqual(ioElements(kernelSpecs('residual', {expansion: 4, dModel: C, sinkhornIters: 20}), 'fwd'), {
        read: 2 * C,
        write: C,
      })
  })

  it('fused F_post,res reads (n+1)C instead of (3n+1)C and writes nC instead of 3nC (§4.3.1)', () => {
    for (const n of [2, 4, 8]) {
      const C = 1000
      const fused = kernelSpecs('mhc-fused', {expansion: n, dModel: C, sinkhornIters: 20}).filter(
        (k) => k.pass === 'fwd' && k.postRes,
      )
      assert.equal(fused.length, 1)
      assert.deepEqual(actIO(fused), {read: (n + 1) * C, write: n * C})
      const unfused = kernelSpecs('mhc-unfused', {expansion: n, dModel: C, sinkhornIters: 20}).filter(
        (k) => k.pass === 'fwd' && k.postRes,
      )
      assert.deepEqual(unfused.map((k) => k.name).sort(), ['H_post^T F', 'H_res x_l', 'residual merge'])
      assert.deepEqual(actIO(unfused), {read: (3 * n + 1) * C, write: 3 * n * C})
      // The whole fused forward reads x_l three times (Eq. 14–15, F_pre, F_post,res) and F once.
      assert.deepEqual(actIO(kernelSpecs('mhc-fused', {expansion: n, dModel: C, sinkhornIters: 20})), {
        read: (3 * n + 1) * C,
        write: (n + 1) * C,
      })
    }
  })

  it('unfused mHC runs Sinkhorn as 2·t_max normalisation kernels; fused mHC as one kernel each way', () => {
    for (const tmax of [0, 1, 20]) {
      const specs = kernelSpecs('mhc-unfused', {expansion: 4, dModel: 64, sinkhornIters: tmax})
      assert.equal(
        specs.filter((k) => k.pass === 'fwd' && /^SK (row|column) normalisation/.test(k.name)).length,
        2 * tmax,
      )
      assert.equal(specs.filter((k) => k.pass === 'fwd').length, 16 + 2 * tmax) // norm, GEMM, 10 small ops, SK, 4 apply
      const fused = kernelSpecs('mhc-fused', {expansion: 4, dModel: 64, sinkhornIters: tmax})
      assert.equal(fused.filter((k) => /Sinkhorn|Eq\. 19/.test(k.name)).length, 2)
      assert.equal(fused.filter((k) => k.pass === 'fwd').length, 5)
    }
  })

  it('roofline time: bytes with per-tensor dtypes, max of the two roofs, plus launch', () => {
    const hw: Hardware = {
      ...HARDWARE.h100,
      bandwidth: 1000,
      bandwidthEfficiency: 0.5,
      tensorFlops: 1e9,
      vectorFlops: 100,
      launch: 0.25,
    }
    const C = 8
    const n = 4
    const T = 3
    const k = kernelSpecs('mhc-fused', {expansion: n, dModel: C, sinkhornIters: 20}).find(
      (s) => s.pass === 'fwd' && s.postRes,
    )!
    const bytes = T * ((n + 1) * C * 2 + (n * n + n) * 4 + n * C * 2) // x_l and F bf16, H_res/H_post fp32, x_l+1 bf16
    const t = kernelTime(k, hw, PAPER_DTYPES, T)
    assert.equal(t.bytes, bytes)
    close(t.memory, bytes / 500)
    close(t.compute, (T * (2 * n * n * C + 2 * n * C)) / 100)
    assert.equal(t.bound, t.memory >= t.compute ? 'memory' : 'compute')
    close(t.time, Math.max(t.memory, t.compute) + 0.25)
    // φ is read once per launch, not per token: doubling the tokens doubles everything else.
    const g = kernelSpecs('mhc-fused', {expansion: n, dModel: C, sinkhornIters: 20}).find((s) =>
      s.name.startsWith('Eq. 14–15:'),
    )!
    const phi = n * C * (n * n + 2 * n) * 4
    assert.equal(kernelTime(g, hw, PAPER_DTYPES, 2).bytes - phi, 2 * (kernelTime(g, hw, PAPER_DTYPES, 1).bytes - phi))
  })

  it('recompute re-runs F_pre, the pre-norm and F_post,res (not for the last layer of a block); coefficients only if asked', () => {
    const s = {expansion: 4, dModel: 256, sinkhornIters: 20}
    const names = (o: Parameters<typeof layerKernelTimes>[5]) =>
      layerKernelTimes('mhc-fused', s, HARDWARE.h800, PAPER_DTYPES, 128, o).recompute.map((k) =>
        k.name.replace('recompute: ', ''),
      )
    assert.deepEqual(names({}), [])
    assert.deepEqual(names({recompute: true}), [
      'F_pre = H_pre x_l',
      'F_post,res = H_res x_l + H_post^T F',
      'RMSNorm(H_pre x_l) (pre-norm of F)',
    ])
    assert.deepEqual(names({recompute: true, skipPostResRecompute: true}), [
      'F_pre = H_pre x_l',
      'RMSNorm(H_pre x_l) (pre-norm of F)',
    ])
    assert.equal(names({recompute: true, recomputeCoefficients: true}).length, 6)
  })
})

describe('pipeline simulator', () => {
  it('1F1B makespan equals (M + PP − 1)(F + B) for uniform chunks, in both communication models', () => {
    for (const [pp, m] of [
      [1, 4],
      [2, 1],
      [3, 5],
      [4, 8],
      [6, 12],
      [8, 3],
      [5, 17],
    ]) {
      for (const [F, B] of [
        [1, 2],
        [1.3, 2.9],
        [2, 2],
      ]) {
        for (const comm of ['sync', 'async'] as const) {
          const sim = simulate(oneFOneBSchedule(pp, m), {F, B, W: 0, recompute: 0, comm: 0}, {comm})
          close(sim.makespan, oneFOneBMakespan(pp, m, F, B))
          close(sim.makespan, (m + pp - 1) * (F + B))
        }
      }
    }
  })

  it('DualPipe bubble equals (PP/2 − 1)(F&B + B − 3W) for uniform chunks (B − W = F, W ≤ F, F&B ≥ B)', () => {
    const chunks = [
      [1, 2, 1, 3],
      [2, 3, 1, 5],
      [3, 4, 1, 7],
      [1, 1.5, 0.5, 2.5],
      [2, 4, 2, 4.5],
      [1, 2, 1, 2],
    ]
    for (const [pp, n] of [
      [2, 4],
      [4, 8],
      [4, 14],
      [6, 12],
      [6, 20],
      [8, 16],
      [8, 20],
      [10, 24],
    ]) {
      for (const [F, B, W, FB] of chunks) {
        const sim = simulate(dualPipeSchedule(pp, n), {F, B, W, recompute: 0, FB, comm: 0}, {comm: 'async'})
        // Bubble of the busiest rank: step time minus its own work (pairs counted at F&B).
        const bubble = Math.max(...sim.ranks.map((r) => sim.makespan - r.busy))
        close(bubble, dualPipeBubble(pp, F, B, W, FB))
        close(bubble, (pp / 2 - 1) * (FB + B - 3 * W))
        // With F&B = F + B every rank does N(F + B) of work.
        if (FB === F + B) for (const r of sim.ranks) close(r.busy, n * (F + B))
      }
    }
  })

  it('DualPipe: every rank runs N forward, N backward and N weight-gradient chunks (deferred W = zero-bubble B)', () => {
    for (const [R, N] of [
      [2, 4],
      [4, 8],
      [4, 10],
      [6, 12],
      [6, 20],
      [8, 20],
      [8, 16],
      [10, 30],
    ]) {
      const s = dualPipeSchedule(R, N)
      for (const [r, c] of stepCounts(s).entries()) {
        const h = Math.min(r, R - 1 - r)
        assert.equal(c.forward, N, `R=${R} N=${N} rank ${r} forward`)
        assert.equal(c.backward, N, `rank ${r} backward`)
        assert.equal(c.weight, N, `rank ${r} weight gradients (full backward chunks + W steps)`)
        // W steps come from steps 3, 7 and 8: (R/2 − h − 1) + (R/2 − h − 1) + (h + 1).
        assert.equal(c.deferredWeight, R - h - 1, `rank ${r} W steps`)
        assert.equal(c.deferredWeight, c.zeroBubbleBackward)
        // Main step: N/2 − R + h + 1 iterations of two pairs (the middle ranks do their first pair un-overlapped),
        // step 5 adds R/2 − h − 1 pairs.
        const middle = r === R / 2 - 1 || r === R / 2
        assert.equal(c.overlappedPairs, 2 * (N / 2 - R + h + 1) - (middle ? 1 : 0) + (R / 2 - h - 1), `rank ${r} pairs`)
      }

      // Each direction's N/2 micro-batches pass through every rank in order.
      for (const prog of s.programs) {
        for (const dir of [0, 1]) {
          const f = prog.flatMap((o) =>
            o.op === 'compute' && (o.c.type === 'F' || o.c.type === 'FB') && o.c.f.dir === dir ? [o.c.f.mb] : [],
          )
          assert.deepEqual(
            f,
            Array.from({length: N / 2}, (_, i) => i),
          )
        }
      }
    }
  })

  it('DualPipe rejects what its step() asserts: odd ranks, odd or too few micro-batches', () => {
    assert.throws(() => dualPipeSchedule(5, 20), ScheduleError)
    assert.throws(() => dualPipeSchedule(4, 7), ScheduleError)
    assert.throws(() => dualPipeSchedule(6, 10), ScheduleError)
  })

  it('communication: blocking P2P is never faster than overlapped; decoupled recompute fills waits; timeline draws', () => {
    for (const [R, N] of [
      [4, 8],
      [6, 20],
    ]) {
      const k = {F: 1, B: 2.4, W: 0.8, recompute: 0.3, comm: 0.25}
      const sync = simulate(dualPipeSchedule(R, N), k, {comm: 'sync'})
      const async = simulate(dualPipeSchedule(R, N), k, {comm: 'async'})
      const dec = simulate(dualPipeSchedule(R, N), k, {comm: 'async', decoupleRecompute: true})
      const free = simulate(dualPipeSchedule(R, N), {...k, comm: 0}, {comm: 'async'})
      assert.ok(sync.makespan >= async.makespan - 1e-12 && async.makespan >= free.makespan - 1e-12)
      assert.ok(dec.makespan <= async.makespan + 1e-12)
      // Work is conserved: only waiting changes.
      for (let r = 0; r < R; r++) close(dec.ranks[r].busy, async.ranks[r].busy)
      const lines = asciiTimeline(dec, R, 80).split('\n')
      assert.equal(lines.length, R)
      for (const l of lines) assert.match(l, /^rank +\d+ \|[FBWfbwr. ]{80}\|$/)
    }
  })
})

describe('report', () => {
  it('presets reproduce Table 5 active parameters; Eq. 20 gives the recompute blocks of the reference notes', () => {
    for (const m of Object.values(PAPER_MODELS)) {
      const rel = activeParams(m) / m.paper.activeParams - 1
      assert.ok(Math.abs(rel) < 0.02, `${m.name}: ${activeParams(m)} vs ${m.paper.activeParams}`)
    }

    assert.deepEqual(optimalRecomputeBlock(30, 4).best, [5])
    assert.deepEqual(optimalRecomputeBlock(60, 4).best, [6])
    assert.deepEqual(optimalRecomputeBlock(36, 4).best, [4, 6])
  })

  it('27B at n = 4: the paper design lands within 2 pp of 6.7%; the ladder is ordered', () => {
    const r = timeReport(paperConfig(PAPER_MODELS['paper-27b'], HARDWARE.h800))
    const o = Object.fromEntries(r.scenarios.map((s) => [s.scenario.id, s.overhead]))
    assert.ok(Math.abs(o['mhc-paper'] - PAPER_OVERHEAD) <= 0.02, `paper design ${o['mhc-paper']}`)
    assert.ok(o['mhc-unfused'] > o.hc && o.hc > o['mhc-fused-recompute'], JSON.stringify(o))
    assert.ok(o['mhc-fused-recompute'] > o['mhc-fused'] && o['mhc-fused-recompute'] > o['mhc-paper'], JSON.stringify(o))
    for (const s of r.scenarios) close(s.overhead, s.overheadCompute + s.overheadComm)
  })

  it('stage costs add up: F, B and W from the layer compute and the kernels; the baseline sends C, mHC n·C', () => {
    const cfg = paperConfig(PAPER_MODELS['paper-3b'], HARDWARE.h100)
    const base = stageCosts(cfg, 'residual', false, false)
    const m = stageCosts(cfg, 'mhc-fused', true, true)
    for (const c of [base, m]) {
      close(c.F, c.parts.layerF + c.parts.kernelF)
      close(c.W, c.parts.layerW + c.parts.kernelW)
      close(c.B, c.parts.layerB + c.parts.kernelBin + c.parts.recompute + c.W)
      close(c.FB!, c.F + c.B - c.parts.hidden)
    }

    assert.equal(base.parts.hidden, 0)
    assert.ok(
      m.parts.hidden > 0 && m.parts.hidden <= cfg.hideFraction * (m.parts.ffnPostResF + m.parts.ffnPostResB) + 1e-15,
    )
    assert.equal(m.commBytes, cfg.expansion * base.commBytes)
    close(base.commBytes, cfg.model.seqLen * cfg.model.dModel * 2)
  })
})
