import dgram from 'node:dgram';
import net from 'node:net';

/**
 * Ask the kernel for a currently free TCP port on 127.0.0.1.
 *
 * Listens on `127.0.0.1:0`, reads the assigned port, and closes the listener again. There is an
 * unavoidable window between close and the caller's own bind in which another process could take the
 * port; prefer passing port 0 to the component under test when it supports that.
 *
 * @returns a TCP port number (1–65535) that was free at the time of the call.
 */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  server.unref();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (port === 0) throw new Error('freePort: could not read the assigned port');
  return port;
}

/**
 * A UDP port P on 127.0.0.1 with P+1 free too (a gateway's two NAT probe ports), found by binding both and letting
 * them go, so that a suite can give its gateway its own probe ports instead of the shared 3478. The same window as
 * {@link freePort} applies between the check and the gateway's bind.
 */
export async function freeUdpPortPair(): Promise<number> {
  const bind = (port: number): Promise<dgram.Socket | undefined> =>
    new Promise((resolve) => {
      const socket = dgram.createSocket('udp4');
      socket.once('error', () => resolve(undefined));
      socket.bind(port, '127.0.0.1', () => resolve(socket));
    });
  for (let attempt = 0; attempt < 20; attempt++) {
    const first = await bind(0);
    const port = first?.address().port ?? 0;
    const second = port > 0 && port < 65_535 ? await bind(port + 1) : undefined;
    first?.close();
    second?.close();
    if (second) return port;
  }
  throw new Error('no free pair of UDP ports');
}
