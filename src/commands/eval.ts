import {Args, Flags} from '@oclif/core'

import {BaseCommand, flagError} from '../cli/base.js'
import {backendFlag, TRAIN_FLAGS} from '../cli/flags.js'
import {table} from '../cli/render.js'
import {backendJson} from '../model/engines/backends.js'
import {checkpointCorpus} from '../model/io/data.js'
import {evaluate} from '../model/train/loop.js'
import {readCheckpoint} from '../model/train/run-dir.js'

export default class Eval extends BaseCommand {
  static override description = 'Validation loss (nats/byte) of a checkpoint, on its own corpus or on --data.'
  static override examples = [
    '<%= config.bin %> <%= command.id %> runs/mhc',
    '<%= config.bin %> <%= command.id %> runs/mhc/ckpt-000400 --data notes.txt --json',
  ]
  static override args = {
    checkpoint: Args.string({
      required: true,
      description: 'checkpoint directory, or a run directory (uses its latest)',
    }),
  }
  static override flags = {
    data: Flags.string({
      description: 'UTF-8 text to evaluate on (its last 10% is the validation split) [default: the checkpoint corpus]',
    }),
    'eval-windows': TRAIN_FLAGS['eval-windows'],
    backend: backendFlag(),
  }

  async run() {
    const {args, flags} = await this.parse(Eval).catch(flagError)
    this.verbose = flags.verbose
    const ck = readCheckpoint(args.checkpoint) // verified before any work
    const {model, train} = ck.manifest
    const corpus = checkpointCorpus(ck.manifest.data, flags.data, model.seqLen + 1, false)
    const engines = await this.openEngines(flags.backend, {model})
    const engine = await engines.create({model, batch: train.batch})
    const windows = flags['eval-windows'] ?? train.evalWindows
    let valLoss: number
    try {
      engine.load({params: ck.params})
      valLoss = await evaluate(engine, corpus.val, windows, train.batch)
    } finally {
      engine.dispose()
    }

    this.log(
      table(
        ['checkpoint', 'arch', 'step', 'corpus', 'windows', 'val loss (nats/byte)'],
        [[ck.dir, model.arch, ck.manifest.step, corpus.source, windows, valLoss.toFixed(4)]],
      ),
    )
    return {
      backend: backendJson(engines.report),
      checkpoint: ck.dir,
      arch: model.arch,
      step: ck.manifest.step,
      data: corpus.source,
      windows,
      valLoss,
      bitsPerByte: valLoss / Math.LN2,
    }
  }
}
