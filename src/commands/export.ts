import {Args, Flags} from '@oclif/core'

import {assertWritableDir, BaseCommand, flagError} from '../cli/base.js'
import {table} from '../cli/render.js'
import {assertFreshDir, EXPORT_CONFIG, EXPORT_WEIGHTS, exportCheckpoint} from '../model/io/pytorch.js'
import {readCheckpoint} from '../model/train/run-dir.js'

export default class Export extends BaseCommand {
  static override description = `Write a checkpoint for PyTorch: model.safetensors in PyTorch's layouts plus config.json.

Every parameter keeps its name (tok_emb.weight, blocks.0.attn.qkv.weight, conn.3.phi, …); the matrices applied as
y = x·W are transposed to nn.Linear's [out, in] (config.json lists them under "transposed"). python/mhc_ref.py loads
the directory (load(dir)); mhc import reads it back.`
  static override examples = [
    '<%= config.bin %> <%= command.id %> runs/mhc --out exported/mhc',
    "python3 -c \"import sys; sys.path.insert(0, 'python'); import mhc_ref; model, cfg = mhc_ref.load('exported/mhc')\"",
  ]
  static override args = {
    checkpoint: Args.string({required: true, description: 'checkpoint directory, or a run directory (its latest)'}),
  }
  static override flags = {
    out: Flags.string({required: true, description: 'directory to create (absent or empty; never overwritten)'}),
  }

  async run() {
    const {args, flags} = await this.parse(Export).catch(flagError)
    this.verbose = flags.verbose
    assertWritableDir(flags.out, '--out')
    assertFreshDir(flags.out, '--out')
    const ck = readCheckpoint(args.checkpoint)
    const config = exportCheckpoint(ck, flags.out)
    const {model, step} = ck.manifest
    this.log(
      table(
        ['checkpoint', 'arch', 'step', 'written', 'tensors', 'transposed ([out, in])'],
        [
          [
            ck.dir,
            model.arch,
            step,
            `${flags.out}/{${EXPORT_WEIGHTS},${EXPORT_CONFIG}}`,
            Object.keys(ck.params).length,
            config.transposed.length,
          ],
        ],
      ),
    )
    return {
      checkpoint: ck.dir,
      out: flags.out,
      arch: model.arch,
      step,
      tensors: Object.keys(ck.params).length,
      transposed: config.transposed,
    }
  }
}
