import {Args, Flags} from '@oclif/core'

import {BaseCommand, flagError, UsageError} from '../cli/base.js'
import {backendFlag, numberFlag} from '../cli/flags.js'
import {backendJson} from '../model/engines/backends.js'
import {sample} from '../model/sample.js'
import {readCheckpoint} from '../model/train/run-dir.js'

export default class Sample extends BaseCommand {
  static override description = `Text written by a trained model: the prompt continued byte by byte.

Each byte is drawn from softmax(logits / --temperature), among the --top-k most likely (0: all); --temperature 0
always takes the most likely byte. The same --seed gives the same text. Bytes that are not valid UTF-8 print as �.`
  static override examples = [
    '<%= config.bin %> <%= command.id %> runs/mhc --prompt "Call me Ishmael" --tokens 200',
    '<%= config.bin %> <%= command.id %> runs/mhc/best --prompt "The whale" --temperature 0.8 --top-k 20 --seed 7 --json',
  ]
  static override args = {
    checkpoint: Args.string({required: true, description: 'checkpoint or run directory (its latest)'}),
  }
  static override flags = {
    prompt: Flags.string({default: 'The ', description: 'text to continue (UTF-8, at least one byte)'}),
    tokens: Flags.integer({default: 200, min: 1, max: 1_000_000, description: 'bytes to generate'}),
    temperature: numberFlag({
      description: 'softmax temperature; 0 = greedy',
      check: (v) => v >= 0 && v <= 100,
      rule: 'a number in [0, 100]',
      default: 1,
    }),
    'top-k': Flags.integer({
      default: 0,
      min: 0,
      max: 256,
      description: 'sample among the k most likely bytes (0: all)',
    }),
    seed: Flags.integer({default: 1, min: 0, max: 2 ** 32 - 1, description: 'seed of the draws'}),
    backend: backendFlag(),
  }

  async run() {
    const {args, flags} = await this.parse(Sample).catch(flagError)
    this.verbose = flags.verbose
    const prompt = new TextEncoder().encode(flags.prompt)
    if (prompt.length === 0) throw new UsageError('--prompt must hold at least one byte')
    const ck = readCheckpoint(args.checkpoint)
    const {model} = ck.manifest
    const engines = await this.openEngines(flags.backend, {model, logits: true})
    const engine = await engines.create({model, batch: 1})
    // Streamed to the terminal as drawn; under --json only the result. A byte that ends a multi-byte character
    // completes it: the streaming decoder holds partial characters back.
    const decoder = new TextDecoder('utf8', {fatal: false})
    const live = !this.jsonEnabled()
    if (live) process.stdout.write(flags.prompt)
    let bytes: Uint8Array
    try {
      engine.load({params: ck.params})
      const options = {tokens: flags.tokens, temperature: flags.temperature, topK: flags['top-k'], seed: flags.seed}
      bytes = await sample(engine, prompt, options, (b) => {
        if (live) process.stdout.write(decoder.decode(Uint8Array.of(b), {stream: true}))
      })
    } finally {
      engine.dispose()
    }

    if (live) process.stdout.write(decoder.decode() + '\n')
    return {
      backend: backendJson(engines.report),
      checkpoint: ck.dir,
      step: ck.manifest.step,
      prompt: flags.prompt,
      text: new TextDecoder('utf8', {fatal: false}).decode(bytes),
      bytes: [...bytes],
      temperature: flags.temperature,
      topK: flags['top-k'],
      seed: flags.seed,
    }
  }
}
