/**
 * The peer's half of NAT probing (protocol/src/nat/README.md): sends authenticated probe requests to the
 * gateway's probe endpoints FROM THE UDP SOCKET THE QUIC ENDPOINT USES (the mapping of that socket is what a
 * direct path needs), collects the answers and builds the `nat_report` the gateway classifies with.
 *
 * Order matters and is kept here:
 * 1. endpoint 0 alone: a plain probe plus the filtering tests ("answer from the other port / other address"),
 *    each test tried {@link NatProbeOptions.filteringTests} times; wait for the answers or a short grace;
 * 2. only then the other endpoints, in index order (an endpoint-dependent NAT allocates mappings in the order
 *    the destinations are first contacted, and the gateway reads that order from the probe seqs).
 * Had we probed the other port first, our own NAT would already admit its answers and every filtering test
 * would pass. Unanswered probes are resent with a new seq (the gateway keeps a replay window); the whole
 * exchange ends at `timeoutMs` whatever happens, so blocked UDP costs a bounded wait and reports no responses.
 */
import type dgram from 'node:dgram';
import type { AddressInfo } from 'node:net';
import { networkInterfaces } from 'node:os';
import {
  decodeProbeResponse,
  type Endpoint,
  encodeProbeRequest,
  type FilteringTest,
  type NatProbeInfo,
  type NatReport,
  normalizeAddress,
  type ProbeResponse,
  rawDatagramKind,
  sessionIdBytes,
} from '@narrowlink/protocol';

export interface NatProbeOptions {
  /** The bound UDP socket shared with the QUIC endpoint. Other datagrams on it are left alone. */
  socket: dgram.Socket;
  /** `hello_ok.sessionId` of the session the probe info came with. */
  sessionId: string;
  info: NatProbeInfo;
  /** Upper bound for the whole exchange, ms; default 2000. */
  timeoutMs?: number;
  /** Resend interval for an unanswered probe, ms; default 200. */
  retryIntervalMs?: number;
  /** Tries per filtering test (answer from the other port / address); default 2 (the classifier's minimum). */
  filteringTests?: number;
  /** The host's addresses (injected in tests); default: the interfaces' addresses of the socket's family. */
  localAddresses?: readonly string[];
  /** Monotonic clock, ms; default performance.now. */
  now?: () => number;
}

export interface NatProbeOutcome {
  /** The `nat_report` to send to the gateway. */
  report: NatReport;
  /** Every authenticated answer, in arrival order. */
  responses: ProbeResponse[];
  /** Probe requests sent (retries included). */
  sent: number;
  durationMs: number;
  /** Round trip of the first answered probe, ms. */
  rttMs: number | undefined;
}

/** Floor of the wait for filtering-test answers after the plain answer, ms. */
const MIN_TEST_GRACE_MS = 50;

type ProbeKind = 'plain' | 'port' | 'address';

/** Runs the probe exchange; never rejects for network reasons (a closed socket ends it early). */
export function probeNat(options: NatProbeOptions): Promise<NatProbeOutcome> {
  const now = options.now ?? (() => performance.now());
  const timeoutMs = options.timeoutMs ?? 2000;
  const retryMs = options.retryIntervalMs ?? 200;
  const testTries = options.filteringTests ?? 2;
  const { socket, info } = options;
  const key = Buffer.from(info.key, 'base64');
  const sessionId = sessionIdBytes(options.sessionId);
  const bound = socket.address();
  const family = bound.family === 'IPv6' ? 6 : 4;
  const endpoints = info.endpoints
    .filter((e) => (family === 6) === e.address.includes(':'))
    .sort((a, b) => a.index - b.index);
  const byIndex = new Map(endpoints.map((e) => [e.index, e]));
  const first = endpoints[0];
  const hasPortPeer = first !== undefined && byIndex.has(first.index ^ 1);
  const hasAddressPeer = first !== undefined && byIndex.has(first.index ^ 2);
  const others = endpoints.slice(1);

  const startedAt = now();
  const deadline = startedAt + timeoutMs;
  const sentSeqs = new Map<number, { kind: ProbeKind; target: number; at: number }>();
  const responses: ProbeResponse[] = [];
  const answeredTargets = new Set<number>();
  let seq = 0;
  let sent = 0;
  let phase: 1 | 2 = 1;
  let rttMs: number | undefined;
  let plainAnswered = false;
  let plainAnsweredAt = 0;
  const tests = { port: { sent: 0, received: 0 }, address: { sent: 0, received: 0 } };
  let lastTestAt = 0;
  let nextPlainAt = 0;
  const nextAt = new Map<number, number>();
  let socketGone = false;

  return new Promise<NatProbeOutcome>((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    let done = false;

    const send = (target: number, kind: ProbeKind): void => {
      const to = byIndex.get(target);
      if (!to || socketGone) return;
      seq++;
      const bytes = encodeProbeRequest({ seq, sessionId, changePort: kind === 'port', changeAddress: kind === 'address' }, key);
      sentSeqs.set(seq, { kind, target, at: now() });
      sent++;
      try {
        socket.send(bytes, to.port, to.address, () => {});
      } catch {
        // The socket was closed under us (the process is stopping): report what we have.
        socketGone = true;
      }
    };

    const portNeedsTry = (): boolean => hasPortPeer && tests.port.received === 0 && tests.port.sent < testTries;
    const addressNeedsTry = (): boolean => hasAddressPeer && tests.address.received === 0 && tests.address.sent < testTries;
    const sendTests = (): void => {
      if (!first) return;
      if (portNeedsTry()) {
        send(first.index, 'port');
        tests.port.sent++;
      }
      if (addressNeedsTry()) {
        send(first.index, 'address');
        tests.address.sent++;
      }
      lastTestAt = now();
    };
    /** Time left for answers to the filtering tests after their last try. */
    const grace = (): number => Math.max(MIN_TEST_GRACE_MS, 3 * (rttMs ?? 0));
    const allTestsAnswered = (): boolean => (!hasPortPeer || tests.port.received > 0) && (!hasAddressPeer || tests.address.received > 0);

    const finish = (): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off('message', onMessage);
      socket.off('close', onClose);
      const report: NatReport = { type: 'nat_report', localEndpoints: localEndpoints(bound, options.localAddresses, endpoints) };
      const filtering: { changePort?: FilteringTest; changeAddress?: FilteringTest } = {};
      if (hasPortPeer) filtering.changePort = tests.port;
      if (hasAddressPeer) filtering.changeAddress = tests.address;
      if (filtering.changePort || filtering.changeAddress) report.filtering = filtering;
      resolve({ report, responses, sent, durationMs: now() - startedAt, rttMs });
    };

    const step = (): void => {
      if (done) return;
      const t = now();
      if (t >= deadline || socketGone || !first) return finish();
      let wakeAt = deadline;
      if (phase === 1) {
        if (!plainAnswered) {
          if (t >= nextPlainAt) {
            send(first.index, 'plain');
            // The first test tries go with the first plain probe; retries wait for the path to answer.
            if (tests.port.sent === 0 && tests.address.sent === 0) sendTests();
            nextPlainAt = t + retryMs;
          }
          wakeAt = Math.min(wakeAt, nextPlainAt);
        } else if (allTestsAnswered() || (!portNeedsTry() && !addressNeedsTry() && t >= lastTestAt + grace())) {
          phase = 2;
          if (others.length === 0) return finish();
        } else if (portNeedsTry() || addressNeedsTry()) {
          // The plain answer proves the path; test answers sent with it had a round trip's head start. Retry
          // those still missing shortly after (not at once: they may be a packet behind the plain answer).
          const retryAt = plainAnsweredAt + Math.max(10, rttMs ?? 0);
          if (t >= retryAt) sendTests();
          wakeAt = Math.min(wakeAt, t >= retryAt ? lastTestAt + grace() : retryAt);
        } else {
          wakeAt = Math.min(wakeAt, lastTestAt + grace());
        }
      }
      if (phase === 2) {
        if (others.every((e) => answeredTargets.has(e.index))) return finish();
        // In index order within one turn: the NAT sees them in this order.
        for (const e of others) {
          if (answeredTargets.has(e.index)) continue;
          const due = nextAt.get(e.index) ?? 0;
          if (t >= due) {
            send(e.index, 'plain');
            nextAt.set(e.index, t + retryMs);
          }
          wakeAt = Math.min(wakeAt, nextAt.get(e.index) as number);
        }
      }
      clearTimeout(timer);
      timer = setTimeout(step, Math.max(1, wakeAt - now()));
    };

    const onMessage = (bytes: Buffer, _rinfo: dgram.RemoteInfo): void => {
      if (done || rawDatagramKind(bytes) !== 'probe-response') return;
      let response: ProbeResponse;
      try {
        response = decodeProbeResponse(bytes, key);
      } catch {
        return; // forged, or for another session: ignore
      }
      const request = sentSeqs.get(response.seq);
      // Only answers to our own requests, once each, from the endpoint they name.
      if (!request || request.target !== response.receivedOn) return;
      sentSeqs.delete(response.seq);
      responses.push(response);
      answeredTargets.add(response.receivedOn);
      rttMs ??= now() - request.at;
      const moved = response.receivedOn ^ response.answeredFrom;
      // A test answer counts only while nothing has been sent elsewhere (phase 1): later our NAT admits it anyway.
      if (phase === 1 && (moved & 2) !== 0) tests.address.received++;
      else if (phase === 1 && (moved & 1) !== 0) tests.port.received++;
      if (request.kind === 'plain' && request.target === first?.index && !plainAnswered) {
        plainAnswered = true;
        plainAnsweredAt = now();
      }
      step();
    };
    const onClose = (): void => {
      socketGone = true;
      step();
    };
    socket.on('message', onMessage);
    socket.on('close', onClose);
    step();
  });
}

function isLoopbackAddress(address: string): boolean {
  return address.startsWith('127.') || address === '::1';
}

/**
 * The socket's local endpoints: its own address when bound to one, else every interface address of its family
 * with its port. Loopback addresses only when the gateway itself is on loopback (same host): they are no use as
 * LAN candidates between two machines.
 */
function localEndpoints(bound: AddressInfo, injected: readonly string[] | undefined, probeEndpoints: readonly { address: string }[]): Endpoint[] {
  const family = bound.family === 'IPv6' ? 'IPv6' : 'IPv4';
  const wildcard = bound.address === '0.0.0.0' || bound.address === '::';
  let addresses: string[];
  if (!wildcard) addresses = [bound.address];
  else if (injected) addresses = [...injected];
  else {
    const withLoopback = probeEndpoints.some((e) => isLoopbackAddress(e.address));
    addresses = Object.values(networkInterfaces())
      .flatMap((list) => list ?? [])
      .filter((i) => i.family === family && (withLoopback || !i.internal) && !(family === 'IPv6' && i.scopeid))
      .map((i) => i.address);
  }
  const out: Endpoint[] = [];
  for (const address of addresses) {
    try {
      const canonical = normalizeAddress(address);
      if (!out.some((e) => e.address === canonical)) out.push({ address: canonical, port: bound.port });
    } catch {
      // not an address we can report (zone id, ...): skip it
    }
  }
  return out.slice(0, 32);
}
