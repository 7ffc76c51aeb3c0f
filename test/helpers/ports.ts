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
