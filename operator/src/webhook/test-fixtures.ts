/** Shared fixtures of the webhook's tests (not shipped API). */
import type { SidecarSettings } from './patch.ts';

/** Chart-default-like sidecar settings. */
export const TEST_SETTINGS: SidecarSettings = {
  image: 'ghcr.io/narrowlink/narrowlink-k8s:0.1.0',
  resources: { requests: { cpu: '10m', memory: '32Mi' }, limits: { memory: '128Mi' } },
  gatewayUrl: 'wss://narrowlink-gateway.narrowlink.svc:443',
  tokenAudience: 'narrowlink',
  tokenExpirationSeconds: 600,
};

/** Annotations that request injection with two ports. */
export const INJECT_ANNOTATIONS: Readonly<Record<string, string>> = {
  'narrowlink.io/inject': 'true',
  'narrowlink.io/expose': 'http=8080,metrics=9090',
};
