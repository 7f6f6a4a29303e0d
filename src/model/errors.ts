/**
 * Bad input the user can fix: a flag, a file, a checkpoint, a config. Commands turn it into one `Error:` line and
 * exit code 2. Messages are forced onto one short line: file names and parser messages can contain newlines, and
 * messages quoting values from a corrupt file (a fuzzed header can hold megabytes) must stay readable.
 */
export class InputError extends Error {
  constructor(message: string, maxLength = 500) {
    const line = message.replaceAll(/[\r\n]+/g, ' ')
    super(line.length > maxLength ? `${line.slice(0, maxLength)}… (${line.length - maxLength} more characters)` : line)
    this.name = new.target.name
  }
}

/** Where a non-finite step started. `layer` is the connection index l (blocks.b.attn = 2b, blocks.b.mlp = 2b+1); null for the embedding or the head. */
export interface NonFiniteOrigin {
  pass: 'forward' | 'backward'
  layer: number | null
  where: string
}

export interface NonFiniteEvent {
  step: number
  loss: number
  gradNorm: number
  origin: NonFiniteOrigin
  action: 'stop' | 'skip' | 'rollback' // what was done about it (the --on-nonfinite policy)
  restoredStep?: number // rollback: the step of the state restored
  lrScale?: number // rollback: the lr scale from now on
}

/** Training diverged and the policy says stop: exit 3. */
export class NonFiniteError extends Error {
  constructor(
    message: string,
    readonly event?: NonFiniteEvent,
  ) {
    super(message)
    this.name = 'NonFiniteError'
  }
}
