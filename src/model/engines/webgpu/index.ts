export {NoAdapterError, requestDevice, uncaptured} from './gpu.js'
export type {DeviceOptions} from './gpu.js'
// The WebGPU training engine (Dawn through the npm package `webgpu`): see engine.ts and README.md.
export {WebGpuTrainer} from './trainer.js'
export type {ConnectionMaps, EngineOptions, StepHyper, StepStats} from './trainer.js'
