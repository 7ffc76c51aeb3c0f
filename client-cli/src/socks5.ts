/**
 * SOCKS5 server side (RFC 1928, RFC 1929 username/password), CONNECT only.
 *
 * The destination host names the agent: `AGENT`, `AGENT.NAMESPACE`, either optionally followed by
 * `.narrowlink`; the destination port is the agent's exposed port. The success reply is sent only
 * after the agent's dial succeeded, so a client's connect() fails when the far end does.
 */
import type { Socket } from 'node:net';

export const SocksReply = {
  SUCCEEDED: 0x00,
  GENERAL_FAILURE: 0x01,
  NOT_ALLOWED: 0x02,
  NETWORK_UNREACHABLE: 0x03,
  HOST_UNREACHABLE: 0x04,
  CONNECTION_REFUSED: 0x05,
  TTL_EXPIRED: 0x06,
  COMMAND_NOT_SUPPORTED: 0x07,
  ADDRESS_TYPE_NOT_SUPPORTED: 0x08,
} as const;

/** Maps a Narrowlink stream error code to the closest SOCKS5 reply. */
export function socksReplyFor(streamCode: string | undefined): number {
  switch (streamCode) {
    case 'DENIED':
      return SocksReply.NOT_ALLOWED;
    case 'NO_AGENT':
      return SocksReply.HOST_UNREACHABLE;
    case 'DIAL_FAILED':
      return SocksReply.CONNECTION_REFUSED;
    case 'TIMEOUT':
      return SocksReply.TTL_EXPIRED;
    default:
      return SocksReply.GENERAL_FAILURE;
  }
}

export class SocksProtocolError extends Error {
  readonly reply: number;
  constructor(message: string, reply: number = SocksReply.GENERAL_FAILURE) {
    super(message);
    this.reply = reply;
  }
}

/** Reads exact byte counts from a paused socket. */
class ByteReader {
  readonly #socket: Socket;
  #buffer = Buffer.alloc(0);
  constructor(socket: Socket) {
    this.#socket = socket;
  }
  async read(n: number): Promise<Buffer> {
    while (this.#buffer.length < n) {
      const chunk = await new Promise<Buffer | null>((resolve, reject) => {
        const onReadable = (): void => {
          cleanup();
          resolve((this.#socket.read() as Buffer | null) ?? Buffer.alloc(0));
        };
        const onEnd = (): void => {
          cleanup();
          resolve(null);
        };
        const onError = (error: Error): void => {
          cleanup();
          reject(error);
        };
        const cleanup = (): void => {
          this.#socket.off('readable', onReadable);
          this.#socket.off('end', onEnd);
          this.#socket.off('close', onEnd);
          this.#socket.off('error', onError);
        };
        const ready = this.#socket.read() as Buffer | null;
        if (ready) return resolve(ready);
        // 'end' may already have fired (during the read() above or between two calls): waiting would hang.
        if (this.#socket.readableEnded || this.#socket.destroyed) return resolve(null);
        this.#socket.on('readable', onReadable);
        this.#socket.on('end', onEnd);
        this.#socket.on('close', onEnd);
        this.#socket.on('error', onError);
      });
      if (chunk === null) throw new SocksProtocolError('client closed during the SOCKS handshake');
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
    }
    const out = this.#buffer.subarray(0, n);
    this.#buffer = this.#buffer.subarray(n);
    return out;
  }
  /** Bytes read past the handshake (a client that sends data early); put back before piping. */
  rest(): Buffer {
    return this.#buffer;
  }
}

export interface SocksRequest {
  host: string;
  port: number;
  /** Bytes the client sent after its request, to forward first. */
  early: Buffer;
}

export interface SocksAuth {
  username: string;
  password: string;
}

/** Runs the handshake up to the CONNECT request. Throws SocksProtocolError (after replying) on bad input. */
export async function readSocksRequest(socket: Socket, auth: SocksAuth | undefined): Promise<SocksRequest> {
  const reader = new ByteReader(socket);
  const [version, methodCount] = await reader.read(2);
  if (version !== 0x05) throw new SocksProtocolError(`not SOCKS5 (version byte ${version})`);
  const methods = await reader.read(methodCount as number);
  const wanted = auth ? 0x02 : 0x00;
  if (!methods.includes(wanted)) {
    socket.write(Buffer.from([0x05, 0xff]));
    throw new SocksProtocolError(auth ? 'client does not offer username/password authentication' : 'client offers no acceptable method');
  }
  socket.write(Buffer.from([0x05, wanted]));
  if (auth) {
    const [subVersion, userLength] = await reader.read(2);
    if (subVersion !== 0x01) throw new SocksProtocolError('bad username/password sub-negotiation version');
    const username = (await reader.read(userLength as number)).toString('utf8');
    const [passLength] = await reader.read(1);
    const password = (await reader.read(passLength as number)).toString('utf8');
    const ok = username === auth.username && password === auth.password;
    socket.write(Buffer.from([0x01, ok ? 0x00 : 0x01]));
    if (!ok) throw new SocksProtocolError('wrong SOCKS username or password', SocksReply.NOT_ALLOWED);
  }
  const [v, command, , addressType] = await reader.read(4);
  if (v !== 0x05) throw new SocksProtocolError('bad request version');
  let host: string;
  if (addressType === 0x03) {
    const [length] = await reader.read(1);
    host = (await reader.read(length as number)).toString('utf8');
  } else if (addressType === 0x01) {
    host = [...(await reader.read(4))].join('.');
  } else if (addressType === 0x04) {
    const raw = await reader.read(16);
    host = (raw.toString('hex').match(/.{4}/g) ?? []).join(':');
  } else {
    await replyFailure(socket, SocksReply.ADDRESS_TYPE_NOT_SUPPORTED);
    throw new SocksProtocolError(`address type ${addressType} not supported`, SocksReply.ADDRESS_TYPE_NOT_SUPPORTED);
  }
  const port = (await reader.read(2)).readUInt16BE(0);
  if (command !== 0x01) {
    await replyFailure(socket, SocksReply.COMMAND_NOT_SUPPORTED);
    throw new SocksProtocolError(`SOCKS command ${command} not supported (CONNECT only)`, SocksReply.COMMAND_NOT_SUPPORTED);
  }
  return { host, port, early: reader.rest() };
}

/** `demo`, `demo.team`, `demo.narrowlink`, `demo.team.narrowlink` → agent reference, or undefined. */
export function agentFromSocksHost(host: string): string | undefined {
  const name = host.toLowerCase().replace(/\.$/, '').replace(/\.narrowlink$/, '');
  const parts = name.split('.');
  const label = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
  if (parts.length === 1 && label.test(parts[0] as string)) return parts[0];
  if (parts.length === 2 && parts.every((p) => label.test(p))) return `${parts[1]}/${parts[0]}`;
  return undefined;
}

export function replySuccess(socket: Socket): void {
  socket.write(Buffer.from([0x05, SocksReply.SUCCEEDED, 0x00, 0x01, 0, 0, 0, 0, 0, 0]));
}

export async function replyFailure(socket: Socket, reply: number): Promise<void> {
  if (socket.destroyed || !socket.writable) return;
  await new Promise<void>((resolve) => socket.end(Buffer.from([0x05, reply, 0x00, 0x01, 0, 0, 0, 0, 0, 0]), () => resolve()));
}
