export { LinkError, LinkErrorCode } from './errors.ts';
export { GatewayLink, type GatewayLinkOptions, type LinkLogger, type LinkState, type LinkStats } from './gateway-link.ts';
export { type BridgeResult, bridgeSocket } from './bridge.ts';
