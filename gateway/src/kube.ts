/** Kubernetes credentials for the gateway: in-cluster service account, or a kubeconfig file. */
import { KubeConfig } from '@kubernetes/client-node';
import { type KubeClient, RestKubeClient } from '@narrowlink/kube';

export async function loadFromDefaultOrFile(kubeconfigPath: string | undefined): Promise<KubeClient> {
  const kc = new KubeConfig();
  if (kubeconfigPath) kc.loadFromFile(kubeconfigPath);
  else kc.loadFromDefault();
  return await RestKubeClient.fromKubeConfig(kc);
}
