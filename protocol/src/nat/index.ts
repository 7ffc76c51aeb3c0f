/** Direct-path NAT core: probe and punch codecs, NAT classification, punch planning, the punch state machine. */
export * from './classify.ts';
export * from './endpoint.ts';
export * from './lan-filter.ts';
export * from './probe-codec.ts';
export * from './punch-plan.ts';
export * from './punch-session.ts';
export * from './replay-window.ts';
