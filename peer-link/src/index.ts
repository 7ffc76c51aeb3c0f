export { LinkError, LinkErrorCode } from './errors.ts';
export { GatewayLink, type GatewayLinkOptions, type LinkLogger, type LinkNatStatus, type LinkState, type LinkStats } from './gateway-link.ts';
export { type NatProbeOptions, type NatProbeOutcome, probeNat } from './nat-prober.ts';
export { type BridgeResult, bridgeDirect, bridgeSocket } from './bridge.ts';
export { DIRECT_STREAM_REVOKED, type DirectPathState, type DirectPathStatus, DirectPaths, type DirectPathsOptions, findAllowed } from './direct/direct-paths.ts';
export { DirectError, DirectErrorCode } from './quic/errors.ts';
export { DEFAULT_IDENTITY_LIFETIME_MS, fingerprint, generateIdentity, type PeerIdentity } from './quic/identity.ts';
export { type AcceptOptions, type ConnectOptions, QuicheEndpoint, type QuicheEndpointOptions } from './quic/quiche-loop.ts';
export type { DirectStream, DirectTransport, DirectTransportStats } from './quic/transport.ts';
