export { type AppOptions, buildApp } from './app.ts';
export { type ConfigSource, FileConfigSource, StaticConfigSource } from './config-source.ts';
export { GatewayError, GatewayErrorCode } from './errors.ts';
export { Gateway, type GatewayOptions, natStatusMessage, normalizeAgentRef, type PeerNat } from './gateway.ts';
export { NatProbeServer, type NatProbeServerOptions } from './nat-probe.ts';
export { createMetrics, type GatewayMetrics } from './metrics.ts';
