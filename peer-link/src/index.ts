export { LinkError, LinkErrorCode } from './errors.ts';
export { GatewayLink, type GatewayLinkOptions, type LinkLogger, type LinkNatStatus, type LinkState, type LinkStats } from './gateway-link.ts';
export { type NatProbeOptions, type NatProbeOutcome, probeNat } from './nat-prober.ts';
export { type BridgeResult, bridgeSocket } from './bridge.ts';
