// Hyper-Connections (arXiv 2409.19606), dynamic form as the mHC paper restates it (Eq. 5):
//   x̃ = RMSNorm(x_l) per stream;  H = α·tanh(θ x̃ᵀ) + b  for H_pre (1×n), H_post (1×n), H_res (n×n, unconstrained).
import {Connection, constant, normal, ParamSpec} from './connection.js'

export const hyperConnection: Connection = {
  arch: 'hc',
  description: 'H = α·tanh(θ·RMSNorm(x)) + b (Eq. 5), H_res unconstrained',
  streams: (cfg) => cfg.expansion,
  coefficients: 'hc',
  resConstraint: 'none',
  paramSpecs(cfg, l) {
    const {dModel: C, expansion: n, gateInit} = cfg
    const p = `conn.${l}`
    // Static parts b chosen so that the untrained network is a pre-norm residual network (exact when α = 0, see the
    // tests): H_pre = e_(l mod n) picks one stream, H_post = 1, H_res = I.
    const diagonal = (i: number) => Math.floor(i / n) === i % n
    return [
      // θ = [θ_pre | θ_post | θ_res] applied to each stream: small random values break the symmetry between the n
      // identical streams; the gates α keep their effect small at first.
      {name: `${p}.theta`, shape: [C, 2 + n], init: normal(0.02), decay: true, linear: true},
      ...gates(p, gateInit),
      {name: `${p}.b_pre`, shape: [n], init: (_, i) => (i === l % n ? 1 : 0), decay: false},
      {name: `${p}.b_post`, shape: [n], init: constant(1), decay: false},
      {name: `${p}.b_res`, shape: [n, n], init: (_, i) => (diagonal(i) ? 1 : 0), decay: false},
    ]
  },
  problem: (cfg) => (cfg.expansion < 2 ? 'expansion must be at least 2 for hc/mhc' : undefined),
}

/** The scalar gates α_pre, α_post, α_res (paper: initialised to 0.01). */
export const gates = (p: string, init: number): ParamSpec[] =>
  (['pre', 'post', 'res'] as const).map((k) => ({
    name: `${p}.alpha_${k}`,
    shape: [],
    init: constant(init),
    decay: false,
  }))
