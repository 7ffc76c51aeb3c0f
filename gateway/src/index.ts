export { type AdminAppOptions, type AppOptions, buildAdminApp, buildApp } from './app.ts';
export { type ConfigSource, FileConfigSource, StaticConfigSource } from './config-source.ts';
export { GatewayAuthReason, GatewayError, GatewayErrorCode } from './errors.ts';
export { normalizeAgentRef } from './agent-registry.ts';
export { Gateway, type GatewayOptions } from './gateway.ts';
export { NatProbeServer, type NatProbeServerOptions } from './nat-probe.ts';
export { natStatusMessage, type PeerNat } from './nat-registry.ts';
export { createMetrics, type GatewayMetrics } from './metrics.ts';
