/**
 * What a failed dial means: every way a WebSocket upgrade to the gateway can fail, sorted into the answers that
 * retrying cannot change ("definitive": nothing listens there, the name does not exist, the certificate is not one
 * we trust, something that is not a gateway answered) and the ones a retry may fix (timeouts, resets, a gateway
 * that is starting or draining). One-shot users of the link (`failFast`) stop at a definitive answer; long-running
 * ones keep retrying and report the cause. Messages name the cause and the fix in one line, and never carry the
 * TLS library's internals.
 */
import { isIP } from 'node:net';
import tls from 'node:tls';
import { LinkError, LinkErrorCode } from '../errors.ts';

/** Whether `host` (a URL hostname, brackets allowed) can only be this machine: `localhost`, 127.0.0.0/8, ::1. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  return h === '::1' || h === '0:0:0:0:0:0:0:1';
}

/**
 * Refuses a gateway URL the link must never dial: not `ws://`/`wss://`, or cleartext `ws://` to a host that is not
 * loopback (the upgrade carries the bearer token, which anyone on the path could then replay). Thrown before any
 * socket exists, so not a byte leaves.
 */
export function checkGatewayUrl(url: string): URL {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new LinkError(LinkErrorCode.INSECURE_URL, `gateway URL "${url}" is not a URL; give wss://HOST[:PORT]`, { retryable: false, definitive: true });
  }
  if (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:') {
    throw new LinkError(LinkErrorCode.INSECURE_URL, `gateway URL "${url}" must start with wss:// (ws:// only on loopback)`, { retryable: false, definitive: true });
  }
  if (parsed.protocol === 'ws:' && !isLoopbackHost(parsed.hostname)) {
    throw new LinkError(
      LinkErrorCode.INSECURE_URL,
      `refusing cleartext ws:// to ${parsed.host}: the token would travel unencrypted; use wss://${parsed.host} (ws:// only on loopback)`,
      { retryable: false, definitive: true },
    );
  }
  return parsed;
}

/** The certificate a server presented, for messages: its names and its issuer. */
export interface PresentedCertificate {
  /** DNS names and IP addresses it is valid for (subjectAltName, else the subject CN). */
  names: string[];
  /** The issuer's CN (or O), as a person would recognise it. */
  issuer: string;
  /** Self-signed: issuer and subject are the same. */
  selfSigned: boolean;
  validTo: string | undefined;
}

function describeCertificate(cert: tls.PeerCertificate | undefined): PresentedCertificate | undefined {
  if (!cert || Object.keys(cert).length === 0) return undefined;
  const names = (cert.subjectaltname ?? '')
    .split(',')
    .map((entry) => entry.trim().replace(/^(DNS|IP Address):/, ''))
    .filter((entry) => entry.length > 0);
  if (names.length === 0 && cert.subject?.CN) names.push(String(cert.subject.CN));
  const issuer = String(cert.issuer?.CN ?? cert.issuer?.O ?? 'an unnamed issuer');
  const selfSigned = JSON.stringify(cert.issuer) === JSON.stringify(cert.subject);
  return { names, issuer, selfSigned, validTo: cert.valid_to };
}

/**
 * The certificate the server at `url` presents, read through a second handshake that sends nothing after it (the
 * first was refused by verification, so Node has dropped its certificate): only to name it in the message.
 * Undefined when it cannot be read within `timeoutMs`.
 */
export function inspectCertificate(url: URL, timeoutMs = 2000): Promise<PresentedCertificate | undefined> {
  return new Promise((resolve) => {
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const port = Number(url.port || 443);
    let done = false;
    const finish = (cert: PresentedCertificate | undefined): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(cert);
    };
    // Verification off on purpose: this socket only reads the certificate and is destroyed at once; no request,
    // token or proof is written to it.
    const socket = tls.connect({ host, port, rejectUnauthorized: false, ...(isIP(host) ? {} : { servername: host }) });
    socket.once('secureConnect', () => finish(describeCertificate(socket.getPeerCertificate())));
    socket.once('error', () => finish(undefined));
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    timer.unref();
  });
}

const UNTRUSTED = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
  'INVALID_CA',
]);
const EXPIRED = new Set(['CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID']);

/** Which TLS verification failure, or none. */
export type TlsFailureKind = 'untrusted-ca' | 'name-mismatch' | 'expired' | 'not-tls';

export function tlsFailureKind(error: { code?: string; message?: string }): TlsFailureKind | undefined {
  const code = error.code ?? '';
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return 'name-mismatch';
  if (UNTRUSTED.has(code)) return 'untrusted-ca';
  if (EXPIRED.has(code)) return 'expired';
  // A plain (non-TLS) server answering a TLS hello: OpenSSL reads its HTTP bytes as a bad record header.
  if (code.includes('WRONG_VERSION_NUMBER') || code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG' || /wrong version number|packet length too long/i.test(error.message ?? '')) {
    return 'not-tls';
  }
  return undefined;
}

function names(cert: PresentedCertificate | undefined): string {
  if (!cert) return '';
  return ` (certificate for ${cert.names.join(', ') || 'no names'}, issued by ${cert.selfSigned ? 'itself' : `"${cert.issuer}"`}${cert.validTo ? `, valid until ${cert.validTo}` : ''})`;
}

/**
 * The LinkError for a socket-level failure of a dial to `url` (the `ws` library's `error` event): DNS, TCP, TLS.
 * Definitive answers are `retryable` only when the link is not `failFast`.
 */
export async function classifySocketError(error: Error & { code?: string; cert?: tls.PeerCertificate }, url: URL, failFast: boolean): Promise<LinkError> {
  const code = error.code ?? '';
  const target = url.host;
  const definitive = (linkCode: LinkErrorCode, message: string): LinkError =>
    new LinkError(linkCode, message, { retryable: !failFast, definitive: true, cause: error });
  if (code === 'ECONNREFUSED') {
    return definitive(LinkErrorCode.CONNECTION_REFUSED, `nothing listens on ${target} (connection refused): is the gateway running, and is the port in --gateway right?`);
  }
  if (code === 'ENOTFOUND' || code === 'EAI_NONAME' || code === 'EAI_NODATA') {
    return definitive(LinkErrorCode.DNS, `cannot resolve ${url.hostname} (no such host): check the host name in --gateway`);
  }
  const kind = tlsFailureKind(error);
  if (kind === 'not-tls') {
    const linkError = definitive(LinkErrorCode.TLS, `${target} did not answer TLS (a plain server?): did you mean ws:// (loopback only), or the gateway's TLS port?`);
    linkError.tlsFailure = kind;
    return linkError;
  }
  if (kind) {
    const cert = describeCertificate(error.cert) ?? (await inspectCertificate(url));
    const message =
      kind === 'name-mismatch'
        ? `TLS: the gateway's certificate is not valid for ${url.hostname}${names(cert)}: use a name the certificate lists in --gateway`
        : kind === 'untrusted-ca'
          ? `TLS: the gateway's certificate is signed by a CA this machine does not trust${names(cert)}: pass that CA with --ca-file (narrowlink login fetches it)`
          : `TLS: the gateway's certificate has expired or is not yet valid${names(cert)}: renew the certificate, or check this machine's clock`;
    const linkError = definitive(LinkErrorCode.TLS, message);
    linkError.tlsFailure = kind;
    return linkError;
  }
  // Timeouts, resets, unreachable networks, EAI_AGAIN: the network may recover.
  return new LinkError(LinkErrorCode.UNREACHABLE, `cannot reach ${target}: ${code || error.message}`, { retryable: true, cause: error });
}

/**
 * The LinkError for an HTTP answer other than the upgrade. 401/403 are credential refusals (fatal unless the link
 * retries them); a gateway that says "later" (503 with its own code: starting, draining) is retried; anything else
 * is definitive, and without a gateway code it was not a Narrowlink gateway that answered.
 */
export function classifyHttpAnswer(
  status: number,
  body: { code?: string; message?: string },
  endpoint: URL,
  options: { failFast: boolean; retryAuthFailures: boolean },
): LinkError {
  const details = { status, ...(body.code ? { gatewayCode: body.code } : {}) };
  if (status === 401 || status === 403) {
    return new LinkError(LinkErrorCode.REFUSED, `gateway refused the session: HTTP ${status}${body.code ? ` ${body.code}` : ''}: ${body.message ?? 'no details'}`, {
      ...details,
      retryable: options.retryAuthFailures,
    });
  }
  if (body.code && status === 503) {
    return new LinkError(LinkErrorCode.REFUSED, `gateway not ready: HTTP 503 ${body.code}: ${body.message ?? 'no details'}`, { ...details, retryable: true });
  }
  if (!body.code) {
    return new LinkError(
      LinkErrorCode.NOT_GATEWAY,
      `not a Narrowlink gateway: HTTP ${status} on ${endpoint.pathname} from ${endpoint.host}: check the host and port in --gateway`,
      { ...details, retryable: !options.failFast, definitive: true },
    );
  }
  return new LinkError(LinkErrorCode.REFUSED, `gateway refused the session: HTTP ${status} ${body.code}: ${body.message ?? 'no details'}`, {
    ...details,
    retryable: !options.failFast,
    definitive: true,
  });
}
