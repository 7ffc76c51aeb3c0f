#!/usr/bin/env node
/**
 * A bare peer for the NAT lab: one GatewayLink (agent or client) with a UDP socket on 0.0.0.0:0, printing JSON
 * lines: `{"event":"open","session"}` once attached, `{"event":"nat",...}` when the gateway classified us.
 * Runs until SIGTERM.
 *
 *   node test/natlab/peer.ts --gateway wss://192.0.2.1:8443 --token T --ca-file ca.crt --role agent
 */
import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { GatewayLink } from '@narrowlink/peer-link';

const { values } = parseArgs({
  options: {
    gateway: { type: 'string' },
    token: { type: 'string' },
    'ca-file': { type: 'string' },
    role: { type: 'string', default: 'agent' },
  },
});
const role = values.role === 'client' ? 'client' : 'agent';
const print = (line: Record<string, unknown>): void => void process.stdout.write(`${JSON.stringify(line)}\n`);

const socket = dgram.createSocket('udp4');
await new Promise<void>((resolve) => socket.bind({ address: '0.0.0.0', port: 0 }, () => resolve()));
socket.on('error', () => {});
let openedAt = 0;
const link = new GatewayLink({
  url: values.gateway as string,
  role,
  token: values.token as string,
  ...(values['ca-file'] ? { caPem: readFileSync(values['ca-file'], 'utf8') } : {}),
  udpSocket: socket,
  ...(role === 'agent' ? { agent: { instanceId: `lab-${process.pid}`, expose: [] } } : {}),
});
link.on('open', (hello: { sessionId: string }) => {
  openedAt = performance.now();
  print({ event: 'open', session: hello.sessionId, localPort: socket.address().port });
});
link.on('nat', (nat: Record<string, unknown>) => print({ event: 'nat', ...nat, sinceOpenMs: Math.round(performance.now() - openedAt) }));
link.on('fatal', (error: Error) => {
  print({ event: 'fatal', message: error.message });
  process.exit(3);
});
link.start();
process.once('SIGTERM', () => {
  void link.close().then(() => {
    socket.close();
    process.exit(0);
  });
});
