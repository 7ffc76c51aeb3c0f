/**
 * The gateway config the real-process tests write when they start a gateway by hand (outside test/e2e/stack.ts):
 * one signing key, the given agents, and one policy letting a group reach everything.
 */

/** An agent as these tests declare it (the gateway's schema fills in the rest). */
export interface TestAgent {
  name: string;
  mode?: 'relay';
  expose: Array<{ name: string; port: number }>;
}

/** JSON text of a GatewayConfig: `agents`, trusted `signingPublicKeyPem`, and Allow-everything for `group`. */
export function allowAllGatewayConfig(signingPublicKeyPem: string, agents: TestAgent[], group: string): string {
  return JSON.stringify({
    apiVersion: 'narrowlink.io/v1alpha1',
    kind: 'GatewayConfig',
    signingPublicKeys: [signingPublicKeyPem],
    agents,
    policies: [{ name: 'all', subjects: [{ kind: 'Group', name: group }], rules: [{ action: 'Allow' }] }],
  });
}
