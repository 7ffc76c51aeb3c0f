export * from './errors.ts';
export * from './frame-codec.ts';
export * from './messages.ts';
export * from './mux.ts';
export * from './session-timing.ts';
export * from './gateway-config.ts';
export * from './policy.ts';
export * from './tokens.ts';
