/**
 * Former home of the whole QUIC stack, now split into endpoint.ts, connection.ts, stream.ts and config.ts
 * (ADR 0007). Kept as a re-export for importers outside quic/ (peer-link's index, direct/, test/bench).
 */
export { type AcceptOptions, type ConnectOptions, QuicheEndpoint, type QuicheEndpointOptions } from './endpoint.ts';
