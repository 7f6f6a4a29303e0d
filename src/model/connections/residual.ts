// The baseline: x_{l+1} = x_l + F(x_l). One stream, nothing learned, H_res = 1.
import type {Connection} from './connection.js'

export const residual: Connection = {
  arch: 'baseline',
  description: 'x + F(x)',
  streams: () => 1,
  coefficients: 'none',
  resConstraint: 'none',
  paramSpecs: () => [],
  problem: () => undefined,
}
