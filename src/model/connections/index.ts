// The three residual connections, by --arch. A new kind: a definition file here, its maths in each engine.
import type {Arch, ModelConfig} from '../config.js'
import type {Connection} from './connection.js'

import {hyperConnection} from './hyper.js'
import {manifoldConnection} from './manifold.js'
import {residual} from './residual.js'

export type {Connection, ParamSpec, ResConstraint} from './connection.js'

export const CONNECTIONS: Record<Arch, Connection> = {baseline: residual, hc: hyperConnection, mhc: manifoldConnection}

export const connectionOf = (cfg: Pick<ModelConfig, 'arch'>): Connection => CONNECTIONS[cfg.arch]
