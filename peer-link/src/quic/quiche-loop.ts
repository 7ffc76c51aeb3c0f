/**
 * Former home of the whole QUIC stack, now split into endpoint.ts, connection.ts, stream.ts and config.ts
 * (ADR 0007). Kept as a re-export while test/bench/direct-peer.ts imports it by path; delete it once that imports
 * `@narrowlink/peer-link`.
 */
export { type AcceptOptions, type ConnectOptions, QuicheEndpoint, type QuicheEndpointOptions } from './endpoint.ts';
