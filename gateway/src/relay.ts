/**
 * Splices two mux streams (client leg and agent leg) with backpressure both ways.
 *
 * Bytes arriving on one leg are forwarded to the other as soon as that leg has send credit and its session's
 * transport is not blocked (its unsent bytes under the high-water mark, see protocol's send-buffer.ts), and credit
 * is returned to the sender only then. So the gateway holds at most one window per direction per stream, plus
 * one bounded send buffer per session, however slow either end reads.
 */
import { type MuxStream, StreamErrorCode } from '@narrowlink/protocol';

export interface SpliceCounters {
  /** Called with the payload size of every chunk forwarded in the given direction. */
  onBytes(direction: 'client_to_agent' | 'agent_to_client', bytes: number): void;
  /** Called with every change of the bytes held in the gateway's queues (positive or negative). */
  onQueued?(delta: number): void;
  /** Called once when both legs are closed. */
  onClosed(): void;
}

/** One direction of the splice: from `source` into `sink`. */
class Pipe {
  readonly #source: MuxStream;
  readonly #sink: MuxStream;
  readonly #count: (bytes: number) => void;
  readonly #queued: (delta: number) => void;
  readonly #queue: Uint8Array[] = [];
  #finPending = false;
  /** Bytes held in the queue; bounded by the window granted to the source. */
  queuedBytes = 0;

  constructor(source: MuxStream, sink: MuxStream, count: (bytes: number) => void, queued: (delta: number) => void) {
    this.#source = source;
    this.#sink = sink;
    this.#count = count;
    this.#queued = queued;
  }

  onData(data: Uint8Array): void {
    if (this.#queue.length === 0 && this.#sink.sendCredit >= data.length && !this.#sink.session.transportBlocked) {
      const raw = this.#source.session.lastRawData;
      // Zero-copy: the received message already is a DATA frame; rewrite its id and pass it on.
      if (raw && raw.length === data.length + 9 && Buffer.isBuffer(raw)) this.#sink.forwardDataMessage(raw, data.length);
      else this.#sink.write(data);
      this.#count(data.length);
      this.#source.consumed(data.length);
      return;
    }
    this.#queue.push(data);
    this.queuedBytes += data.length;
    this.#queued(data.length);
    this.flush();
  }

  /** Drops what is still queued (the stream ended abnormally). */
  discard(): void {
    if (this.queuedBytes > 0) this.#queued(-this.queuedBytes);
    this.queuedBytes = 0;
    this.#queue.length = 0;
  }

  onFin(): void {
    this.#finPending = true;
    this.flush();
  }

  flush(): void {
    while (this.#queue.length > 0 && this.#sink.sendCredit > 0) {
      const head = this.#queue[0] as Uint8Array;
      const sent = this.#sink.write(head);
      if (sent === 0) break;
      this.#count(sent);
      this.queuedBytes -= sent;
      this.#queued(-sent);
      this.#source.consumed(sent);
      if (sent === head.length) this.#queue.shift();
      else this.#queue[0] = head.subarray(sent);
    }
    if (this.#finPending && this.#queue.length === 0) {
      this.#finPending = false;
      this.#sink.fin();
    }
  }
}

/** Connects `client` and `agent` (both already open) until both directions end or either resets. */
export function splice(client: MuxStream, agent: MuxStream, counters: SpliceCounters): { up: Pipe; down: Pipe } {
  const queued = (delta: number): void => counters.onQueued?.(delta);
  const up = new Pipe(client, agent, (n) => counters.onBytes('client_to_agent', n), queued);
  const down = new Pipe(agent, client, (n) => counters.onBytes('agent_to_client', n), queued);
  let closedLegs = 0;
  const legClosed = (): void => {
    if (++closedLegs === 2) {
      up.discard();
      down.discard();
      counters.onClosed();
    }
  };
  client.handlers = {
    onData: (d) => up.onData(d),
    onFin: () => up.onFin(),
    onCredit: () => down.flush(),
    // Whichever side ended it (the peer, or this side on a protocol violation), end the other leg too;
    // reset() on an already closed leg is a no-op, so the two handlers cannot loop.
    onReset: (reset) => agent.reset(reset.code === StreamErrorCode.CANCELLED ? StreamErrorCode.CANCELLED : StreamErrorCode.PEER_GONE, `client: ${reset.message}`),
    onClose: legClosed,
  };
  agent.handlers = {
    onData: (d) => down.onData(d),
    onFin: () => down.onFin(),
    onCredit: () => up.flush(),
    onReset: (reset) => client.reset(reset.code === StreamErrorCode.CANCELLED ? StreamErrorCode.PEER_GONE : reset.code, `agent: ${reset.message}`),
    onClose: legClosed,
  };
  return { up, down };
}

/**
 * Ends both legs of a splice with a code of the gateway's own choosing for each (an idle timeout, say), instead of
 * the code one leg's reset would forward to the other: the client leg's reset handler is dropped first, its close
 * still counts for the splice.
 */
export function resetLegs(client: MuxStream, agent: MuxStream, clientCode: StreamErrorCode, agentCode: StreamErrorCode, message: string): void {
  const onClose = client.handlers.onClose;
  client.handlers = onClose ? { onClose } : {};
  client.reset(clientCode, message);
  agent.reset(agentCode, message);
}
