// A tiny seeded PRNG (mulberry32) whose whole state is one uint32, so a checkpoint can store it and a resumed run
// draws exactly the batches the uninterrupted run would have drawn.
export class Rng {
  state: number
  private spare: number | undefined

  constructor(seed: number) {
    this.state = seed >>> 0
  }

  /** Uniform uint32. */
  nextU32(): number {
    this.state = (this.state + 0x6d_2b_79_f5) >>> 0
    let t = this.state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return (t ^ (t >>> 14)) >>> 0
  }

  /** Uniform in [0, 1). */
  uniform(): number {
    return this.nextU32() / 4_294_967_296
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.uniform() * n)
  }

  /** Standard normal (Box-Muller; the second value is cached, which only init uses). */
  normal(): number {
    if (this.spare !== undefined) {
      const s = this.spare
      this.spare = undefined
      return s
    }

    const u = 1 - this.uniform()
    const v = this.uniform()
    const r = Math.sqrt(-2 * Math.log(u))
    this.spare = r * Math.sin(2 * Math.PI * v)
    return r * Math.cos(2 * Math.PI * v)
  }
}
