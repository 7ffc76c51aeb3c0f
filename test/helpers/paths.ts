import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * `NL_TEST_SERVER_BUNDLES=1` runs the gateway, agent and operator from `dist/server/` (build it first:
 * `npm run build:server`) instead of the TypeScript sources, so any suite can check what the image ships.
 */
const bundles = process.env.NL_TEST_SERVER_BUNDLES === '1';

/** Entry points of the components, as the tests start them. */
export const SCRIPTS = {
  gateway: path.join(ROOT, bundles ? 'dist/server/gateway.mjs' : 'gateway/src/main.ts'),
  agent: path.join(ROOT, bundles ? 'dist/server/agent.mjs' : 'agent-sidecar/src/main.ts'),
  client: path.join(ROOT, 'client-cli/src/main.ts'),
  operator: path.join(ROOT, bundles ? 'dist/server/operator.mjs' : 'operator/src/main.ts'),
} as const;
