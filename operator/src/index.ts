/** Public API of the operator package: CRD definitions and types, error codes, and the pure reconcile cores. */
export * from './crds/index.ts';
export * from './errors.ts';
export * from './labels.ts';
export { createOperatorMetrics, type OperatorMetrics } from './metrics.ts';
export * from './names.ts';
export * from './objects.ts';
export * from './reconcilers/agent-token/desired.ts';
export * from './reconcilers/agent/desired.ts';
export * from './reconcilers/certificates/desired.ts';
export * from './reconcilers/client-login/desired.ts';
export * from './reconcilers/conditions.ts';
export * from './reconcilers/domains.ts';
export * from './reconcilers/gateway-config/desired.ts';
export * from './reconcilers/policy/desired.ts';
export * from './webhook/errors.ts';
export { SIDECAR_COMMAND, SIDECAR_ENV } from './webhook/patch.ts';
