/** Kubernetes credentials for the gateway: in-cluster service account, or a kubeconfig file. */
// From its own module, not the package index: the index brings client-node's generated API clients and their HTTP
// stack, which the gateway never uses (RestKubeClient makes the requests), into the bundle and the process (ADR 0014).
import { KubeConfig } from '@kubernetes/client-node/dist/config.js';
import { type KubeClient, RestKubeClient } from '@narrowlink/kube';

export async function loadFromDefaultOrFile(kubeconfigPath: string | undefined): Promise<KubeClient> {
  const kc = new KubeConfig();
  if (kubeconfigPath) kc.loadFromFile(kubeconfigPath);
  else kc.loadFromDefault();
  return await RestKubeClient.fromKubeConfig(kc);
}
