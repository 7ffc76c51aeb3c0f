import net from 'node:net';
import type { TestServer } from './tcp-fixtures.ts';

/** Server returned by {@link startEndlessSource}. */
export interface EndlessSource extends TestServer {
  /** Bytes handed to the kernel so far, over every connection. */
  bytesWritten(): number;
  /** Connections accepted so far. */
  connections(): number;
}

/**
 * A TCP server on 127.0.0.1 (random port) that writes to every connection as fast as the connection takes it,
 * forever: the same `chunkBytes` buffer again on each `drain`, so it allocates nothing per write and its own
 * memory stays flat however slowly the peer reads. Incoming bytes are discarded. For tests of what happens
 * between a producer that never stops and a consumer that does not read.
 *
 * @param chunkBytes - size of each write; default 64 KiB.
 */
export async function startEndlessSource(chunkBytes = 64 * 1024): Promise<EndlessSource> {
  const chunk = Buffer.alloc(chunkBytes, 0x5a);
  const sockets = new Set<net.Socket>();
  let written = 0;
  let accepted = 0;
  const server = net.createServer((socket) => {
    accepted++;
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    // Peers reset these connections on purpose; an unhandled 'error' must not crash the process.
    socket.on('error', () => undefined);
    socket.resume();
    const pump = (): void => {
      // write() returns false once the socket's buffer is above its high-water mark: wait for 'drain'.
      while (!socket.destroyed && socket.writable) {
        written += chunk.length;
        if (!socket.write(chunk)) return;
      }
    };
    socket.on('drain', pump);
    pump();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  if (typeof address !== 'object' || address === null) throw new Error('endless source has no TCP address');
  return {
    port: address.port,
    bytesWritten: () => written,
    connections: () => accepted,
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}
