/** Facts a process reads about the pod it runs in. */
import { readFileSync } from 'node:fs';

/** Where the kubelet mounts the pod's ServiceAccount namespace. */
export const SERVICE_ACCOUNT_NAMESPACE_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace';

/**
 * The namespace this pod runs in: the ServiceAccount mount, else `$POD_NAMESPACE` (the downward API, for pods
 * that do not mount a token), else `undefined` (not in a pod: callers then want an explicit flag).
 */
export function podNamespace(options: { file?: string; env?: NodeJS.ProcessEnv } = {}): string | undefined {
  try {
    return readFileSync(options.file ?? SERVICE_ACCOUNT_NAMESPACE_FILE, 'utf8').trim();
  } catch {
    return (options.env ?? process.env).POD_NAMESPACE;
  }
}
