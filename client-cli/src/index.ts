export { CliError, CliErrorCode, ExitCode } from './errors.ts';
export { resolveSettings, type Settings } from './settings.ts';
export { agentFromSocksHost, socksReplyFor } from './socks5.ts';
export { parseForwardFlag, parseLocal, parseTarget } from './targets.ts';
export { type CachedLogin, writeLogin } from './credentials/cache.ts';
