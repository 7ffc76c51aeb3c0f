import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Files and PEM strings produced by {@link makeTestCertificate}. */
export interface TestCertificate {
  /** Directory holding every file below (a fresh `mkdtemp` dir unless the caller passed one). */
  dir: string;
  /** Server certificate (PEM) for `localhost` and IP `127.0.0.1`, signed by the test CA. */
  certFile: string;
  /** Server private key (PEM, EC P-256, unencrypted). */
  keyFile: string;
  /** Self-signed test CA certificate (PEM); clients trust this (`ca:` option / `NODE_EXTRA_CA_CERTS`). */
  caFile: string;
  /** Contents of `certFile`. */
  cert: string;
  /** Contents of `keyFile`. */
  key: string;
  /** Contents of `caFile`. */
  ca: string;
  /** Delete `dir` recursively. */
  remove(): Promise<void>;
}

/**
 * Create a throw-away CA and a server certificate for `localhost` / `127.0.0.1` with the `openssl` CLI.
 *
 * Keys are EC P-256; both certificates are valid for 2 days. The server certificate carries
 * `subjectAltName=DNS:localhost,IP:127.0.0.1`, `extendedKeyUsage=serverAuth`, and is a leaf (`CA:FALSE`),
 * so Node's default `checkServerIdentity` accepts it for servername `localhost` or host `127.0.0.1`
 * when the client trusts `caFile`.
 *
 * Requires the `openssl` binary on PATH (Debian package `openssl`).
 *
 * @param dir - directory to write into (created if missing); default: a fresh `mkdtemp` dir under `os.tmpdir()`.
 */
export async function makeTestCertificate(dir?: string): Promise<TestCertificate> {
  let target: string;
  if (dir === undefined) {
    target = await mkdtemp(path.join(os.tmpdir(), 'nl-tls-'));
  } else {
    target = dir;
    await mkdir(target, { recursive: true });
  }
  const caKey = path.join(target, 'ca.key');
  const caFile = path.join(target, 'ca.crt');
  const keyFile = path.join(target, 'server.key');
  const csrFile = path.join(target, 'server.csr');
  const certFile = path.join(target, 'server.crt');
  const extFile = path.join(target, 'server.ext');
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  try {
    await run('openssl', [
      'req', '-x509', ...ec, '-keyout', caKey, '-out', caFile, '-days', '2', '-sha256',
      '-subj', '/CN=Narrowlink Test CA',
      '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    await run('openssl', ['req', '-new', ...ec, '-keyout', keyFile, '-out', csrFile, '-subj', '/CN=localhost']);
    await writeFile(
      extFile,
      [
        'basicConstraints=critical,CA:FALSE',
        'keyUsage=critical,digitalSignature',
        'extendedKeyUsage=serverAuth',
        'subjectAltName=DNS:localhost,IP:127.0.0.1',
        '',
      ].join('\n'),
    );
    await run('openssl', [
      'x509', '-req', '-in', csrFile, '-CA', caFile, '-CAkey', caKey, '-CAcreateserial',
      '-out', certFile, '-days', '2', '-sha256', '-extfile', extFile,
    ]);
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? '';
    throw new Error(`makeTestCertificate: openssl failed in ${target}: ${stderr.trim()}`, { cause: err });
  }
  const [cert, key, ca] = await Promise.all([
    readFile(certFile, 'utf8'),
    readFile(keyFile, 'utf8'),
    readFile(caFile, 'utf8'),
  ]);
  return {
    dir: target,
    certFile,
    keyFile,
    caFile,
    cert,
    key,
    ca,
    remove: () => rm(target, { recursive: true, force: true }),
  };
}
