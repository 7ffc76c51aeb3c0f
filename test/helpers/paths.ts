import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Entry points of the components, as the tests start them. */
export const SCRIPTS = {
  gateway: path.join(ROOT, 'gateway/src/main.ts'),
  agent: path.join(ROOT, 'agent-sidecar/src/main.ts'),
  client: path.join(ROOT, 'client-cli/src/main.ts'),
  operator: path.join(ROOT, 'operator/src/main.ts'),
} as const;
