/**
 * `@narrowlink/operator/testing`: the pieces `main.ts` wires together, for tests and benchmarks that run the
 * control loop or the webhook in-process against a real API server (test/k8s, test/bench). Kept out of the
 * package's main entry, which holds the CRDs, error codes and pure reconcile cores; nothing outside the
 * repository should depend on this entry.
 */
export { GATEWAY_CONFIG_QUEUE_KEY, Operator, type OperatorOptions } from './controller.ts';
export { deriveLoginStampKey, LOGIN_STAMP_ANNOTATION, loginStamp } from './login-stamp.ts';
export { createOperatorMetrics, type OperatorMetrics } from './metrics.ts';
export type { OperatorSettings } from './reconcilers/context.ts';
export { ensureSigningKey, type SigningKey } from './signing-key.ts';
export type { SidecarSettings } from './webhook/patch.ts';
export { type ReviewEvent, type StartWebhookOptions, startWebhookServer, type WebhookServer } from './webhook/server.ts';
export { ensureWebhookCertificate, mutatingWebhookConfigurations, type ServingCertificate } from './webhook-ca.ts';
export { ensureGatewayCertificate, ensureOperatorCa, GatewayTlsManager, gatewaySans } from './gateway-tls.ts';
export { CaBundleDistributor } from './ca-bundle-distributor.ts';
export { applyJsonPatch } from './webhook/json-patch.ts';
export { sidecarPatch } from './webhook/patch.ts';
