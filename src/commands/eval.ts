import {Args, Flags} from '@oclif/core'
import {backendFlag} from '../cli/flags.js'
import {BaseCommand, flagError} from '../cli/base.js'
import {table} from '../cli/render.js'
import {backendJson} from '../model/backend-names.js'
import {LIMITS, materialize, readCheckpoint} from '../model/checkpoint.js'
import {checkpointCorpus} from '../model/data.js'
import {evaluate} from '../model/train.js'

export default class Eval extends BaseCommand {
  static override description = 'Validation loss (nats/byte) of a checkpoint, on its own corpus or on --data.'
  static override examples = ['<%= config.bin %> <%= command.id %> runs/mhc', '<%= config.bin %> <%= command.id %> runs/mhc/ckpt-000400 --data notes.txt --json']
  static override args = {checkpoint: Args.string({required: true, description: 'checkpoint directory, or a run directory (uses its latest)'})}
  static override flags = {
    data: Flags.string({description: 'UTF-8 text to evaluate on (its last 10% is the validation split) [default: the checkpoint corpus]'}),
    'eval-windows': Flags.integer({min: 1, max: LIMITS.evalWindows, description: 'validation windows [default: the checkpoint setting]'}),
    backend: backendFlag(),
  }

  async run() {
    const {args, flags} = await this.parse(Eval).catch(flagError)
    this.verbose = flags.verbose
    const data = readCheckpoint(args.checkpoint) // verified before any work
    const {model, train} = data.manifest
    const corpus = checkpointCorpus(data.manifest.data, flags.data, model.seqLen + 1, false)
    const backend = await this.chooseBackend(flags.backend)
    const ck = materialize(data)
    const windows = flags['eval-windows'] ?? train.evalWindows
    const valLoss = await evaluate(ck.params, model, corpus.val, windows, train.batch)
    for (const v of Object.values(ck.params)) v.dispose()
    this.log(table(['checkpoint', 'arch', 'step', 'corpus', 'windows', 'val loss (nats/byte)'],
      [[ck.dir, model.arch, ck.manifest.step, corpus.source, windows, valLoss.toFixed(4)]]))
    return {backend: backendJson(backend), checkpoint: ck.dir, arch: model.arch, step: ck.manifest.step, data: corpus.source, windows, valLoss, bitsPerByte: valLoss / Math.LN2}
  }
}
