// Manifold-Constrained Hyper-Connections (arXiv 2512.24880, Eq. 7–9): the n×C stream flattened to 1×nC and
// RMSNorm-ed, one projection φ = [φ_pre | φ_post | φ_res], then H_pre = σ(·), H_post = 2σ(·), and H_res projected onto
// the doubly stochastic matrices by Sinkhorn-Knopp (t_max = sinkhornIters), so every product of them mixes convexly.
import {Connection, constant, normal} from './connection.js'
import {gates, hyperConnection} from './hyper.js'

export const manifoldConnection: Connection = {
  arch: 'mhc',
  description: 'H_pre = σ, H_post = 2σ, H_res = Sinkhorn-Knopp of α·(RMSNorm(vec x)·φ) + b (Eq. 7–9)',
  streams: (cfg) => cfg.expansion,
  coefficients: 'mhc',
  resConstraint: 'sinkhorn',
  paramSpecs(cfg, l) {
    const {dModel: C, expansion: n, gateInit} = cfg
    const p = `conn.${l}`
    const diagonal = (i: number) => Math.floor(i / n) === i % n
    return [
      {name: `${p}.phi`, shape: [n * C, 2 * n + n * n], init: normal(0.02), decay: true, linear: true},
      ...gates(p, gateInit),
      // H_pre = σ(−ln(n−1)) = 1/n and H_post = 2σ(0) = 1: every doubly stochastic H_res maps n identical streams to
      // themselves, so the copied embedding behaves like one residual stream.
      {name: `${p}.b_pre`, shape: [n], init: constant(-Math.log(n - 1)), decay: false},
      {name: `${p}.b_post`, shape: [n], init: constant(0), decay: false},
      // Off-diagonal logits of −4 give H_res ≈ 0.95·I + 0.017 elsewhere: close to the identity, yet within reach of
      // the optimiser (at −8 the Sinkhorn Jacobian, ~e^−8, left H_res frozen at I in 400-step runs).
      {name: `${p}.b_res`, shape: [n, n], init: (_, i) => (diagonal(i) ? 0 : -4), decay: false},
    ]
  },
  problem: (cfg) =>
    hyperConnection.problem(cfg) ??
    (cfg.sinkhornIters < 1 ? 'sinkhornIters must be at least 1 for mhc (0 would leave H_res unnormalised)' : undefined),
}
