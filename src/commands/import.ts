import {Args, Flags} from '@oclif/core'
import {existsSync, mkdirSync} from 'node:fs'
import {dirname, join, resolve} from 'node:path'

import {assertWritableDir, BaseCommand, flagError, UsageError} from '../cli/base.js'
import {table} from '../cli/render.js'
import {readSmallFile, writeCheckpoint} from '../model/io/checkpoint.js'
import {DEFAULT_CORPUS, loadCorpus} from '../model/io/data.js'
import {assertFreshDir, defaultImportTrain, importExport, KeyMap, parseKeyMap} from '../model/io/pytorch.js'
import {zerosLike} from '../model/params.js'

export default class Import extends BaseCommand {
  static override description = `Read a PyTorch model directory (what mhc export writes) into an mhc checkpoint.

DIR holds model.safetensors (or shards listed in model.safetensors.index.json; F32, F16, BF16 or F64 tensors) and
config.json ({"model": our model config}; mhc export also records the training config, step and corpus there).
--key-map reads a model whose names or layouts differ: {"<our name>": "<their name>" | {"name": …, "transpose": …}, "$ignore": ["<regex of their names>"]}; transpose says whether their tensor is nn.Linear's [out, in] (default: as mhc export writes it). Every mismatch (missing, unexpected, shape, dtype, non-finite) is reported by name in one error, and nothing is written. The checkpoint has fresh (zero) AdamW moments.`
  static override examples = [
    '<%= config.bin %> <%= command.id %> exported/mhc --out runs/from-torch/ckpt-000150',
    '<%= config.bin %> <%= command.id %> their-model --key-map names.json --config mhc-config.json --out ckpt',
  ]
  static override args = {
    dir: Args.string({required: true, description: 'directory with model.safetensors and config.json'}),
  }
  static override flags = {
    out: Flags.string({required: true, description: 'checkpoint directory to create (never overwritten)'}),
    'key-map': Flags.string({
      description: 'JSON file: our parameter name → their name and layout (see the description)',
    }),
    config: Flags.string({description: 'the model config to use instead of DIR/config.json'}),
    data: Flags.string({
      description: `the text the model was trained on, recorded in the checkpoint (over config.json's) [default: config.json's, else ${DEFAULT_CORPUS}]`,
    }),
  }

  async run() {
    const {args, flags} = await this.parse(Import).catch(flagError)
    this.verbose = flags.verbose
    assertWritableDir(flags.out, '--out')
    assertFreshDir(flags.out, '--out')
    const mapFile = flags['key-map']
    if (mapFile !== undefined && !existsSync(mapFile))
      throw new UsageError(`--key-map ${JSON.stringify(mapFile)}: no such file`)
    const keyMap: KeyMap | undefined =
      mapFile === undefined ? undefined : parseKeyMap(readSmallFile(mapFile, 16 << 20).toString('utf8'), mapFile)
    const imported = importExport(args.dir, {keyMap, configPath: flags.config})
    const {model, params, provenance} = imported
    const step = provenance.step ?? 0
    let data = flags.data === undefined ? provenance.data : undefined
    if (!data) {
      const corpus = loadCorpus(flags.data)
      data = {source: corpus.source, sha256: corpus.sha256, bytes: corpus.bytes}
    }

    // What config.json did not say is filled in, and said so (an export of ours says everything).
    const FILLED: Record<string, string> = {
      step: 'the step (0 used)',
      train: "the training config (the default preset's used)",
      data: `the corpus (${data.source} used)`,
      rng: 'the data-order RNG state (0 used)',
    }
    const filled = imported.defaulted.filter((k) => k !== 'data' || flags.data === undefined).map((k) => FILLED[k])
    if (filled.length > 0)
      this.logToStderr(`${flags.config ?? join(args.dir, 'config.json')} does not record ${filled.join(', ')}`)
    mkdirSync(dirname(resolve(flags.out)), {recursive: true})
    writeCheckpoint(
      flags.out,
      {step, params, m: zerosLike(model), v: zerosLike(model), dataRng: provenance.rng?.data ?? 0},
      model,
      provenance.train ?? defaultImportTrain(model, step),
      {data, metrics: provenance.metrics ?? {}, backend: 'import'},
    )
    this.log(
      table(
        ['from', 'arch', 'step', 'tensors', 'checkpoint'],
        [[args.dir, model.arch, step, Object.keys(params).length, flags.out]],
      ),
    )
    return {
      from: args.dir,
      out: flags.out,
      arch: model.arch,
      step,
      tensors: Object.keys(params).length,
      defaulted: imported.defaulted,
    }
  }
}
