// Sinkhorn-Knopp projection onto the doubly stochastic matrices (mHC Eq. 9): M0 = exp(logits), then
// M_t = T_r(T_c(M_{t-1})), column normalisation first, then row normalisation, t_max times. Two forms, same maths:
// op by op (any backend, autodiff), and fused for host backends (wasm, cpu) in the spirit of the paper's §4.3.1: one
// kernel with its own backward that recomputes the iterations instead of storing them. On wasm the op-by-op version
// costs 4·t_max tiny kernels per layer forward and more backward (~17 ms per [1024,4,4] batch); the fused one ~1 ms.
// Tests compare the two, values and gradients, and both against float64.
import {tf} from './backend.js'

/**
 * Op by op over logits [..., n, n]. Subtracting the per-matrix max first changes nothing (SK is invariant to scaling
 * M0) but keeps exp finite.
 */
export function sinkhornKnopp(logits: tf.Tensor, iters: number): tf.Tensor {
  const r = logits.rank
  // exp(−80) ≈ 2e−35 is still a normal float32: the clamp keeps M0 strictly positive (SK needs that, and a column
  // of underflowed zeros would divide 0 by 0).
  let m = tf.exp(tf.maximum(tf.sub(logits, tf.max(logits, [r - 2, r - 1], true)), -80))
  for (let t = 0; t < iters; t++) {
    m = tf.div(m, tf.sum(m, r - 2, true)) // T_c: every column sums to 1
    m = tf.div(m, tf.sum(m, r - 1, true)) // T_r: every row sums to 1
  }

  return m
}

const CLAMP = -80 // as above: keeps M0 strictly positive in float32

/**
 * All matrices at once (z holds N row-major n×n blocks): `iters` column-then-row normalisations of exp(z − max z)
 * in float64. With `trace`, keeps every intermediate (2·iters + 1 arrays of N·n² doubles) for the backward pass.
 */
function sk(z: Float32Array, n: number, iters: number, trace?: Float64Array[]): Float64Array {
  const nn = n * n
  let m = new Float64Array(z.length)
  for (let off = 0; off < z.length; off += nn) {
    let mx = -Infinity
    for (let k = 0; k < nn; k++) mx = Math.max(mx, z[off + k])
    for (let k = 0; k < nn; k++) m[off + k] = Math.exp(Math.max(z[off + k] - mx, CLAMP))
  }

  trace?.push(m)
  for (let t = 0; t < iters; t++) {
    const a = trace ? new Float64Array(z.length) : m
    for (let off = 0; off < z.length; off += nn) {
      for (let j = 0; j < n; j++) {
        // T_c: divide each column by its sum
        let c = 0
        for (let i = 0; i < n; i++) c += m[off + i * n + j]
        for (let i = 0; i < n; i++) a[off + i * n + j] = m[off + i * n + j] / c
      }
    }

    trace?.push(a)
    const b = trace ? new Float64Array(z.length) : a
    for (let off = 0; off < z.length; off += nn) {
      for (let i = 0; i < n; i++) {
        // T_r: divide each row by its sum
        let r = 0
        for (let j = 0; j < n; j++) r += a[off + i * n + j]
        for (let j = 0; j < n; j++) b[off + i * n + j] = a[off + i * n + j] / r
      }
    }

    trace?.push(b)
    m = b
  }

  return m
}

export const sinkhornKnoppFused = (logits: tf.Tensor, iters: number): tf.Tensor => {
  const f = tf.customGrad(((x: tf.Tensor, save: tf.GradSaveFunc) => {
    const n = x.shape[x.rank - 1]
    const nn = n * n
    save([x])
    return {
      value: tf.tensor(Float32Array.from(sk(x.dataSync() as Float32Array, n, iters)), x.shape, 'float32'),
      gradFunc(dy: tf.Tensor, [xs]: tf.Tensor[]) {
        const z = xs.dataSync() as Float32Array
        const trace: Float64Array[] = []
        sk(z, n, iters, trace) // recompute rather than store during the forward pass
        const d = Float64Array.from(dy.dataSync() as Float32Array)
        for (let t = iters - 1; t >= 0; t--) {
          const [m, a, b] = [trace[2 * t], trace[2 * t + 1], trace[2 * t + 2]]
          for (let off = 0; off < z.length; off += nn) {
            // b = a / r (rows): da_ij = (db_ij − Σ_j' db_ij' b_ij') / r_i, with r_i = a_ij / b_ij
            for (let i = 0; i < n; i++) {
              let dot = 0
              let r = 0
              for (let j = 0; j < n; j++) {
                dot += d[off + i * n + j] * b[off + i * n + j]
                r += a[off + i * n + j]
              }

              for (let j = 0; j < n; j++) d[off + i * n + j] = (d[off + i * n + j] - dot) / r
            }

            // a = m / c (columns): dm_ij = (da_ij − Σ_i' da_i'j a_i'j) / c_j
            for (let j = 0; j < n; j++) {
              let dot = 0
              let c = 0
              for (let i = 0; i < n; i++) {
                dot += d[off + i * n + j] * a[off + i * n + j]
                c += m[off + i * n + j]
              }

              for (let i = 0; i < n; i++) d[off + i * n + j] = (d[off + i * n + j] - dot) / c
            }
          }
        }

        // m0 = exp(clamp(z − max)): the max shift is gradient-free (SK ignores a constant), the clamp is not.
        const m0 = trace[0]
        const dz = new Float32Array(z.length)
        for (let off = 0; off < z.length; off += nn) {
          let mx = -Infinity
          for (let k = 0; k < nn; k++) mx = Math.max(mx, z[off + k])
          for (let k = 0; k < nn; k++) dz[off + k] = z[off + k] - mx > CLAMP ? d[off + k] * m0[off + k] : 0
        }

        return tf.tensor(dz, xs.shape, 'float32')
      },
    }
  }) as any) as (x: tf.Tensor) => tf.Tensor
  return f(logits)
}

/** Whether tensors live in host memory, where reading them back for a JS kernel costs nothing. */
export const hostBackend = () => ['wasm', 'cpu'].includes(tf.getBackend())
