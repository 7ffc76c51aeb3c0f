/**
 * `npm run build:server` as the image runs it: builds into a temp directory, then starts the bundled gateway and
 * agent as real processes (TLS on loopback, an agent token, a free NAT probe port pair instead of 3478) with the
 * Node options and environment runtime-deps.json names, and sends bytes client → gateway → agent → echo server through them.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { builtinModules } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { GatewayLink } from '@narrowlink/peer-link';
import { generateSigningKeyPair, signToken } from '@narrowlink/protocol';
import { MuxDuplex } from '@narrowlink/protocol/stream';
import { allowAllGatewayConfig } from '../test/helpers/gateway-config.ts';
import { freeUdpPortPair } from '../test/helpers/ports.ts';
import { type StartedProcess, startProcess, stopAll } from '../test/helpers/processes.ts';
import { startEchoServer, type TestServer } from '../test/helpers/tcp-fixtures.ts';
import { makeTestCertificate, type TestCertificate } from '../test/helpers/tls.ts';
import { asciiOnly, buildServer, NODE_OPTIONS, ROOT, RUNTIME_ENV, type RuntimeDeps, SERVER_ENTRIES } from './build-server.ts';

const run = promisify(execFile);
/** A line of /proc/<pid>/maps for the QUIC binding's shared object (@matrixai/quic-<platform>/*.node, or a prebuild). */
const QUIC_BINDING_MAPPED = /@matrixai\/quic[^\n]*\.node$/m;

/** Every file under `dir`, relative. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => path.relative(dir, path.join(e.parentPath, e.name)));
}

describe('npm run build:server', { timeout: 240_000 }, () => {
  let out: string;
  let deps: RuntimeDeps;

  before(async () => {
    // Inside the repository (.tmp/ is git-ignored): the bundles resolve what stays external from a node_modules
    // above them, as the image's dist/ does from the node_modules next to it.
    await mkdir(path.join(ROOT, '.tmp'), { recursive: true });
    out = await mkdtemp(path.join(ROOT, '.tmp', 'build-server-'));
    deps = await buildServer({ outDir: out });
  });
  after(async () => {
    await stopAll();
    await rm(out, { recursive: true, force: true });
  });

  it('writes one ES module per component, plain ASCII JavaScript with no TypeScript and no workspace imports', async () => {
    const files = await filesUnder(out);
    for (const component of Object.keys(SERVER_ENTRIES)) assert.ok(files.includes(`${component}.mjs`), `${component}.mjs in ${files.join(', ')}`);
    for (const file of files.filter((f) => f.endsWith('.mjs'))) {
      const text = await readFile(path.join(out, file), 'utf8');
      assert.equal(asciiOnly(text), text, `${file} holds non-ASCII characters (V8 would keep it as a two-byte string)`);
      assert.doesNotMatch(text, /from ['"]\.{1,2}\/[^'"]*\.ts['"]|from ['"]@narrowlink\//, `${file} imports TypeScript or a workspace package`);
      // Only what runtime-deps.json lists may be imported from a package at run time.
      for (const match of text.matchAll(/(?:^import[^'"]*|import\()['"]([^'".][^'"]*)['"]/gm)) {
        const specifier = match[1] as string;
        if (specifier.startsWith('node:') || builtinModules.includes(specifier)) {
          // Built-ins are required, not imported (builtinsViaRequire); the banner's node:module is the one import.
          // (`import('node:stream')` also appears in the JSDoc types of bundled packages: comment lines do not count.)
          const line = text.slice(text.lastIndexOf('\n', match.index) + 1, (match.index ?? 0) + match[0].length);
          if (!/^\s*(\/?\*|\/\/)/.test(line)) assert.equal(specifier, 'node:module', `${file} imports the built-in ${specifier} (its ES module facade loads its lazy exports)`);
          continue;
        }
        const name = specifier.startsWith('@') ? specifier.split('/').slice(0, 2).join('/') : (specifier.split('/')[0] as string);
        assert.ok(name in deps.dependencies || ['utf-8-validate'].includes(name), `${file} imports ${specifier}, which runtime-deps.json does not carry`);
      }
    }
  });

  it('writes runtime-deps.json: exact versions of what stays outside, Node options NODE_OPTIONS accepts', async () => {
    const written = JSON.parse(await readFile(path.join(out, 'runtime-deps.json'), 'utf8')) as RuntimeDeps;
    assert.deepEqual(written, deps);
    const peerLink = JSON.parse(await readFile(path.join(ROOT, 'peer-link', 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    assert.equal(written.dependencies['@matrixai/quic'], peerLink.dependencies['@matrixai/quic']);
    for (const version of Object.values(written.dependencies)) assert.match(version, /^\d+\.\d+\.\d+$/);
    assert.deepEqual(written.nodeOptions, NODE_OPTIONS);
    assert.deepEqual(written.env, RUNTIME_ENV);
    for (const env of Object.values(written.env)) for (const [name, value] of Object.entries(env)) assert.match(`${name}=${value}`, /^[A-Z_]+=\S+$/);
    for (const [component, options] of Object.entries(written.nodeOptions)) {
      // The chart or a user may pass them through NODE_OPTIONS, which refuses some V8 flags (e.g. --lite-mode).
      const { stdout } = await run(process.execPath, ['-e', 'process.stdout.write("ok")'], { env: { ...process.env, NODE_OPTIONS: options.join(' ') } });
      assert.equal(stdout, 'ok', `${component}: NODE_OPTIONS=${options.join(' ')}`);
    }
  });

  it('each bundle answers --help', async () => {
    for (const component of Object.keys(SERVER_ENTRIES)) {
      const { stdout } = await run(process.execPath, [path.join(out, `${component}.mjs`), '--help'], { env: { ...process.env, NODE_OPTIONS: '' } });
      assert.match(stdout, new RegExp(`^narrowlink-${component}: `), component);
    }
  });

  it('refuses incomplete flags with a typed error and exit 2, like the sources', async () => {
    const child = spawn(process.execPath, [path.join(out, 'agent.mjs'), '--gateway', 'ws://127.0.0.1:1'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString('utf8');
    });
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    assert.equal(code, 2);
    assert.match(stderr, /^narrowlink-agent: NL_ERR_\w+: missing --token or --token-file/);
  });

  describe('the bundled gateway and agent, attached on loopback with TLS', () => {
    let cert: TestCertificate;
    let echo: TestServer;
    let gateway: StartedProcess;
    let agent: StartedProcess;
    let clientToken: string;

    before(async () => {
      cert = await makeTestCertificate();
      echo = await startEchoServer();
      const keys = await generateSigningKeyPair();
      const configFile = path.join(cert.dir, 'gateway.json');
      await writeFile(configFile, allowAllGatewayConfig(keys.publicKeyPem, [{ name: 'bundled', expose: [{ name: 'echo', port: echo.port }] }], 'g'));
      const env = { NODE_OPTIONS: undefined, NARROWLINK_GATEWAY_LISTEN: undefined };
      gateway = await startProcess(
        'bundled gateway',
        [
          ...NODE_OPTIONS.gateway,
          path.join(out, 'gateway.mjs'),
          ...['--config', configFile, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--drain-ms', '500'],
          ...['--tls-cert', cert.certFile, '--tls-key', cert.keyFile, '--nat-probe-port', String(await freeUdpPortPair())],
        ],
        { env: { ...env, ...RUNTIME_ENV.gateway } },
      );
      const agentTokenFile = path.join(cert.dir, 'agent.jwt');
      await writeFile(agentTokenFile, await signToken(keys.privateKeyPem, { typ: 'agent', sub: 'default/bundled', ttlSeconds: 600 }), { mode: 0o600 });
      agent = await startProcess(
        'bundled agent',
        [
          ...NODE_OPTIONS.agent,
          path.join(out, 'agent.mjs'),
          ...['--gateway', String(gateway.readyLine.url), '--token-file', agentTokenFile, '--ca-file', cert.caFile],
          ...['--expose', `echo=127.0.0.1:${echo.port}`],
        ],
        { env: { ...env, ...RUNTIME_ENV.agent } },
      );
      clientToken = await signToken(keys.privateKeyPem, { typ: 'client', sub: 'u', groups: ['g'], ttlSeconds: 600 });
    });
    after(async () => {
      await agent?.stop();
      await gateway?.stop();
      await echo?.close();
      await cert?.remove();
    });

    it('relays a stream from a client to the exposed port of the agent, bytes intact', async () => {
      const link = new GatewayLink({ url: String(gateway.readyLine.url), role: 'client', token: clientToken, caPem: cert.ca, reconnect: false }).start();
      try {
        await link.waitOpen(10_000);
        const { stream: muxStream } = await link.openStream({ agent: 'bundled', port: 'echo', mode: 'relay' }, 10_000);
        const stream = new MuxDuplex(muxStream);
        const payload = Buffer.alloc(256 * 1024);
        for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) % 251;
        const received: Buffer[] = [];
        let length = 0;
        // The echo server ends its side after ours: the whole echo, then a clean end, before the session closes.
        const done = new Promise<void>((resolve, reject) => {
          stream.on('data', (chunk: Buffer) => {
            received.push(chunk);
            length += chunk.length;
          });
          stream.once('end', resolve);
          stream.once('error', reject);
        });
        stream.end(payload);
        await done;
        assert.equal(length, payload.length);
        assert.ok(Buffer.concat(received).equals(payload));
      } finally {
        await link.close();
      }
    });

    it('has not loaded the native QUIC binding: the direct path loads it on its first connection', async () => {
      const maps = await readFile(`/proc/${agent.child.pid}/maps`, 'utf8');
      assert.doesNotMatch(maps, QUIC_BINDING_MAPPED);
      // The agent still offers the direct path (its identity made, its UDP socket bound): nothing was turned off.
      assert.equal(agent.lines.find((line) => String(line.msg).startsWith('no direct path')), undefined, agent.tail());
      const pid = agent.child.pid as number;
      const inodes = new Set<string>();
      for (const fd of await readdir(`/proc/${pid}/fd`)) {
        const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
        const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
        if (inode) inodes.add(inode);
      }
      const udp = (await readFile(`/proc/${pid}/net/udp`, 'utf8')).split('\n').slice(1);
      assert.ok(udp.some((line) => inodes.has(line.trim().split(/\s+/)[9] ?? '')), 'the agent holds a bound UDP socket');
    });

    it('brings a direct path up to the bundled agent, which loads the QUIC binding for it', async () => {
      const tokenFile = path.join(cert.dir, 'client.jwt');
      await writeFile(tokenFile, clientToken, { mode: 0o600 });
      const forward = await startProcess(
        'forward (auto)',
        [
          path.join(ROOT, 'client-cli', 'src', 'main.ts'),
          ...['forward', '127.0.0.1:0', 'bundled:echo', '--mode', 'auto', '-o', 'json'],
          ...['--gateway', String(gateway.readyLine.url), '--token-file', tokenFile, '--ca-file', cert.caFile],
        ],
        { env: { NODE_OPTIONS: undefined, XDG_CONFIG_HOME: path.join(cert.dir, 'xdg') } },
      );
      try {
        const port = (forward.readyLine.listeners as Array<{ port: number }>)[0]?.port as number;
        // The first stream goes over the relay and makes the client ask for a direct path.
        const echoed = await new Promise<Buffer>((resolve, reject) => {
          const socket = net.connect(port, '127.0.0.1', () => socket.end('first'));
          const chunks: Buffer[] = [];
          socket.on('data', (chunk: Buffer) => chunks.push(chunk));
          socket.on('end', () => resolve(Buffer.concat(chunks)));
          socket.on('error', reject);
        });
        assert.equal(echoed.toString(), 'first');
        await forward.waitFor((line) => line.event === 'direct-up', 15_000);
        const maps = await readFile(`/proc/${agent.child.pid}/maps`, 'utf8');
        assert.match(maps, QUIC_BINDING_MAPPED);
      } finally {
        await forward.stop();
      }
    });

    it('counts the agent session on the admin listener of the gateway', async () => {
      const text = await new Promise<string>((resolve, reject) => {
        net
          .connect(Number(gateway.readyLine.adminPort), '127.0.0.1', function (this: net.Socket) {
            this.end('GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n');
            const chunks: Buffer[] = [];
            this.on('data', (c: Buffer) => chunks.push(c));
            this.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
          })
          .on('error', reject);
      });
      assert.match(text, /^narrowlink_gateway_sessions\{kind="agent"\} 1$/m);
    });
  });
});
