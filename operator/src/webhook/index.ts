/** Public API of the sidecar-injection webhook (wired into the operator binary by operator/src/main.ts). */
export * from './agent-name.ts';
export * from './annotations.ts';
export * from './config.ts';
export * from './errors.ts';
export * from './json-patch.ts';
export * from './login-request.ts';
export * from './patch.ts';
export * from './review.ts';
export * from './server.ts';
